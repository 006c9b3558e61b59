"""``BatchRunner``: a preset's scheduled calls through its provider's Batch API, at half price.

``chat.runner(batch=True, store="runs.db")`` (or ``BatchRunner(chat, store=...)``) takes
the same ``schedule(...)`` calls as an online Runner, and its ``run()`` returns the same
``RunResult``: the same parsed SDK objects, in schedule order, with ``to_pandas()``. In
between it writes the calls as the provider's batch input, split to fit the provider's
limits (``_plan``), uploads and creates the batches, polls them with backoff, downloads
the answers and maps each back to its call by ``custom_id``.

Durability is the point of it: every batch's file id and batch id are written to the
store and flushed *before* anything is waited on (``_records``), so a Ctrl-C, a kernel
restart or a ``kill -9`` loses nothing: ``run()`` again, in the same process or a new
one scheduling the same calls, resumes polling the same batches instead of paying for
them twice. That is why a batch run refuses to start without a store.

Every answer is stored under its call's key, the key an online Runner of the same preset
and store uses: calls answered by a batch are not sent again online, and calls answered
online are not put in a batch. Requests a batch did not answer (expired, a 5xx) go into
the next batch (``max_batch_retries``), or online with ``fallback="online"``; requests the
provider refused (a 400) fail with their ``BatchRequestError``.

Costs are at the Batch API's price (``rate_limited.cost``, ``batch=True``): each call's
``outcome.usage["cost_usd"]``, and ``result.cost`` for the run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from rate_limited.batch._display import BatchDisplay
from rate_limited.batch._plan import Request, split
from rate_limited.batch._providers import BatchApi, BatchState, Item, batch_api
from rate_limited.batch._records import CallRecord, Chunk, Records, custom_id_of
from rate_limited.exceptions import BatchRequestError, ConfigurationError
from rate_limited.outcomes import RunResult, Status
from rate_limited.stores.base import StoredOutcome

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.cost import PriceTable
    from rate_limited.runner import Runner

__all__ = ["BatchRunner"]

logger = logging.getLogger("rate_limited")

#: Seconds between polls: the first wait, growing by half while nothing changes, at most.
POLL_FIRST, POLL_MAX = 5.0, 60.0


class BatchRunner:
    """Runs a preset's scheduled calls through its provider's Batch API (see the module)."""

    def __init__(
        self,
        preset: Any,
        *,
        store: Any = None,
        fallback: Literal["online"] | None = None,
        max_batch_retries: int = 2,
        enqueued_token_limit: float | Mapping[str, float] | None = None,
        max_requests: int | None = None,
        max_bytes: int | None = None,
        poll_interval: float = POLL_FIRST,
        max_poll_interval: float = POLL_MAX,
        progress: bool | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **runner_options: Any,
    ) -> None:
        """Args:
        preset: an OpenAI ``ChatCompletions`` / ``Responses`` / ``Embeddings`` or an
            Anthropic ``Messages`` preset (its client, and its limits for ``fallback``).
        store: where the batch ids and the answers are kept (required: without it, a
            kernel restart would lose batches already paid for). ``"runs.db"`` keeps
            them across restarts; ``"memory://"`` is the explicit choice of keeping them
            in this process only.
        fallback: ``"online"``: requests a batch did not answer are sent online, within
            the preset's rate limits, instead of in a next batch.
        max_batch_retries: batches a request may go into after its first (expired, 5xx).
        enqueued_token_limit: OpenAI's batch queue limit of the account (prompt tokens
            enqueued per model; a number, or per model name): batches are split to fit
            it and submitted as the queue has room. None: not known (a batch the
            provider refuses for it waits for the others, or is split).
        max_requests, max_bytes: lower than the provider's limits, if wanted.
        poll_interval, max_poll_interval: seconds between two polls, first and most.
        progress: a tqdm bar (None: where tqdm shows one; False: none).
        prices: the ``PriceTable`` costs come from (default: the process-wide one).
        sleep: how to wait between polls (tests pass a fake clock's ``advance``).
        runner_options: for the Runner that schedules the calls and sends the fallback
            (``max_retries``, ``key``, ``timeout``, ...).
        """
        if store is None:
            raise ConfigurationError(
                "A batch run needs store=: the provider keeps a batch up to 24 h, and the "
                "store keeps its id, so that a Ctrl-C or a kernel restart resumes polling "
                "instead of paying for the batch twice. Pass store='runs.db' (kept across "
                "restarts), 'redis://...', or store='memory://' to keep the ids in this "
                "process only, knowingly."
            )
        if fallback not in (None, "online"):
            raise ConfigurationError(f"fallback must be None or 'online', got {fallback!r}.")
        for name, value in (
            ("poll_interval", poll_interval),
            ("max_poll_interval", max_poll_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}."
                )
        if (
            isinstance(max_batch_retries, bool)
            or not isinstance(max_batch_retries, int)
            or max_batch_retries < 0
        ):
            raise ConfigurationError(
                f"max_batch_retries must be an int >= 0, got {max_batch_retries!r}."
            )
        from rate_limited.runner import Runner

        self.preset = preset
        #: The Batch API (its limits: ``api.max_requests``, ``api.max_bytes``).
        self.api: BatchApi = batch_api(preset, max_requests, max_bytes)
        #: Schedules the calls (keys, early checks) and sends the ``fallback``.
        self.runner: Runner = Runner(preset, preset.resources, store=store, **runner_options)
        assert self.runner.store is not None
        self._records = Records(self.runner.store, self.api.family)
        self.fallback = fallback
        self.max_batch_retries = max_batch_retries
        self._queue_limits = _queue_limits(enqueued_token_limit)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max(poll_interval, max_poll_interval))
        self.progress = progress
        self._prices = prices
        self._sleep = sleep
        #: What each open batch last reported, by batch id.
        self.states: dict[str, BatchState] = {}
        self.schedule = self.runner.schedule

    # -- the public surface ------------------------------------------------------------------
    @property
    def scheduled_calls(self) -> list[Call]:
        return self.runner.scheduled_calls

    @property
    def store(self) -> Any:
        return self.runner.store

    def run(self) -> RunResult:
        """Submit what is not answered yet, wait for the batches, return every call's
        outcome in schedule order. Ctrl-C returns the partial result at once; the
        batches go on at the provider, and ``run()`` again (here or in a new process with
        the same store) resumes them."""
        calls = self.runner.scheduled_calls
        started = time.monotonic()
        display: BatchDisplay | None = None
        interrupted = False
        try:
            self._restore(calls)
            leaders = _leaders(calls)
            display = BatchDisplay(len(calls), _answered(calls), self.progress)
            self._drive(calls, leaders, display)
        except KeyboardInterrupt:
            interrupted = True
            logger.warning(
                "Interrupted: the batches go on at the provider and their ids are in the "
                "store; run() again (even in a new process) resumes them."
            )
        finally:
            if display is not None:
                display.close()
        if (
            not interrupted
            and self.fallback == "online"
            and any(not c.status.is_final for c in calls)
        ):
            return self._with_cost(self.runner.run())
        return self._with_cost(self._result(calls, interrupted, time.monotonic() - started))

    def cancel_batches(self) -> list[str]:
        """Cancel the open batches of the scheduled calls; their ids. Requests a batch
        answered before it stopped are kept by the next ``run()``; the others fail with
        ``BatchRequestError`` (``code="batch_cancelled"``)."""
        cancelled = []
        for chunk in self._open_chunks(self.runner.scheduled_calls):
            if chunk.batch_id is not None and chunk.state == "submitted":
                self.api.cancel(chunk.batch_id)
                cancelled.append(chunk.batch_id)
        return cancelled

    def batches(self) -> list[dict[str, Any]]:
        """The open batches of the scheduled calls: id, state, status, counts."""
        rows = []
        for chunk in self._open_chunks(self.runner.scheduled_calls):
            state = self.states.get(chunk.batch_id or "")
            rows.append(
                {
                    "batch_id": chunk.batch_id,
                    "file_id": chunk.file_id,
                    "state": chunk.state,
                    "status": state.status if state else None,
                    "done": state.done if state else 0,
                    "total": len(chunk.keys),
                    "model": chunk.model,
                }
            )
        return rows

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> BatchRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<BatchRunner {type(self.preset).__name__} via {self.api.family} batches, "
            f"{len(self.runner.scheduled_calls)} calls scheduled>"
        )

    # -- the run -----------------------------------------------------------------------------
    def _restore(self, calls: list[Call]) -> None:
        """Answers already in the store (a batch or an online run) replace sending."""
        if self.runner.refresh:
            return
        wanted = [c for c in calls if not c.status.is_final and c.key is not None]
        stored = self.runner.store.get_many([c.key for c in wanted])  # type: ignore[union-attr,misc]
        for call in wanted:
            record = stored.get(call.key)  # type: ignore[arg-type]
            if record is not None and record.status == "succeeded":
                call.result = record.result
                call.status = Status.SUCCEEDED
                call.from_store = True
                call.attempts = max(call.attempts, record.attempts)
                call.usage = dict(record.usage)

    def _open_chunks(self, calls: list[Call]) -> list[Chunk]:
        custom_ids = [custom_id_of(c.key) for c in calls if c.key is not None]
        records = self._records.calls(custom_ids)
        chunks = self._records.chunks(r.chunk for r in records.values())
        return [c for c in chunks.values() if c.open]

    def _drive(
        self, calls: list[Call], leaders: dict[str, list[Call]], display: BatchDisplay
    ) -> None:
        records = self._records.calls(list(leaders))
        chunks = {
            c.id: c
            for c in self._records.chunks(r.chunk for r in records.values()).values()
            if c.open
        }
        held = {custom_id for chunk in chunks.values() for custom_id in chunk.keys}
        fresh = [custom_id for custom_id in leaders if custom_id not in held]
        self._plan(fresh, leaders, records, chunks)
        wait = self.poll_interval
        while True:
            progressed = False
            for chunk in sorted(chunks.values(), key=lambda c: c.stamp):
                if chunk.open:
                    progressed |= self._advance(chunk, chunks, leaders, records)
            for chunk_id in [i for i, c in chunks.items() if not c.open]:
                del chunks[chunk_id]
            waiting = sum(1 for c in chunks.values() if c.state in ("planned", "uploaded"))
            display.update(_answered(calls), self.states, waiting)
            if not chunks:
                return
            wait = self.poll_interval if progressed else min(wait * 1.5, self.max_poll_interval)
            self._sleep(wait)

    def _plan(
        self,
        custom_ids: list[str],
        leaders: dict[str, list[Call]],
        records: dict[str, CallRecord],
        chunks: dict[str, Chunk],
    ) -> None:
        """New chunks for ``custom_ids``, written before anything is uploaded."""
        if not custom_ids:
            return
        requests = []
        for custom_id in custom_ids:
            call = leaders[custom_id][0]
            params = dict(call.kwargs)
            model = params.get("model")
            tokens = float(self.preset.prompt_tokens(params)) if self.api.one_model else 0.0
            requests.append(
                Request(custom_id, self.api.line(custom_id, params), _hashable(model), tokens)
            )
        planned = split(
            requests,
            max_requests=self.api.max_requests,
            max_bytes=self.api.max_bytes,
            one_model=self.api.one_model,
            max_tokens=self._queue_limits_for(requests),
        )
        new_chunks = []
        for group in planned:
            keys = {r.custom_id: str(leaders[r.custom_id][0].key) for r in group}
            model = group[0].model if self.api.one_model else None
            chunk = Chunk.new(
                self.api.family,
                keys,
                None if model is None else str(model),
                sum(r.tokens for r in group),
            )
            new_chunks.append(chunk)
            chunks[chunk.id] = chunk
            for r in group:
                before = records.get(r.custom_id)
                batches = before.batches if before is not None else 0
                records[r.custom_id] = CallRecord(chunk.id, batches)
        self._records.save(new_chunks, {c: records[c] for c in custom_ids})

    def _queue_limits_for(self, requests: Iterable[Request]) -> dict[Hashable, float] | None:
        if not self._queue_limits:
            return None
        models = {r.model for r in requests}
        limits = {m: self._queue_limit(m) for m in models}
        return {m: v for m, v in limits.items() if v is not None}

    def _queue_limit(self, model: Hashable) -> float | None:
        limits = self._queue_limits
        return limits.get(model, limits.get(None))

    def _lines(self, chunk: Chunk, leaders: dict[str, list[Call]]) -> list[bytes]:
        lines = []
        for custom_id in chunk.keys:
            calls = leaders.get(custom_id)
            if calls is None:
                raise ConfigurationError(
                    f"Batch chunk {chunk.id} was planned for calls no longer scheduled; "
                    "schedule the same calls to resume it."
                )
            lines.append(self.api.line(custom_id, dict(calls[0].kwargs)))
        return lines

    def _advance(
        self,
        chunk: Chunk,
        chunks: dict[str, Chunk],
        leaders: dict[str, list[Call]],
        records: dict[str, CallRecord],
    ) -> bool:
        """One step of one chunk; True if it changed state."""
        api = self.api
        changed = chunk.state == "planned"
        if chunk.state == "planned":
            if api.uploads:
                chunk.file_id = api.upload(
                    self._lines(chunk, leaders), f"rate_limited-{chunk.id}.jsonl"
                )
            chunk.state = "uploaded"
            self._records.save([chunk])
        if chunk.state in ("uploaded", "creating"):
            if chunk.state == "creating":  # a process died during the create call
                found = api.find(chunk.file_id, chunk.id, chunk.stamp, len(chunk.keys))
                if found is not None:
                    chunk.batch_id, chunk.state = found, "submitted"
                    self._records.save([chunk])
                    return True
            if not self._queue_has_room(chunk, chunks):
                return changed
            chunk.state = "creating"
            self._records.save([chunk])
            chunk.batch_id = api.create(self._lines(chunk, leaders), chunk.file_id, chunk.id)
            chunk.state = "submitted"
            self._records.save([chunk])
            return True
        assert chunk.batch_id is not None
        state = api.retrieve(chunk.batch_id)
        before = self.states.get(chunk.batch_id)
        self.states[chunk.batch_id] = state
        if state.phase == "failed":
            self._failed(chunk, state, chunks, leaders, records)
            return True
        if state.phase == "ended":
            self._collect(chunk, state, chunks, leaders, records)
            return True
        return before is None or before.done != state.done or before.status != state.status

    def _queue_has_room(self, chunk: Chunk, chunks: dict[str, Chunk]) -> bool:
        limit = self._queue_limit(chunk.model) if self._queue_limits else None
        if limit is None:
            return True
        held = sum(
            c.tokens
            for c in chunks.values()
            if c.state == "submitted" and c.model == chunk.model and c is not chunk
        )
        return held + chunk.tokens <= limit or held == 0

    def _failed(
        self,
        chunk: Chunk,
        state: BatchState,
        chunks: dict[str, Chunk],
        leaders: dict[str, list[Call]],
        records: dict[str, CallRecord],
    ) -> None:
        """A batch that failed as a whole (validation): wait for the queue, split, or fail."""
        code, message = state.error or ("failed", "the batch failed")
        self.states.pop(chunk.batch_id or "", None)
        if code == "token_limit_exceeded":
            others = any(
                c.state == "submitted" and c.model == chunk.model and c is not chunk
                for c in chunks.values()
            )
            if others:  # ours hold the queue: the same file goes in when one has left it
                chunk.state, chunk.batch_id = "uploaded", None
                self._records.save([chunk])
                return
            if len(chunk.keys) > 1:  # the queue is smaller than we knew: halves
                logger.warning(
                    "Batch %s was refused (%s); sending its %d requests in two batches.",
                    chunk.batch_id,
                    message,
                    len(chunk.keys),
                )
                chunk.state = "collected"
                self._records.save([chunk])
                # The queue holds less than this chunk: at most half of it, from now on.
                known = self._queue_limit(chunk.model)
                half_tokens = chunk.tokens / 2
                self._queue_limits[chunk.model] = min(known or half_tokens, half_tokens)
                ids = list(chunk.keys)
                middle = len(ids) // 2
                for part in (ids[:middle], ids[middle:]):
                    self._plan(part, leaders, records, chunks)
                return
        error = BatchRequestError(
            f"batch {chunk.batch_id} failed: {code}: {message}",
            code=code,
            batch_id=chunk.batch_id,
        )
        for custom_id in chunk.keys:
            for call in leaders.get(custom_id, ()):
                _fail(call, error)
        chunk.state = "collected"
        self._records.save([chunk])

    def _collect(
        self,
        chunk: Chunk,
        state: BatchState,
        chunks: dict[str, Chunk],
        leaders: dict[str, list[Call]],
        records: dict[str, CallRecord],
    ) -> None:
        """Store every answer of an ended batch under its call's key; the unanswered go
        into the next batch, online, or fail."""
        assert chunk.batch_id is not None
        self.states.pop(chunk.batch_id, None)
        items: dict[str, Item] = {
            item.custom_id: item for item in self.api.results(chunk.batch_id, state)
        }
        again: list[str] = []
        store = self.runner.store
        assert store is not None
        for custom_id, key in chunk.keys.items():
            item = items.get(custom_id) or Item(
                custom_id,
                error=BatchRequestError(
                    f"batch {chunk.batch_id} returned no line for this request",
                    code="missing",
                    batch_id=chunk.batch_id,
                    retryable=True,
                ),
            )
            record = records.get(custom_id) or CallRecord(chunk.id)
            record.batches += 1
            records[custom_id] = record
            calls = leaders.get(custom_id, [])
            if item.error is None:
                usage = self._usage(calls[0], item.value) if calls else {}
                store.put(
                    StoredOutcome(
                        key,
                        "succeeded",
                        item.value,
                        attempts=record.batches,
                        usage=usage,
                        function=self.runner._function_identity,
                    )
                )
                for call in calls:
                    call.result = item.value
                    call.status = Status.SUCCEEDED
                    call.attempts += 1
                    call.usage = dict(usage)
                    call.finished_at = time.monotonic()
                continue
            for call in calls:
                call.attempts += 1
                call.exceptions.append(item.error)
            if not item.error.retryable or not calls:
                for call in calls:
                    call.status = Status.FAILED
            elif self.fallback == "online":
                pass  # left pending: run() sends it online
            elif record.batches <= self.max_batch_retries:
                again.append(custom_id)
            else:
                for call in calls:
                    call.status = Status.FAILED
        store.flush()  # the answers first: the chunk is collected only once they are kept
        chunk.state = "collected"
        self._records.save([chunk], {c: records[c] for c in chunk.keys if c in records})
        self._plan(again, leaders, records, chunks)

    def _usage(self, call: Call, value: Any) -> dict[str, float]:
        """Each resource's usage as the online preset would bill it, and the cost."""
        usage: dict[str, float] = {}
        for resource in self.runner.resources:
            extract = resource.results_usage_extractor
            try:
                usage[resource.name] = 1.0 if extract is None else float(extract(call, value))
            except Exception:  # the answer is kept; its usage is only informative here
                continue
        cost = self._cost(value)
        if cost is not None:
            usage["cost_usd"] = cost
        return usage

    def _cost(self, value: Any) -> float | None:
        from rate_limited import cost as cost_module

        prices = self._prices
        try:
            if prices is None:
                return cost_module.cost(value, batch=True)
            return prices.cost(value, batch=True)
        except ValueError:  # no usage to read (e.g. an embedding without usage)
            return None

    def _result(self, calls: list[Call], interrupted: bool, elapsed: float) -> RunResult:
        results = [c.result if c.status is Status.SUCCEEDED else None for c in calls]
        exceptions = [c._exceptions or [] for c in calls]
        result = RunResult(results, exceptions, list(calls), interrupted, elapsed)
        result.resources = tuple(self.runner.resources)
        if not interrupted:  # complete: the next run() starts a new batch, as a Runner's
            self.runner.scheduled_calls = []
            function = self.runner.function
            for call in calls:
                call._source = function
        self.runner.last_result = result
        return result

    @staticmethod
    def _with_cost(result: RunResult) -> RunResult:
        costs = [o.usage.get("cost_usd") for o in result.outcomes if o.status is Status.SUCCEEDED]
        known = [c for c in costs if c is not None]
        #: USD of the answers, at the batch price (None: no price known for any of them).
        result.cost = math.fsum(known) if known else None  # type: ignore[attr-defined]
        return result


def _leaders(calls: list[Call]) -> dict[str, list[Call]]:
    """The calls still to answer, by ``custom_id`` (calls with the same key share one)."""
    leaders: dict[str, list[Call]] = {}
    for call in calls:
        if not call.status.is_final and call.key is not None:
            call.status = Status.PENDING
            leaders.setdefault(custom_id_of(call.key), []).append(call)
    return leaders


def _answered(calls: list[Call]) -> int:
    return sum(1 for c in calls if c.status.is_final)


def _fail(call: Call, error: BatchRequestError) -> None:
    call.attempts += 1
    call.exceptions.append(error)
    call.status = Status.FAILED


def _hashable(value: object) -> Hashable:
    return value if isinstance(value, Hashable) else repr(value)


def _queue_limits(value: float | Mapping[str, float] | None) -> dict[Hashable, float]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items: dict[Hashable, float] = dict(value.items())
    else:
        items = {None: value}
    for model, limit in items.items():
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
            where = "" if model is None else f"[{model!r}]"
            raise ConfigurationError(
                f"enqueued_token_limit{where} must be a positive number of tokens, got {limit!r}."
            )
    return {k: float(v) for k, v in items.items()}
