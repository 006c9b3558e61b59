"""``BatchRunner``: a preset's scheduled calls through its provider's Batch API, at half price.

``chat.runner(batch=True, store="runs.db")`` (or ``BatchRunner(chat, store=...)``) takes
the same ``schedule(...)`` calls as an online Runner, and its ``run()`` returns the same
``RunResult``: the same parsed SDK objects, in schedule order, with ``to_pandas()``. In
between it writes the calls as the provider's batch input, split to fit the provider's
limits (``_plan``), uploads and creates the batches, polls them with backoff, downloads
the answers and maps each back to its call by ``custom_id`` (``_driver``).

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
``outcome.cost`` (kept in the store as ``outcome.usage["cost_usd"]``), and ``result.cost``
for the run. A ``budget=`` applies to the batches at the batch price (``_budget``): each
batch reserves its most before it is created and settles what its answers cost; a batch
that does not fit is cut to the requests that do, and when none fits, ``run()`` returns
with the rest pending, ``result.budget`` saying why (one ``BudgetWarning``), as an online
run does. Raise ``runner.budget.usd`` and ``run()`` again to go on. The online fallback
spends the same budget, at the online price.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from rate_limited._redact import get_logger
from rate_limited.batch._budget import BatchBudget
from rate_limited.batch._display import BatchDisplay
from rate_limited.batch._driver import Driver, answered, queue_limits, set_cost
from rate_limited.batch._providers import BatchApi, BatchState, batch_api
from rate_limited.batch._records import custom_id_of
from rate_limited.calls import Call
from rate_limited.exceptions import BudgetWarning, ConfigurationError, warn
from rate_limited.outcomes import RunResult, Status

if TYPE_CHECKING:
    from rate_limited.budget import Budget
    from rate_limited.cost import PriceTable
    from rate_limited.runner import Runner

__all__ = ["BatchRunner"]

logger = get_logger("rate_limited")

#: Seconds between polls: the first wait, growing by half while nothing changes, at most.
POLL_FIRST, POLL_MAX = 5.0, 60.0
#: Least ``ttl`` of a store that keeps batch records: two completion windows.
MIN_TTL = 2 * 24 * 3600.0


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
        progress: bool | str | Any = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
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
        progress: None (the dashboard in a notebook, else a tqdm bar where tqdm shows
            one), ``"dashboard"``, ``True`` or ``"tqdm"``, ``False`` (none), or a
            ``DashboardProgress`` (``_display``).
        prices: the ``PriceTable`` costs come from (default: the process-wide one).
        sleep: how to wait between polls (tests pass a fake clock's ``advance``).
        clock: seconds, for the elapsed time and the ETA (tests pass a fake clock's
            ``time``).
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
        ttl = self.runner.store.ttl
        if ttl is not None and ttl < MIN_TTL:
            self.runner.close()
            raise ConfigurationError(
                f"The store forgets records after ttl={ttl:g} s, less than a batch may take "
                f"(24 h, and its polling): it would forget the batch ids and pay again. Use "
                f"a store without ttl=, or one of at least {MIN_TTL:g} s."
            )
        self.fallback = fallback
        self.progress = progress
        budget = self.runner.budget
        #: The batches' side of ``budget=`` (None without one).
        self._budget: BatchBudget | None = (
            None if budget is None else BatchBudget(budget, preset, self.runner.store)
        )
        self._prices = prices
        #: How to wait between polls (``time.sleep``; tests give a fake clock's ``advance``).
        self.sleep = sleep
        self.clock = clock
        self._driver = Driver(
            self.api,
            self.runner.store,
            preset,
            fallback=fallback,
            max_batch_retries=max_batch_retries,
            queue_limits=queue_limits(enqueued_token_limit),
            poll_interval=float(poll_interval),
            max_poll_interval=float(max(poll_interval, max_poll_interval)),
            usage=self._usage,
            function=self.runner._function_identity,
            budget=self._budget,
        )
        self.schedule = self.runner.schedule

    # -- the public surface ------------------------------------------------------------------
    @property
    def scheduled_calls(self) -> list[Call]:
        return self.runner.scheduled_calls

    @property
    def states(self) -> dict[str, BatchState]:
        """What each open batch last reported, by batch id."""
        return self._driver.states

    @property
    def budget(self) -> Budget | None:
        """The spending limit (None: none); raise ``budget.usd`` to go on after a stop."""
        return self.runner.budget

    @property
    def store(self) -> Any:
        return self.runner.store

    def run(self, *, on_progress: Callable[[RunResult], object] | None = None) -> RunResult:
        """Submit what is not answered yet, wait for the batches, return every call's
        outcome in schedule order. Ctrl-C returns the partial result at once; the
        batches go on at the provider, and ``run()`` again (here or in a new process with
        the same store) resumes them. ``on_progress(snapshot)``: called after each pass
        over the open batches with what has finished so far (e.g. to write it out)."""
        calls = self.runner.scheduled_calls
        started = time.monotonic()
        display: BatchDisplay | None = None
        interrupted = False
        try:
            self._restore(calls)
            leaders = _leaders(calls)
            display = BatchDisplay(len(calls), answered(calls), self.progress, self.clock)
            on_pass = None
            if on_progress is not None:

                def on_pass() -> None:
                    on_progress(RunResult.from_calls(list(calls), interrupted=False, copy=True))

            self._driver.drive(calls, leaders, display, self.sleep, on_pass)
        except KeyboardInterrupt:
            interrupted = True
            logger.warning(
                "Interrupted: the batches go on at the provider and their ids are in the "
                "store; run() again (even in a new process) resumes them."
            )
        finally:
            self.api.close()
            if display is not None:
                display.close(interrupted)
        if (
            not interrupted
            and self._driver.stopped is None
            and self.fallback == "online"
            and any(not c.status.is_final for c in calls)
        ):
            return self.runner.run()
        return self._result(calls, interrupted, time.monotonic() - started)

    def cancel_batches(self) -> list[str]:
        """Cancel the open batches of the scheduled calls; their ids. Requests a batch
        answered before it stopped are kept by the next ``run()``; the others fail with
        ``BatchRequestError`` (``code="batch_cancelled"``)."""
        cancelled = []
        for chunk in self._driver.open_chunks(self.runner.scheduled_calls):
            if chunk.batch_id is not None and chunk.state == "submitted":
                self.api.cancel(chunk.batch_id)
                cancelled.append(chunk.batch_id)
        return cancelled

    def batches(self) -> list[dict[str, Any]]:
        """The open batches of the scheduled calls: id, state, status, counts."""
        rows = []
        for chunk in self._driver.open_chunks(self.runner.scheduled_calls):
            state = self._driver.states.get(chunk.batch_id or "")
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
        self.api.close()
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
                set_cost(call, record.usage.get("cost_usd"))

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
        budget = None if interrupted else self._driver.stopped
        result = RunResult.from_calls(
            list(calls),
            interrupted=interrupted,
            elapsed=elapsed,
            resources=tuple(self.runner.resources),
            budget=budget,
        )
        if budget is not None:  # the rest pending: the calls stay, run() goes on
            warn(budget.message, BudgetWarning)
        elif not interrupted:  # complete: the next run() starts a new batch, as a Runner's
            self.runner.scheduled_calls = []
            Call.release_owners(calls)
        self.runner.last_result = result
        return result


def _leaders(calls: list[Call]) -> dict[str, list[Call]]:
    """The calls still to answer, by ``custom_id`` (calls with the same key share one)."""
    leaders: dict[str, list[Call]] = {}
    for call in calls:
        if not call.status.is_final and call.key is not None:
            call.status = Status.PENDING
            leaders.setdefault(custom_id_of(call.key), []).append(call)
    return leaders
