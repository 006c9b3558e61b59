"""Driving one batch run: planning chunks, submitting them, polling, collecting answers.

A ``Driver`` holds what does not change between runs (the Batch API, the records in the
store, the queue limits, how to poll); ``drive()`` takes one run's calls to the end. Each
chunk moves one step at a time — planned → uploaded → creating → submitted → collected —
and every step is written to the store and flushed before the request to the provider
that follows it (``_records``), so that whatever process picks the records up later knows
at least as much as the provider about what was paid for. With a budget (``_budget``), a
chunk reserves its most at the batch price before it is created, is cut to what fits, or
waits; when nothing fits and nothing runs to free room, ``drive()`` returns with the rest
pending and ``stopped`` says why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rate_limited._call_spend import CallSpend
from rate_limited._redact import get_logger
from rate_limited._spend_books import fits
from rate_limited.batch._plan import Request, split
from rate_limited.batch._providers import BatchApi, BatchState, Item
from rate_limited.batch._records import CallRecord, Chunk, Records, custom_id_of
from rate_limited.exceptions import BatchRequestError, ConfigurationError
from rate_limited.outcomes import Status
from rate_limited.stores.base import Store, StoredOutcome

if TYPE_CHECKING:
    from rate_limited.batch._budget import BatchBudget
    from rate_limited.batch._display import BatchDisplay
    from rate_limited.budget import BudgetStop
    from rate_limited.calls import Call

__all__ = ["Driver", "Pass", "answered", "queue_limits", "set_cost"]

logger = get_logger("rate_limited")


@dataclass
class Pass:
    """What one ``run()`` works on: the calls left, by ``custom_id`` (calls with the same
    key share one request); where each request is; the open chunks, by id."""

    leaders: dict[str, list[Call]]
    records: dict[str, CallRecord]
    chunks: dict[str, Chunk]
    #: Chunks the budget has no room for, by id: the most their first request costs.
    blocked: dict[str, float] = field(default_factory=dict)


class Driver:
    """Takes a run's calls through the Batch API (see the module docstring)."""

    def __init__(
        self,
        api: BatchApi,
        store: Store,
        preset: Any,
        *,
        fallback: Literal["online"] | None,
        max_batch_retries: int,
        queue_limits: dict[Hashable, float],
        poll_interval: float,
        max_poll_interval: float,
        usage: Callable[[Call, Any], dict[str, float]],
        function: str,
        budget: BatchBudget | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.records = Records(store, api.family)
        self.preset = preset
        self.fallback = fallback
        self.max_batch_retries = max_batch_retries
        self.queue_limits = queue_limits
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.usage = usage
        self.function = function
        #: What each open batch last reported, by batch id.
        self.states: dict[str, BatchState] = {}
        self.budget = budget
        #: Why the last ``drive()`` stopped at the budget (None: it did not).
        self.stopped: BudgetStop | None = None

    def open_chunks(self, calls: list[Call]) -> list[Chunk]:
        """The chunks not collected yet of ``calls``."""
        custom_ids = [custom_id_of(c.key) for c in calls if c.key is not None]
        records = self.records.calls(custom_ids)
        chunks = self.records.chunks(r.chunk for r in records.values())
        return [c for c in chunks.values() if c.open]

    def drive(
        self,
        calls: list[Call],
        leaders: dict[str, list[Call]],
        display: BatchDisplay,
        sleep: Callable[[float], None],
        on_pass: Callable[[], None] | None = None,
    ) -> None:
        """Plan, submit, poll and collect until every chunk of ``leaders`` is collected,
        or the budget has room for none of those left (``stopped``)."""
        self.stopped = None
        if self.budget is not None:  # every request priced before anything is sent
            for custom_id, group in leaders.items():
                self.budget.max_cost(custom_id, group[0])
        records = self.records.calls(list(leaders))
        chunks = self.records.chunks(r.chunk for r in records.values())
        work = Pass(leaders, records, {i: c for i, c in chunks.items() if c.open})
        held = {custom_id for chunk in work.chunks.values() for custom_id in chunk.keys}
        fresh = [custom_id for custom_id in work.leaders if custom_id not in held]
        self._plan(fresh, work)
        wait = self.poll_interval
        while True:
            progressed = False
            for chunk in sorted(work.chunks.values(), key=lambda c: c.stamp):
                if chunk.open:
                    progressed |= self._advance(chunk, work)
            for chunk_id in [i for i, c in work.chunks.items() if not c.open]:
                del work.chunks[chunk_id]
            waiting = sum(1 for c in work.chunks.values() if c.state in ("planned", "uploaded"))
            display.update(answered(calls), self.states, waiting)
            if on_pass is not None:
                on_pass()
            if not work.chunks:
                return
            if all(chunk_id in work.blocked for chunk_id in work.chunks):
                self._stop_at_budget(work)
                return
            wait = self.poll_interval if progressed else min(wait * 1.5, self.max_poll_interval)
            sleep(wait)

    def _plan(self, custom_ids: list[str], work: Pass) -> None:
        """New chunks for ``custom_ids``, written before anything is uploaded."""
        if not custom_ids:
            return
        requests = []
        for custom_id in custom_ids:
            call = work.leaders[custom_id][0]
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
            keys = {r.custom_id: str(work.leaders[r.custom_id][0].key) for r in group}
            model = group[0].model if self.api.one_model else None
            chunk = Chunk.new(
                self.api.family,
                keys,
                None if model is None else str(model),
                sum(r.tokens for r in group),
            )
            new_chunks.append(chunk)
            work.chunks[chunk.id] = chunk
            for r in group:
                before = work.records.get(r.custom_id)
                batches = before.batches if before is not None else 0
                work.records[r.custom_id] = CallRecord(chunk.id, batches)
        self.records.save(new_chunks, {c: work.records[c] for c in custom_ids})

    def _queue_limits_for(self, requests: Iterable[Request]) -> dict[Hashable, float] | None:
        if not self.queue_limits:
            return None
        models = {r.model for r in requests}
        limits = {m: self._queue_limit(m) for m in models}
        return {m: v for m, v in limits.items() if v is not None}

    def _queue_limit(self, model: Hashable) -> float | None:
        limits = self.queue_limits
        return limits.get(model, limits.get(None))

    def _lines(self, chunk: Chunk, work: Pass) -> list[bytes]:
        return [
            self.api.line(custom_id, dict(self._leader(chunk, custom_id, work).kwargs))
            for custom_id in chunk.keys
        ]

    @staticmethod
    def _leader(chunk: Chunk, custom_id: str, work: Pass) -> Call:
        """The call a chunk's request is for (an error if it is no longer scheduled)."""
        calls = work.leaders.get(custom_id)
        if calls is None:
            raise ConfigurationError(
                f"Batch chunk {chunk.id} was planned for calls no longer scheduled; "
                "schedule the same calls to resume it."
            )
        return calls[0]

    def _advance(self, chunk: Chunk, work: Pass) -> bool:
        """One step of one chunk; True if it changed state."""
        api = self.api
        changed = chunk.state == "planned"
        if chunk.state == "planned":
            if api.uploads:
                chunk.file_id = api.upload(
                    self._lines(chunk, work), f"rate_limited-{chunk.id}.jsonl"
                )
            chunk.state = "uploaded"
            self.records.save([chunk])
        if chunk.state in ("uploaded", "creating"):
            if chunk.state == "creating":  # a process died during the create call
                found = api.find(chunk.file_id, chunk.id, chunk.stamp, len(chunk.keys))
                if found is not None:
                    chunk.batch_id, chunk.state = found, "submitted"
                    self.records.save([chunk])
                    return True
            if not self._queue_has_room(chunk, work):
                return changed
            held = self._reserve(chunk, work)
            if held != "held":
                return changed or held == "split"
            chunk.state = "creating"
            self.records.save([chunk])
            chunk.batch_id = api.create(self._lines(chunk, work), chunk.file_id, chunk.id)
            chunk.state = "submitted"
            self.records.save([chunk])
            return True
        assert chunk.batch_id is not None
        state = api.retrieve(chunk.batch_id)
        before = self.states.get(chunk.batch_id)
        self.states[chunk.batch_id] = state
        if state.phase == "failed":
            self._failed(chunk, state, work)
            return True
        if state.phase == "ended":
            self._collect(chunk, state, work)
            return True
        return before is None or before.done != state.done or before.status != state.status

    def _queue_has_room(self, chunk: Chunk, work: Pass) -> bool:
        limit = self._queue_limit(chunk.model) if self.queue_limits else None
        if limit is None:
            return True
        held = sum(
            c.tokens
            for c in work.chunks.values()
            if c.state == "submitted" and c.model == chunk.model and c is not chunk
        )
        return held + chunk.tokens <= limit or held == 0

    # -- the budget ----------------------------------------------------------------------------
    def _reserve(self, chunk: Chunk, work: Pass) -> Literal["held", "blocked", "split"]:
        """Hold the chunk's most at the batch price on the budget (kept in the chunk's
        record by the ``creating`` step that follows); cut it to the requests that fit,
        or leave it waiting if none does."""
        budget = self.budget
        if budget is None or chunk.token is not None:
            return "held"
        costs = [budget.max_cost(c, self._leader(chunk, c, work)) for c in chunk.keys]
        amount = math.fsum(costs)
        token = budget.reserve(amount)
        if token is not None:
            chunk.token, chunk.reserved = token, amount
            work.blocked.pop(chunk.id, None)
            return "held"
        room, total, fitting = budget.room(), 0.0, 0
        for cost in costs:
            if not fits(total, 0.0, cost, room):
                break
            total += cost
            fitting += 1
        fitting = min(fitting, len(costs) - 1)  # the whole chunk was refused just now
        if fitting == 0:
            work.blocked[chunk.id] = costs[0]
            return "blocked"
        work.blocked.pop(chunk.id, None)
        logger.info(
            "The budget has room for %d of the %d requests of a batch; the rest wait.",
            fitting,
            len(costs),
        )
        chunk.state = "collected"
        self.records.save([chunk])
        ids = list(chunk.keys)
        self._plan(ids[:fitting], work)
        self._plan(ids[fitting:], work)
        return "split"

    def _unreserve(self, chunk: Chunk) -> None:
        """The batch was not billed (refused as a whole): free its reservation."""
        if chunk.token is not None and self.budget is not None:
            self.budget.release(chunk.token)
        chunk.token, chunk.reserved = None, 0.0

    def _stop_at_budget(self, work: Pass) -> None:
        assert self.budget is not None
        waiting = sum(len(work.leaders.get(c, ())) for ch in work.chunks.values() for c in ch.keys)
        self.stopped = self.budget.stop_report(min(work.blocked.values()), waiting)

    def _failed(self, chunk: Chunk, state: BatchState, work: Pass) -> None:
        """A batch that failed as a whole (validation): wait for the queue, split, or fail."""
        code, message = state.error or ("failed", "the batch failed")
        self.states.pop(chunk.batch_id or "", None)
        self._unreserve(chunk)
        if code == "token_limit_exceeded":
            others = any(
                c.state == "submitted" and c.model == chunk.model and c is not chunk
                for c in work.chunks.values()
            )
            if others:  # ours hold the queue: the same file goes in when one has left it
                chunk.state, chunk.batch_id = "uploaded", None
                self.records.save([chunk])
                return
            if len(chunk.keys) > 1:  # the queue is smaller than we knew: halves
                logger.warning(
                    "Batch %s was refused (%s); sending its %d requests in two batches.",
                    chunk.batch_id,
                    message,
                    len(chunk.keys),
                )
                chunk.state = "collected"
                self.records.save([chunk])
                # The queue holds less than this chunk: at most half of it, from now on.
                known = self._queue_limit(chunk.model)
                half_tokens = chunk.tokens / 2
                self.queue_limits[chunk.model] = min(known or half_tokens, half_tokens)
                ids = list(chunk.keys)
                middle = len(ids) // 2
                for part in (ids[:middle], ids[middle:]):
                    self._plan(part, work)
                return
        error = BatchRequestError(
            f"batch {chunk.batch_id} failed: {code}: {message}",
            code=code,
            batch_id=chunk.batch_id,
        )
        for custom_id in chunk.keys:
            for call in work.leaders.get(custom_id, ()):
                _fail(call, error)
        chunk.state = "collected"
        self.records.save([chunk])

    def _collect(self, chunk: Chunk, state: BatchState, work: Pass) -> None:
        """Store every answer of an ended batch under its call's key; the unanswered go
        into the next batch, online, or fail."""
        assert chunk.batch_id is not None
        self.states.pop(chunk.batch_id, None)
        items: dict[str, Item] = {
            item.custom_id: item for item in self.api.results(chunk.batch_id, state)
        }
        again: list[str] = []
        cost = 0.0  # what the batch's answers cost, for the budget
        store = self.store
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
            record = work.records.get(custom_id) or CallRecord(chunk.id)
            record.batches += 1
            work.records[custom_id] = record
            calls = work.leaders.get(custom_id, [])
            if item.error is None:
                usage = self.usage(calls[0], item.value) if calls else {}
                cost += usage.get("cost_usd", self._most(custom_id, calls))
                store.put(
                    StoredOutcome(
                        key,
                        "succeeded",
                        item.value,
                        attempts=record.batches,
                        usage=usage,
                        function=self.function,
                    )
                )
                for call in calls:
                    call.result = item.value
                    call.status = Status.SUCCEEDED
                    call.attempts += 1
                    call.usage = dict(usage)
                    set_cost(call, usage.get("cost_usd"))
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
        if chunk.token is not None and self.budget is not None:
            self.budget.settle(chunk.token, cost)  # the rest of the reservation is freed
            chunk.token = None
        chunk.state = "collected"
        self.records.save([chunk], {c: work.records[c] for c in chunk.keys if c in work.records})
        self._plan(again, work)

    def _most(self, custom_id: str, calls: list[Call]) -> float:
        """What an answer whose cost can't be read counts against the budget: its most."""
        if self.budget is None or not calls:
            return 0.0
        return self.budget.max_cost(custom_id, calls[0])


def set_cost(call: Call, cost: float | None) -> None:
    """What a batch answer cost, as ``outcome.cost`` reads it (None: not priced)."""
    extras = call._more()
    if extras.spend is None:
        extras.spend = CallSpend(None)
    if cost is None:
        extras.spend.unknown = True
    else:
        extras.spend.cost = cost


def answered(calls: list[Call]) -> int:
    return sum(1 for c in calls if c.status.is_final)


def _fail(call: Call, error: BatchRequestError) -> None:
    call.attempts += 1
    call.exceptions.append(error)
    call.status = Status.FAILED


def _hashable(value: object) -> Hashable:
    return value if isinstance(value, Hashable) else repr(value)


def queue_limits(value: float | Mapping[str, float] | None) -> dict[Hashable, float]:
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
