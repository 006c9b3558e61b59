"""The scheduler: admits calls against the ledger, runs them, settles, retries.

Everything here runs on the Runner's own event loop thread, so state needs no locks.

Admission is FIFO by schedule index: a retried call keeps its index and goes back ahead
of calls scheduled after it, and only the head call is ever tried against the ledger, so
no call starves. Among retries, the one that has failed least goes first (then by index):
a call that keeps returning invalid values cannot take every free slot from the others.
When the head does not fit, whoever tried arms one timer for the exact time the ledger
says it will fit (``Ledger.next_free_time``) and waits; a settling call or a
new one also wakes the waiters. Nothing polls.

How calls run depends on the function:

* async (a coroutine function): up to ``max_concurrent`` worker coroutines, each admitting
  the head call and awaiting it in place, so that an instant coroutine costs no task;
* sync: one dispatcher coroutine admits calls and hands them to ``ThreadPool``; threads
  report back in batches. A sync function that returns an awaitable (a lambda or partial
  around a coroutine function) has that awaitable awaited on the loop.

This is a departure from ARCHITECTURE.md's "one dispatcher starting a task per call" for
async functions: with no task per call the engine's overhead per call is a small fraction
of a task's, which the overhead benchmark needs; the admission rule is the same.

Settling an attempt: arguments usage stays billed; the results estimate is released and
the actual results usage billed (or, if the extractor fails or gives a usage that is not
a finite, non-negative number, the estimate is billed and a ``UsageExtractionError`` goes
in the call's warnings, the result kept); validators run (one that raises fails the call
for good: a bug in the validator is not an invalid value); a failure is classified
(``_policy``) and retried after a backoff, or is final. A 429 pauses admission for
everyone until its ``Retry-After`` (cool-down).

A sync call's arguments usage is held at admission and billed at the instant its thread
calls the function (``Ledger.begin``, with the time the thread read): a window then counts
from the moment the request really left, however late the thread took the call.

Stopping (Ctrl-C, ``handle.stop()``) stops admission and ends the run at once: calls
already started (threads and coroutines alike) finish on this loop, their outcomes kept
and stored when they arrive, and the next run waits for them instead of sending them
again. ``abandon()`` (a second Ctrl-C, ``close()``) cancels the coroutines and stops
waiting for the threads. A stop requested before its run has started is kept for it.

No error may hang a run: an exception of a call's function, extractor or validator
(``BaseException`` subclasses included) ends that call; an error of the engine itself (or the
system refusing a thread) ends the run, and ``run()`` raises it.

A 429 also corrects the ledger (``Ledger.refused``) and does not count against
``max_retries``; only ``rate_limit_patience`` seconds of nothing but 429s end the run
(``RateLimitedTooLongError``).

Priorities (``schedule(priority=)``, ``Runner.call()``): a call with a priority other than
0 waits in ``_urgent`` (a heap by priority, then index), ahead of the FIFO calls when its
priority is above 0 and behind them when below. The Runner's engines (the batch's and the
online calls', ``rate_limited._online``) share one ``Priorities``: an engine whose head
call is outranked by another engine's waiting head on the same quota lets it go first,
and a wake-up or a 429 cool-down in one reaches the others. ``final_listeners`` are told
of every call that becomes final (``as_completed()``, online callers).

With partitioned resources (one quota per model, say), a head call waiting for its own
partition does not hold up calls of another: the first call of each other partition
(a *lane*) that needs none of what the head waits for may pass it (``_admit_past``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._feedback import CURRENT_ADMISSION
from rate_limited._ledger import Ledger, Reservation
from rate_limited._policy import (
    is_rate_limited,
    proves_not_billed,
    retry_after_seconds,
    validate,
)
from rate_limited._pool import ThreadPool
from rate_limited._redact import describe, get_logger, redact, secret_values
from rate_limited.exceptions import (
    BlockingCallWarning,
    CallTimeoutError,
    RateLimitedTooLongError,
    RateLimitedWarning,
    StoreWarning,
    StreamBrokenError,
    UsageExtractionError,
    UsageWarning,
    ValidationError,
)
from rate_limited.outcomes import Status

if TYPE_CHECKING:
    from rate_limited._online import Priorities
    from rate_limited.calls import Call
    from rate_limited.progress import Progress
    from rate_limited.resources import Resource
    from rate_limited.semantic._step import SemanticStats, SemanticStep
    from rate_limited.stores import Store

logger = get_logger("rate_limited")

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    Status.PENDING,
    Status.RUNNING,
    Status.SUCCEEDED,
    Status.FAILED,
    Status.CANCELLED,
)

#: Failures that are not errors of the call: no backoff for them, nor counted in it.
_NOT_ERRORS = (ValidationError, UsageExtractionError)

#: An instant coroutine never yields; yield to the loop every this many calls anyway, so
#: that an interrupt or a progress update gets through.
_YIELD_EVERY = 512

#: A step of an async call longer than this blocked the loop (a sync call inside it).
_BLOCKING_SECONDS = 0.1
#: The first calls of a Runner are watched for that, then one call in this many.
_WATCH_FIRST, _WATCH_EVERY = 8, 64

#: A warning for the caller's thread: its category and message.
Notice = tuple[type[Warning], str]


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` returns a coroutine (functions, partials, methods,
    objects with an ``async def __call__``)."""
    if inspect.iscoroutinefunction(function):
        return True
    return inspect.iscoroutinefunction(type(function).__call__)


class RunStats:
    """Counters of the current run, read by progress displays (on the loop thread)."""

    __slots__ = (
        "_engine",
        "binding",
        "cooldowns",
        "failed",
        "first_token_total",
        "first_tokens",
        "long_waits",
        "rate_limited",
        "retries",
        "started_at",
        "succeeded",
        "total",
        "waiting_until",
    )

    def __init__(
        self, total: int, done: int, failed: int, now: float, engine: Engine | None = None
    ) -> None:
        self._engine = engine
        self.total = total  #: calls in this run
        self.succeeded = done  #: calls that ended with a value
        self.failed = failed  #: calls that ended failed
        self.retries = 0  #: failed attempts that were retried
        self.rate_limited = 0  #: attempts answered 429
        self.cooldowns = 0  #: times admission paused for a Retry-After
        self.long_waits = 0  #: waits for quota longer than long_wait_warning_seconds
        self.waiting_until: float | None = None  #: admission waits for quota until then
        self.binding: str | None = None  #: the resource it waits for
        self.started_at = now
        self.first_tokens = 0  #: streamed attempts that got a first chunk
        self.first_token_total = 0.0  #: their seconds to it, summed

    @property
    def time_to_first_token(self) -> float | None:
        """Mean seconds from sending to the first chunk of streamed attempts (None: none)."""
        if not self.first_tokens:
            return None
        return self.first_token_total / self.first_tokens

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> int:
        """Attempts running now."""
        return 0 if self._engine is None else max(0, self._engine._in_flight)

    @property
    def backing_off(self) -> int:
        """Calls waiting out a backoff before their next attempt."""
        return 0 if self._engine is None else self._engine._backing_off

    @property
    def now(self) -> float:
        """The engine's clock (loop time)."""
        return self.started_at if self._engine is None else self._engine.loop.time()

    @property
    def elapsed(self) -> float:
        return self.now - self.started_at

    @property
    def store_failures(self) -> int:
        """Finished calls whose outcome could not be written to the store, in this run."""
        return 0 if self._engine is None else self._engine._store_failures

    @property
    def paused_until(self) -> float | None:
        """End of a cool-down after HTTP 429 (loop time), if one is going on."""
        if self._engine is None or self._engine._pause_until <= self.now:
            return None
        return self._engine._pause_until

    @property
    def semantic(self) -> SemanticStats | None:
        """The semantic cache's hits in this run and the usage they saved (None: no cache)."""
        if self._engine is None or self._engine.semantic is None:
            return None
        return self._engine.semantic.stats

    def usage(self) -> dict[str, tuple[float, float, float]]:
        """``{resource: (used, reserved, quota)}`` now."""
        if self._engine is None:
            return {}
        return self._engine.ledger.snapshot(self.now)


class Engine:
    """Runs batches of calls; one per Runner, living on the Runner's loop thread."""

    def __init__(
        self,
        function: Callable[..., Any],
        resources: Sequence[Resource],
        loop: asyncio.AbstractEventLoop,
        *,
        max_concurrent: int,
        max_retries: int,
        retry_if: Callable[[BaseException], bool],
        backoff: Callable[[int, BaseException | None], float],
        validators: tuple[Callable[[Any], Any], ...],
        timeout: float | None,
        long_wait_seconds: float | None,
        name: str = "rate_limited",
        progress_interval: float,
        store: Store | None = None,
        refresh: bool = False,
        retry_failed: bool = True,
        function_name: str = "",
        ledger: Ledger | None = None,
        rate_limit_patience: float | None = None,
        semantic: SemanticStep | None = None,
    ) -> None:
        self.function = function
        self.is_async = is_async_callable(function)
        self.resources = list(resources)
        #: Shared by every engine of one Runner: quota used on one loop counts on another.
        self.ledger = ledger if ledger is not None else Ledger(self.resources)
        self._has_ledger = bool(self.resources)
        self._results_extractors = [r.results_usage_extractor for r in self.resources]
        self._has_results_usage = any(e is not None for e in self._results_extractors)
        self.loop = loop
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.retry_if = retry_if
        self.backoff = backoff
        self.validators = validators
        self.timeout = timeout
        self.long_wait_seconds = long_wait_seconds
        self.progress_interval = progress_interval
        self.progress: Progress | None = None
        self.store = store
        self.refresh = refresh
        self.retry_failed = retry_failed
        self.function_name = function_name
        self.rate_limit_patience = rate_limit_patience
        # 429 streaks: attempts answered otherwise (successes are counted in stats), the
        # count when the streak was last checked, and when the streak started.
        self._answered = 0
        self._answers_seen = 0
        self._streak_since = -math.inf
        self._gave_up: RateLimitedTooLongError | None = None
        # Partitioned resources: fresh calls by partition keys, each (call, attempts then).
        self._lanes: dict[tuple[Any, ...], deque[tuple[Call, int]]] | None = None
        self._passed: set[Call] = set()  # admitted from a lane, still in _ready
        #: The semantic cache (see ``rate_limited.semantic._step``), if the Runner has one.
        self.semantic = semantic
        self._lookup: asyncio.Task[set[Call]] | None = None
        self._flush_scheduled = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._wall_offset = time.time() - loop.time()  # loop time -> epoch seconds
        #: Outcomes that could not be stored since the last report, and why (the first).
        self._store_failures = 0
        self._store_problem: str | None = None
        self._reported_unstored: set[str] = set()  # keys a StoreWarning already named
        #: Calls whose results usage could not be read since the last report, and the first.
        self._usage_problems = 0
        self._usage_problem: str | None = None
        #: Warnings for the thread that called run() (it emits them, see take_notices).
        self._notices: list[Notice] = []
        self._watched = 0  # async calls watched for blocking the loop
        self._blocking_calls = 0  # and those of them that did
        self._warned_blocking = False
        self._warned_threads = False
        #: The current run, and a stop requested for a run that has not started yet.
        self._run_id = 0
        self._stop_for = 0
        #: An error of the engine itself: it ends the run and run() raises it.
        self._fatal: BaseException | None = None
        self._running_batch = False

        self._ready: deque[Call] = deque()
        # Calls with a priority other than 0, a heap by (-priority, index, seq).
        self._urgent: list[tuple[int, int, int, Call]] = []
        #: Told of each call that becomes final, on the loop thread (a tuple: listeners are
        #: added from other threads by replacing it whole).
        self.final_listeners: tuple[Callable[[Call], None], ...] = ()
        #: Arbitrates between the Runner's engines by priority (None: this engine alone).
        self.priorities: Priorities | None = None
        # Retries due, a heap by (failures, index, seq): among retries the one that failed
        # least goes first, so a call that keeps failing cannot take every free slot.
        self._retry: list[tuple[int, int, int, Call]] = []
        self._retry_seq = 0
        self._epoch = 0  # run number: a backoff timer of an earlier run is a no-op
        self._backing_off = 0
        self._batch_len = 0
        self._ticker: asyncio.TimerHandle | None = None
        #: Calls of this run with the same store key as an earlier one: they take its outcome.
        self._followers: dict[Call, list[Call]] = {}
        self._awaiting: set[asyncio.Task[None]] = set()  # awaitables from sync functions
        self._in_threads: set[Call] = set()  # sync calls handed to the pool, not settled
        self._in_flight = 0
        self._unfinished = 0
        self._stopping = False
        self._done: asyncio.Future[None] | None = None
        self._wake_future: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._pause_until = -math.inf
        self._workers: set[asyncio.Task[None]] = set()
        self._next_progress = -math.inf
        self._warned_wait = False
        self.stats = RunStats(0, 0, 0, loop.time(), self)
        self.pool: ThreadPool | None = None
        #: Sync calls hold their arguments usage until their thread starts (see begin()).
        self._defer_billing = not self.is_async and self._has_ledger
        if not self.is_async:
            self.pool = ThreadPool(
                function,
                loop,
                self._on_completions,
                max_concurrent,
                name=f"rate_limited-{name}",
                report_starts=self._defer_billing,
            )

    # -- running a batch ---------------------------------------------------------------------
    async def run(self, calls: Sequence[Call], progress: Progress | None, run_id: int = 0) -> bool:
        """Run every call of ``calls`` that is not final; True if stopped before the end.

        Raises the engine's own error if one ended the run (see the module docstring).
        """
        if self._running_batch:
            raise RuntimeError("this engine is already running a batch")
        self._running_batch = True
        try:
            return await self._run(calls, progress, run_id)
        finally:
            self._running_batch = False

    async def _run(self, calls: Sequence[Call], progress: Progress | None, run_id: int) -> bool:
        loop = self.loop
        self._run_id = run_id
        self._fatal = None
        self._stopping = False
        self.progress = progress
        self._retry.clear()
        self._urgent.clear()
        self._epoch += 1
        self._wall_offset = time.time() - loop.time()
        if self.store is not None:
            self._restore(calls)
        if run_id and self._stop_for == run_id:
            self._stopping = True  # stopped before it started: nothing is looked up or sent
            return True
        waiting = await self._semantic_lookup(calls) if self.semantic is not None else set()
        if self._stopping:
            return True  # interrupted while the semantic cache looked up: nothing was sent
        ready: deque[Call] = deque()
        unfinished = succeeded = failed = 0
        self._followers = {}
        leaders: dict[str, Call] = {}  # with a store: one call per key, the others follow
        listeners = self.final_listeners
        for call in calls:
            status = call.status
            if status is SUCCEEDED:
                succeeded += 1
                for listener in listeners:
                    listener(call)
            elif status is FAILED:
                failed += 1
                for listener in listeners:
                    listener(call)
            else:
                unfinished += 1
                key = call.key
                if key is not None and self.store is not None:
                    leader = leaders.setdefault(key, call)
                    if leader is not call:
                        call.status = PENDING
                        self._followers.setdefault(leader, []).append(call)
                        if not _same_arguments(call, leader):
                            logger.warning(
                                "%r and %r have the same store key but different arguments; "
                                "they share one outcome (check key=)",
                                leader,
                                call,
                            )
                        continue
                if call in waiting:
                    continue  # the semantic cache: it waits for an earlier call of this run
                if status is not RUNNING:  # RUNNING: a sync call still in its thread
                    call.status = PENDING
                    extras = call._extras  # (call.priority, without a property per call)
                    if extras is not None and extras.priority:
                        self._push_urgent(call)
                    else:
                        ready.append(call)
        self._ready = ready
        self._passed.clear()
        self._lanes = None
        if self.ledger.partitioned:
            self._lanes = {}
            for call in ready:
                self._add_to_lane(call)
        self._gave_up = None
        self._batch_len = len(calls)
        self._unfinished = unfinished
        self.stats = RunStats(len(calls), succeeded, failed, loop.time(), self)
        self._answers_seen = succeeded + self._answered  # a 429 streak starts with the run
        self._streak_since = self.stats.started_at
        self._warned_wait = False
        self._backing_off = 0
        if progress is not None:
            self._report(progress.start, self.stats)
            if not getattr(loop, "virtual_time", False):  # a FakeClock would jump per tick
                self._ticker = loop.call_later(self._tick_interval, self._tick)
        try:
            if unfinished:
                self._done = loop.create_future()
                self._start_runners()
                await self._done
        except asyncio.CancelledError:
            self._stop()  # as an interrupt: calls already started go on
            raise
        finally:
            self._done = None
            self._cancel_timer()
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None
            # Nothing of this run is needed any more; a Call held here would keep its
            # Runner alive (calls still running are held by their own worker or thread).
            self._ready = deque()
            self._retry.clear()
            self._urgent.clear()
            self._followers = {}
            if self.priorities is not None:
                self.priorities.idle(self)
            self._flush_store(final=True)
            if self.progress is not None:
                self._report(self.progress.finish, self.stats, self._stopping)
            self.progress = None
        if self._fatal is not None:
            raise self._fatal
        if not self._stopping:
            await self._join_workers()  # they are returning: nothing is left to run
        return self._stopping

    @property
    def _tick_interval(self) -> float:
        return max(self.progress_interval, 0.05)

    def _tick(self) -> None:
        """Refresh the progress display while nothing finishes (e.g. waiting for quota)."""
        if self.progress is None or self._done is None:
            self._ticker = None
            return
        self._next_progress = self.loop.time() + self.progress_interval
        self._report(self.progress.update, self.stats)
        self._ticker = self.loop.call_later(self._tick_interval, self._tick)

    def request_stop(self, run_id: int = 0) -> None:
        """Stop admitting and end run ``run_id`` at once, leaving the calls already started
        to finish (loop thread). A request for a run that has not started yet is kept for
        it, so that a Ctrl-C in the first instant of ``run()`` is never lost."""
        if run_id and run_id != self._run_id:
            self._stop_for = max(self._stop_for, run_id)  # that run stops as it starts
            return
        if self._done is not None and not self._done.done():
            self._stop()
        elif self._lookup is not None:
            self._lookup.cancel()

    def _stop(self) -> None:
        self._stopping = True
        if self.pool is not None:
            now = self.loop.time()
            for call, token in self.pool.take_back():
                if call.attempts == token and call.status is RUNNING:
                    call.attempts -= 1  # never started
                    self._in_threads.discard(call)
                    self._release(call, now)
                    call.status = PENDING
                    self._in_flight -= 1
        self._resolve_done()
        self._wake()

    @property
    def running_calls(self) -> int:
        """Calls started and not settled yet (e.g. still running after an interrupt)."""
        return max(0, self._in_flight)

    def abandon(self) -> int:
        """Stop waiting for the calls still running (a second Ctrl-C, ``close()``): their
        coroutines are cancelled, sync calls are left to their threads (a late result is
        still kept). They end ``cancelled`` (a rerun sends them again; what they may have
        used stays billed). Returns how many there were (loop thread)."""
        count = self.running_calls
        if not count:
            return 0
        self._stopping = True
        now = self.loop.time()
        for call in list(self._in_threads):
            if call.status is RUNNING:
                self._in_threads.discard(call)
                assert self.pool is not None
                self.pool.abandoned += 1  # its thread no longer counts
                self._cancelled(call, now)
        for task in (*self._workers, *self._awaiting):
            task.cancel()
        self._resolve_done()
        self._wake()
        logger.warning("Abandoned %d calls that were still running", count)
        return count

    async def abandon_and_wait(self) -> int:
        """``abandon()``, then wait until the cancelled coroutines have ended."""
        tasks = [*self._workers, *self._awaiting]
        count = self.abandon()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return count

    def withdraw(self, call: Call) -> bool:
        """Withdraw a call that has not been sent (its caller went away): it ends
        ``cancelled`` and holds nothing. False if it is running or done (loop thread)."""
        if call.status is not PENDING or self._done is None:
            return False
        call.status = CANCELLED
        for followers in self._followers.values():
            if call in followers:
                followers.remove(call)
        followers = self._followers.pop(call, [])
        if followers:  # the next call with its key is sent instead, the others follow it
            leader = followers.pop(0)
            if followers:
                self._followers[leader] = followers
            self._due(leader, self._epoch)
        self._unfinished -= 1
        self.stats.total -= 1
        if self._unfinished <= 0 and self._in_flight <= 0:
            self._resolve_done()
        self._wake()
        return True

    def take_notices(self) -> tuple[list[Notice], int]:
        """The warnings due since the last call (for the thread that called ``run()`` to
        emit), and how many outcomes could not be stored meanwhile."""
        notices = self._notices
        store_failures = self._store_failures
        if store_failures:
            notices.append((StoreWarning, self._store_failure_text()))
            self._store_failures, self._store_problem = 0, None
        if self._usage_problems:
            notices.append(
                (
                    UsageWarning,
                    f"{self._usage_problems} call(s) returned a result whose usage could not "
                    "be read; their estimates were billed instead and their results kept "
                    f"(see outcome.warnings). The first: {self._usage_problem}",
                )
            )
            self._usage_problems, self._usage_problem = 0, None
        self._notices = []
        return notices, store_failures

    def _store_failure_text(self) -> str:
        return (
            f"{self._store_failures} finished call(s) could not be written to the store "
            f"{self.store!r} ({self._store_problem}). Their results are in this RunResult, "
            "but a later process would call the API again for them."
        )

    def _crash(self, exc: BaseException) -> None:
        """An error of the engine itself, not of a call: the run ends and raises it."""
        logger.error("Internal error; the run ends with it", exc_info=exc)
        if self._fatal is None and self._done is not None:
            self._fatal = exc
        if self._done is not None and not self._done.done():
            self._stop()

    def _resolve_done(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _join_workers(self) -> None:
        workers = [*self._workers, *self._awaiting]
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    def enqueue(self, call: Call) -> None:
        """A call scheduled while a run is going (loop thread)."""
        if self._done is None or self._stopping or call.index < self._batch_len:
            return  # the next run() picks it up, or this one already has
        if call.priority:
            self._push_urgent(call)
        else:
            self._ready.append(call)
        if self._lanes is not None:
            self._add_to_lane(call)
        self._unfinished += 1
        self.stats.total += 1
        self._start_runners()
        self._wake()

    def _start_runners(self) -> None:
        if self.is_async:
            queued = len(self._ready) + len(self._retry) + len(self._urgent)
            wanted = min(self.max_concurrent, queued)
            while len(self._workers) < wanted:
                task = self.loop.create_task(self._worker())
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
        elif not self._workers:
            task = self.loop.create_task(self._dispatcher())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    # -- admission ---------------------------------------------------------------------------
    def _push_urgent(self, call: Call) -> None:
        self._retry_seq += 1
        heapq.heappush(self._urgent, (-call.priority, call.index, self._retry_seq, call))

    def _head(self) -> Call | None:
        urgent = self._urgent
        if urgent:
            while urgent and urgent[0][3].status is not PENDING:
                heapq.heappop(urgent)  # admitted from a lane, withdrawn or settled late
            if urgent and urgent[0][0] < 0:
                return urgent[0][3]  # a priority above the FIFO calls'
        call = self._fifo_head()
        if call is None and urgent:
            return urgent[0][3]  # priorities below 0 go last
        return call

    def _fifo_head(self) -> Call | None:
        ready, retry = self._ready, self._retry
        while True:
            if retry and not (ready and ready[0].index < retry[0][1]):
                call = retry[0][3]
                if call.status is PENDING:
                    return call
                heapq.heappop(retry)  # settled meanwhile by a late result
            elif ready:
                call = ready[0]
                if call.status is PENDING and not (self._passed and call in self._passed):
                    return call
                self._passed.discard(ready.popleft())
            else:
                return None

    def _pop_head(self, call: Call) -> None:
        retry, urgent = self._retry, self._urgent
        if urgent and urgent[0][3] is call:
            heapq.heappop(urgent)
        elif retry and retry[0][3] is call:
            heapq.heappop(retry)
        else:
            self._ready.popleft()

    def _admit(self) -> Call | None:
        """Take the head call if it may start now, else arm the wake-up and return None."""
        while True:
            if self._stopping or self._in_flight >= self.max_concurrent:
                return None
            call = self._head()
            if call is None:
                return None
            if not self._has_ledger and self._pause_until == -math.inf:
                break
            now = self.loop.time()
            if now < self._pause_until:
                self._arm_timer(self._pause_until)
                self._note_wait(self._pause_until, "cool-down after HTTP 429", now)
                return None
            if not self._has_ledger:
                break
            priorities = self.priorities
            if priorities is not None and priorities.outranked(self, call):
                return None  # their engine wakes this one when they are admitted or gone
            reservation = self.ledger.try_reserve(call.demand, now, defer=self._defer_billing)
            if reservation is not None:
                call.reservation = reservation
                if self.stats.waiting_until is not None:
                    self._note_wait(None, None, now)
                if priorities is not None:
                    priorities.admitted(self)
                break
            if priorities is not None:
                priorities.waiting(self, call)
            when = self.ledger.next_free_time(call.demand, now)
            if (
                when == math.inf
                and self._in_flight <= 0
                and (priorities is None or not priorities.others_in_flight(self))
            ):
                self._never_fits(call, now)  # a quota lowered below the call's needs
                continue  # and look at the next call
            if self._lanes is not None and len(self._lanes) > 1:
                passing, lane_when = self._admit_past(call, now)
                if passing is not None:
                    self._in_flight += 1
                    return passing
                when = min(when, lane_when)
            if when < math.inf:
                self._arm_timer(max(when, now + 1e-9 * max(1.0, now)))
            self._note_wait(when, self.ledger.binding(call.demand, now), now)
            return None
        self._pop_head(call)
        self._in_flight += 1
        return call

    def _add_to_lane(self, call: Call) -> None:
        assert self._lanes is not None
        lane = tuple(need[2] for need in call.demand)
        self._lanes.setdefault(lane, deque()).append((call, call.attempts))

    def _admit_past(self, head: Call, now: float) -> tuple[Call | None, float]:
        """The head waits: admit the oldest first call of another lane that needs none of
        what the head waits for (so it cannot delay it), if one fits now. Else returns
        None and when the earliest of those lane heads will fit."""
        assert self._lanes is not None
        ledger = self.ledger
        blocked = ledger.blocked_by(head.demand, now)
        own = tuple(need[2] for need in head.demand)
        firsts = []
        for lane, queue in list(self._lanes.items()):
            while queue and (
                queue[0][0].status is not PENDING or queue[0][0].attempts != queue[0][1]
            ):
                queue.popleft()  # admitted meanwhile (or finished): stale
            if not queue:
                del self._lanes[lane]
            elif lane != own:
                firsts.append(queue)
        when = math.inf
        for queue in sorted(firsts, key=lambda q: q[0][0].index):
            call = queue[0][0]
            if ledger.meter_ids(call.demand) & blocked:
                continue
            if self.priorities is not None and self.priorities.outranked(self, call):
                continue
            reservation = ledger.try_reserve(call.demand, now, defer=self._defer_billing)
            if reservation is not None:
                call.reservation = reservation
                queue.popleft()
                self._passed.add(call)
                return call, now
            when = min(when, ledger.next_free_time(call.demand, now))
        return None, when

    def _never_fits(self, call: Call, now: float) -> None:
        """The head call needs more than a whole quota (lowered since it was scheduled,
        e.g. by limits read from the provider's headers): it can never run, so it fails
        instead of waiting for ever."""
        from rate_limited.exceptions import QuotaExceededError

        name, needed, quota = self.ledger.shortfall(call.demand, now) or ("?", 0.0, 0.0)
        error = QuotaExceededError(
            f"Call {call!r} exceeds resource quota of {name!r}: it needs {needed:g} but the "
            f"whole quota is now {quota:g}, so it could never run.",
            resource=name,
            needed=needed,
            quota=quota,
        )
        self._pop_head(call)
        self._in_flight += 1  # _finish counts it out
        call.exceptions.append(error)
        self._finish(call, FAILED, now)

    def _note_wait(self, until: float | None, binding: str | None, now: float) -> None:
        stats = self.stats
        stats.waiting_until, stats.binding = until, binding
        if until is None:
            self._warned_wait = False
            return
        long_wait = self.long_wait_seconds
        if long_wait is not None and until - now >= long_wait and not self._warned_wait:
            self._warned_wait = True
            seconds = (
                "until a running call settles" if until == math.inf else (f"{until - now:.1f} s")
            )
            # A warning the first time in a run (it explains a slow run), INFO afterwards.
            level = logging.INFO if stats.long_waits else logging.WARNING
            stats.long_waits += 1
            logger.log(level, "All calls are waiting for %s: %s", binding or "capacity", seconds)
            if self.progress is not None:
                self._report(self.progress.waiting, stats, until - now, binding)

    # -- waiting -----------------------------------------------------------------------------
    async def _wait(self) -> None:
        future = self._wake_future
        if future is None or future.done():
            future = self._wake_future = self.loop.create_future()
        await future

    def wake(self) -> None:
        """Let waiting admission look again (capacity may have changed)."""
        self._wake()

    def pause_until(self, when: float) -> None:
        """Admit nothing before ``when`` (loop time); extends, never shortens, a pause."""
        if when > self._pause_until:
            self._pause_until = when
            self.stats.cooldowns += 1
            if self.priorities is not None:
                self.priorities.pause(self, when)
        self._wake()

    def _wake(self) -> None:
        self.wake_here()
        if self.priorities is not None:
            self.priorities.wake(self)

    def wake_here(self) -> None:
        """Wake this engine's waiting admission only (``Priorities`` wakes the others)."""
        future = self._wake_future
        if future is not None:
            self._wake_future = None
            if not future.done():
                future.set_result(None)

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = math.inf
        self._wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_when = math.inf

    # -- async functions ---------------------------------------------------------------------
    async def _worker(self) -> None:
        try:
            await self._work()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug of the engine: end the run, don't hang it
            self._crash(exc)

    def _blocked(self, seconds: float) -> None:
        """A watched call blocked the loop. Once may be a one-time set-up in the first call
        (a client building its headers, a tokenizer loading); twice is a habit."""
        self._blocking_calls += 1
        if self._warned_blocking or self._blocking_calls < 2:
            return
        self._warned_blocking = True
        text = (
            f"The async function {self.function_name or self.function!r} blocked the event "
            f"loop for {seconds:.2f} s in one step: while it blocks no other call runs, so "
            "calls run one at a time whatever max_concurrent is. It probably calls a "
            "blocking (sync) client or time.sleep inside async def. Use the client's async "
            "API (await client.create(...)), wrap the blocking part in "
            "`await asyncio.to_thread(...)`, or give the Runner the sync function instead "
            "(it runs sync functions in threads)."
        )
        logger.warning(text)
        self._notices.append((BlockingCallWarning, text))

    async def _work(self) -> None:
        function, timeout, loop_time = self.function, self.timeout, self.loop.time
        # Fast path: no ledger, validators or timeout: admission is "take the head" and
        # settling is a few assignments, inlined (this loop is the whole per-call cost).
        simple = not self._has_ledger and not self.validators and timeout is None and not self.store
        stats = self.stats
        since_yield = 0
        now = loop_time()  # read once per call; the next call starts when this one ended
        while True:
            if self._flush_scheduled:
                # Let the store commit what just settled before this worker sends another
                # request: a crash then loses at most the calls in flight.
                await asyncio.sleep(0)
                now = loop_time()
            ready = self._ready
            if (
                simple
                and ready
                and not self._retry
                and not self._urgent
                and not self._stopping
                and ready[0].status is PENDING
                and self._pause_until == -math.inf
            ):
                call = ready.popleft()
                self._in_flight += 1
            else:
                admitted = self._admit()
                if admitted is None:
                    if self._unfinished <= 0 or self._stopping:
                        return
                    await self._wait()
                    since_yield = 0
                    now = loop_time()
                    continue
                call = admitted
                if self._wake_future is not None and (self._ready or self._retry or self._urgent):
                    self._wake()  # capacity may fit more than this call: let idle workers try
            call.status = RUNNING
            call.attempts += 1
            call.started_at = now
            if not simple:
                CURRENT_ADMISSION.set(_admission(call))  # for the function's feedback
            try:
                awaitable = function(*call.args, **call.kwargs)
                # The first calls, then one in _WATCH_EVERY, are timed step by step: a long
                # step blocked the loop (see _blocked).
                watched = self._watched = self._watched + 1
                if (watched <= _WATCH_FIRST or not watched % _WATCH_EVERY) and (
                    not self._warned_blocking
                ):
                    awaitable = _StepTimer(awaitable, self._blocked)
                if timeout is None:
                    value = await awaitable
                else:
                    value = await asyncio.wait_for(awaitable, timeout)
            except asyncio.CancelledError:
                now = loop_time()
                if self._stopping:
                    self._cancelled(call, now)
                    raise
                cancelled = asyncio.CancelledError("the call was cancelled")
                self._settle(self._failed, call, cancelled, now)
            except BaseException as exc:
                now = loop_time()
                if timeout is not None and isinstance(exc, TimeoutError | asyncio.TimeoutError):
                    error = CallTimeoutError(f"the call took longer than timeout={timeout} s")
                    error.__cause__ = exc
                    exc = error
                self._settle(self._failed, call, exc, now)
            else:
                now = loop_time()
                if simple:
                    call.result = value
                    call.status = SUCCEEDED
                    call.finished_at = now
                    self._in_flight -= 1
                    stats.succeeded += 1
                    self._unfinished -= 1
                    if self.final_listeners:
                        for listener in self.final_listeners:
                            listener(call)
                    if self._unfinished <= 0:
                        self._resolve_done()
                        self._wake()
                    if self.progress is not None and now >= self._next_progress:
                        self._next_progress = now + self.progress_interval
                        self._report(self.progress.update, stats)
                else:
                    self._settle(self._returned, call, value, now)
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                now = loop_time()

    # -- sync functions ----------------------------------------------------------------------
    async def _dispatcher(self) -> None:
        try:
            await self._dispatch()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the system refused a thread, or a bug: end the run
            self._crash(exc)

    async def _dispatch(self) -> None:
        pool, timeout, loop = self.pool, self.timeout, self.loop
        assert pool is not None
        now = loop.time()  # one read per burst of admissions: they start together
        while True:
            call = self._admit()
            if call is None:
                if self._unfinished <= 0 or self._stopping:
                    return
                await self._wait()
                now = loop.time()
                continue
            call.status = RUNNING
            call.attempts += 1  # also the token that tells this attempt's result apart
            call.started_at = now
            try:
                pool.submit(call, call.attempts)
            except RuntimeError as exc:  # not a single thread could be started
                call.attempts -= 1
                self._release(call, now)
                call.status = PENDING
                self._in_flight -= 1
                raise RuntimeError(
                    f"could not start a thread to run the calls ({exc}): the system refuses "
                    "new threads (a process or memory limit). Lower max_concurrent= or "
                    "raise the limit; run() again resumes."
                ) from exc
            self._in_threads.add(call)
            if pool.thread_limit is not None and not self._warned_threads:
                self._thread_limit_reached(pool)
            if timeout is not None:
                loop.call_at(now + timeout, self._sync_timeout, call, call.attempts)

    def _thread_limit_reached(self, pool: ThreadPool) -> None:
        self._warned_threads = True
        threads = len(pool._threads)
        text = (
            f"The system refused a new thread ({pool.thread_limit}) after {threads}: the run "
            f"goes on with {threads} threads instead of max_concurrent={self.max_concurrent}. "
            f"Lower max_concurrent= to {threads} or less, or raise the process limit."
        )
        logger.warning(text)
        self._notices.append((RateLimitedWarning, text))

    def _on_completions(self) -> None:
        pool = self.pool
        assert pool is not None
        try:
            now = self.loop.time()  # one read per batch of completions
            for call, token, ok, value in pool.drain():
                current = token == call.attempts
                if ok is None:  # a thread starts it: bill its arguments usage then
                    if current and call.status is RUNNING:
                        started = min(value, now)
                        reservation = call.reservation
                        if isinstance(reservation, Reservation):
                            self.ledger.begin(reservation, started)
                        call.started_at = started
                    continue
                if current:
                    self._in_threads.discard(call)
                if not current or call.status is not RUNNING:
                    self._late(call, ok, value)
                elif ok and inspect.isawaitable(value):
                    task = self.loop.create_task(self._await_returned(call, value))
                    self._awaiting.add(task)
                    task.add_done_callback(self._awaiting.discard)
                elif ok:
                    self._settle(self._returned, call, value, now)
                else:
                    self._settle(self._failed, call, value, now)
        except BaseException as exc:  # never leave completions unsettled and run() waiting
            self._crash(exc)
        self._wake()

    async def _await_returned(self, call: Call, awaitable: Any) -> None:
        CURRENT_ADMISSION.set(_admission(call))
        try:
            value = await awaitable
        except asyncio.CancelledError:
            self._cancelled(call, self.loop.time())
            raise
        except BaseException as exc:
            self._settle(self._failed, call, exc, self.loop.time())
        else:
            self._settle(self._returned, call, value, self.loop.time())
        self._wake()

    def _sync_timeout(self, call: Call, token: int) -> None:
        if call.attempts != token or call.status is not RUNNING:
            return
        assert self.pool is not None
        self.pool.abandoned += 1  # its result will come late: the call is no longer RUNNING
        error = CallTimeoutError(
            f"the call took longer than timeout={self.timeout} s (its thread cannot be "
            "stopped; a late result is kept if the call has not succeeded by then)"
        )
        self._settle(self._failed, call, error, self.loop.time())
        self._wake()

    def _late(self, call: Call, ok: bool | None, value: Any) -> None:
        """A thread finished an attempt the engine had stopped waiting for (a timeout, an
        abandoned call). A value it returned was paid for: it is kept, unless the call
        has a value already or another attempt is running; even a call that failed for
        good after the timeout succeeds with it."""
        assert self.pool is not None
        self.pool.abandoned = max(0, self.pool.abandoned - 1)
        if not ok or call.status is SUCCEEDED or call.status is RUNNING:
            return  # a failure we already counted, or another attempt is running / won
        if inspect.isawaitable(value):
            return  # not worth resurrecting: the retry will run it again
        if self.validators and validate(value, self.validators)[0]:
            return  # an invalid value: the call stays as it is
        logger.info("Keeping the late result of %r after its timeout", call)
        if call.status is FAILED:  # counted out already: count it back in, as running
            self.stats.failed -= 1
            self._unfinished += 1
        call.status = RUNNING  # settle it as if the attempt had just returned
        self._in_flight += 1
        call.reservation = None
        self._settle(self._validated, call, value, self.loop.time())

    # -- settling ----------------------------------------------------------------------------
    def _settle(
        self, settle: Callable[[Call, Any, float], None], call: Call, value: Any, now: float
    ) -> None:
        """Run a settle step; if anything in it raises, the call fails instead of the run
        hanging (a worker that died would leave its call RUNNING for ever)."""
        try:
            settle(call, value, now)
        except BaseException as exc:  # SystemExit from a validator too: the call fails
            logger.exception("Internal error while settling %r; the call is marked failed", call)
            if call.status.is_final:
                return
            if call.status is RUNNING:
                self._in_flight -= 1
            call.reservation = None
            call.exceptions.append(exc)
            call.status = FAILED
            call.finished_at = now
            self.stats.failed += 1
            self._unfinished -= 1
            for listener in self.final_listeners:
                listener(call)
            self._settle_followers(call, now)
            if self.semantic is not None:
                self._semantic_settled(call, now)
            if self._unfinished <= 0:
                self._resolve_done()
                self._wake()

    def _report(self, method: Callable[..., None], *args: Any) -> None:
        """Call the progress display; a display that raises is dropped, not the run."""
        try:
            method(*args)
        except BaseException:
            logger.exception("The progress display failed; the run goes on without it")
            self.progress = None

    def _returned(self, call: Call, value: Any, now: float) -> None:
        if self._has_ledger:
            self._bill_results(call, value, now)
        if self.validators:
            message, cause = validate(value, self.validators)
            if message:
                if cause is not None:
                    message += (
                        " (a validator that raises has a bug, which a retry can't fix: the "
                        "call fails without retrying; the value is in error.value)"
                    )
                error = ValidationError(redact(message, secret_values(call)), call, value)
                error.__cause__ = cause
                self._failed(call, error, now, settled=True, final=cause is not None)
                return
        call.result = value
        self._finish(call, SUCCEEDED, now)

    def _validated(self, call: Call, value: Any, now: float) -> None:
        """``_returned`` for a value the validators have already accepted."""
        if self._has_ledger:
            self._bill_results(call, value, now)
        call.result = value
        self._finish(call, SUCCEEDED, now)

    def _bill_results(self, call: Call, value: Any, now: float) -> None:
        reservation = call.reservation
        call.reservation = None
        if isinstance(reservation, Reservation) and reservation.first_token is not None:
            call.time_to_first_token = reservation.first_token
            self.stats.first_tokens += 1
            self.stats.first_token_total += reservation.first_token
        usage = call.usage
        if usage is None:
            usage = call.usage = {}
        actual = [0.0] * len(self.resources)
        for i, resource in enumerate(self.resources):
            estimate = call.demand[i][1]
            amount = 0.0
            extractor = self._results_extractors[i]
            if extractor is not None:
                try:
                    amount = float(extractor(call, value))
                    if not 0 <= amount < math.inf:  # NaN and inf too: a meter must stay finite
                        raise ValueError(
                            f"usage must be a finite, non-negative number, got {amount}"
                        )
                except BaseException as exc:
                    error = UsageExtractionError(
                        f"results_usage_extractor of resource {resource.name!r} failed "
                        f"({describe(exc, call)}); billed the estimate {estimate:g} instead"
                    )
                    error.__cause__ = exc
                    if not call._warnings:
                        self._usage_problems += 1
                        self._usage_problem = self._usage_problem or str(error)
                    call.warnings.append(error)
                    logger.warning("%s for %r", error, call)
                    amount = estimate
            actual[i] = amount
        if isinstance(reservation, Reservation):
            billed = self.ledger.settle(reservation, actual, now)  # by each resource's rule
            for resource, need, amount in zip(self.resources, call.demand, billed, strict=True):
                usage[resource.name] = usage.get(resource.name, 0.0) + need[0] + amount
        else:  # a late result whose reservation was already settled: bill what it used
            self.ledger.bill(call.demand, actual, now)

    def _release(self, call: Call, now: float) -> None:
        reservation = call.reservation
        if isinstance(reservation, Reservation):
            self.ledger.release(reservation, now)
        call.reservation = None

    def _keep(self, call: Call, now: float) -> None:
        reservation = call.reservation
        if isinstance(reservation, Reservation):
            self.ledger.keep(reservation, now)
            usage = call.usage if call.usage is not None else {}
            call.usage = usage
            for resource, need in zip(self.resources, call.demand, strict=True):
                usage[resource.name] = usage.get(resource.name, 0.0) + need[0] + need[1]
        call.reservation = None

    def _cancelled(self, call: Call, now: float) -> None:
        self._keep(call, now)  # it may have reached the provider: stay conservative
        call.status = CANCELLED
        self._in_flight -= 1

    def _refuse(self, call: Call, now: float) -> None:
        """HTTP 429: the request was not billed, and the ledger believed in room the
        provider did not have: release it and correct the ledger (``Ledger.refused``)."""
        reservation = call.reservation
        if isinstance(reservation, Reservation):
            self.ledger.refused(reservation, now)
        call.reservation = None

    def _failed(
        self,
        call: Call,
        exc: BaseException,
        now: float,
        settled: bool = False,
        final: bool = False,
    ) -> None:
        refused = is_rate_limited(exc)
        if not settled and self._has_ledger:
            if refused:
                self._refuse(call, now)
            elif proves_not_billed(exc):
                self._release(call, now)
            elif isinstance(exc, StreamBrokenError) and exc.partial_result is not None:
                self._bill_results(call, exc.partial_result, now)  # what the stream used
            else:
                self._keep(call, now)
        _clear_frames(exc)
        call.exceptions.append(exc)
        stats = self.stats
        if refused:
            stats.rate_limited += 1
            pause = retry_after_seconds(exc)
            if pause is not None and now + pause > self._pause_until:
                self._pause_until = now + pause
                stats.cooldowns += 1
                if self.priorities is not None:
                    self.priorities.pause(self, self._pause_until)
                logger.info("HTTP 429: pausing every call for %.2f s (Retry-After)", pause)
        else:
            self._answered += 1
        retry = not final and isinstance(exc, Exception)
        if retry:
            try:
                retry = bool(self.retry_if(exc))
            except Exception:
                logger.exception("retry_if raised for %r; not retrying", call)
                retry = False
        if retry and not refused:  # 429s do not use up retries: the provider refused
            retry = _errors_counted(call) <= self.max_retries
        if retry and refused and self._out_of_patience(now):
            self._give_up(call, now)
            return
        if not retry:
            logger.debug("%r failed for good: %s", call, describe(exc, call))
            self._finish(call, FAILED, now)
            return
        stats.retries += 1
        self._in_flight -= 1
        call.status = PENDING
        # An invalid value waits only the backoff's first step: the API answered, so there is
        # nothing to back off from, but the pause lets other ready calls take their turn
        # instead of this one taking every free slot. Errors back off exponentially, and
        # the exponent counts errors only (invalid values before do not stretch it).
        if isinstance(exc, ValidationError):
            errors = 1
        else:
            errors = sum(1 for e in call.exceptions if not isinstance(e, _NOT_ERRORS))
        try:
            delay = float(self.backoff(errors, exc))
        except Exception:
            logger.exception("backoff raised for %r; retrying at once", call)
            delay = 0.0
        logger.debug("%r failed (%s); retry in %.2f s", call, describe(exc, call), delay)
        if delay > 0 and not self._stopping:
            self._backing_off += 1
            self.loop.call_at(now + delay, self._due, call, self._epoch, True)
        else:
            self._due(call, self._epoch)

    def _out_of_patience(self, now: float) -> bool:
        """Whether the attempts ending since ``rate_limit_patience`` s ago were all 429s."""
        if self._gave_up is not None:
            return True
        answers = self.stats.succeeded + self._answered
        if answers != self._answers_seen:
            self._answers_seen = answers
            self._streak_since = now  # something was answered since the last 429
        patience = self.rate_limit_patience
        return patience is not None and now - self._streak_since >= patience

    def _give_up(self, call: Call, now: float) -> None:
        """Nothing but 429s for ``rate_limit_patience`` s: ``call`` and every call still
        waiting fail with ``RateLimitedTooLongError`` (calls in flight end as they do)."""
        if self._gave_up is None:
            self._gave_up = RateLimitedTooLongError(
                f"the provider answered nothing but HTTP 429 for {self.rate_limit_patience:g} s "
                "(rate_limit_patience), so the run gave up on the calls still waiting: check "
                "the quotas given against the provider's limits (and whether something else "
                "uses the same key), then run() again."
            )
            logger.warning("%s", self._gave_up)
        waiting = [call]
        waiting += [c for c in self._ready if c.status is PENDING and c is not call]
        waiting += [entry[3] for entry in self._retry if entry[3].status is PENDING]
        waiting += [entry[3] for entry in self._urgent if entry[3].status is PENDING]
        self._ready.clear()
        self._retry.clear()
        self._urgent.clear()
        self._passed.clear()
        if self._lanes is not None:
            self._lanes.clear()
        for waiter in dict.fromkeys(waiting):
            waiter.exceptions.append(self._gave_up)
            if waiter is not call:
                self._in_flight += 1  # _finish counts it out
            self._finish(waiter, FAILED, now)

    def _due(self, call: Call, epoch: int, backed_off: bool = False) -> None:
        if backed_off and epoch == self._epoch:
            self._backing_off -= 1
        if epoch != self._epoch or self._stopping or self._done is None:
            return  # the next run() requeues it
        if call.status is not PENDING:
            return  # the next run() requeues it
        if self._gave_up is not None:
            call.exceptions.append(self._gave_up)
            self._in_flight += 1
            self._finish(call, FAILED, self.loop.time())
            return
        if call.priority:
            self._push_urgent(call)  # a retry keeps its priority
        else:
            self._retry_seq += 1
            heapq.heappush(self._retry, (call.failures, call.index, self._retry_seq, call))
        if self.is_async:
            self._start_runners()
        self._wake()

    def _finish(self, call: Call, status: Status, now: float) -> None:
        call.status = status
        call.finished_at = now
        call.reservation = None
        if self.store is not None and call.key is not None:
            self._save(call, now)
        self._in_flight -= 1
        stats = self.stats
        if status is SUCCEEDED:
            stats.succeeded += 1
        else:
            stats.failed += 1
        self._unfinished -= 1
        if self.final_listeners:
            for listener in self.final_listeners:
                listener(call)
        if self._followers:
            self._settle_followers(call, now)
        if self.semantic is not None:
            self._semantic_settled(call, now)
        if self._unfinished <= 0 and self._in_flight <= 0:
            self._resolve_done()
            self._wake()
        if self.progress is not None and now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self._report(self.progress.update, stats)

    def _settle_followers(self, leader: Call, now: float) -> None:
        """Calls with the leader's store key end as it did, without being sent."""
        for follower in self._followers.pop(leader, ()):
            follower.status = leader.status
            follower.result = leader.result
            follower.exceptions = list(leader._exceptions or ())
            follower.semantic = leader.semantic
            follower.finished_at = now
            if leader.status is SUCCEEDED:
                self.stats.succeeded += 1
            else:
                self.stats.failed += 1
            self._unfinished -= 1
            for listener in self.final_listeners:
                listener(follower)

    # -- the semantic cache ---------------------------------------------------------------
    async def _semantic_lookup(self, calls: Sequence[Call]) -> set[Call]:
        """Calls the semantic cache answers succeed now; returns those that wait for an
        earlier call of this run. A stop request cancels the lookup."""
        assert self.semantic is not None
        self._lookup = self.loop.create_task(self.semantic.lookup(calls, self.loop))
        try:
            await asyncio.wait((self._lookup,))
        finally:
            lookup, self._lookup = self._lookup, None
        if lookup.cancelled():
            self._stopping = True
            return set()
        return lookup.result()

    def _semantic_settled(self, call: Call, now: float) -> None:
        """The semantic cache indexes a paid-for success; the calls of this run that asked
        it in other words take its answer, or are sent after all if it failed."""
        assert self.semantic is not None
        answered, unanswered = self.semantic.settled(call)
        for follower in answered:
            follower.finished_at = now
            self.stats.succeeded += 1
            self._unfinished -= 1
            for listener in self.final_listeners:
                listener(follower)
            if self._followers:
                self._settle_followers(follower, now)
        for follower in unanswered:
            self._due(follower, self._epoch)

    # -- the store ---------------------------------------------------------------------------
    def _restore(self, calls: Sequence[Call]) -> None:
        """Outcomes stored by an earlier run (this process or another) replace calling."""
        assert self.store is not None
        wanted = [c for c in calls if c.key is not None and not c.status.is_final]
        if not wanted or self.refresh:
            return
        if any(c.status is RUNNING for c in wanted):
            wanted = [c for c in wanted if c.status is not RUNNING]
        stored = self.store.get_many([c.key for c in wanted])  # type: ignore[misc]
        if not stored:
            return
        from rate_limited.exceptions import CallError

        for call in wanted:
            record = stored.get(call.key)  # type: ignore[arg-type]
            if record is None:
                continue
            if record.status == "succeeded":
                call.result = record.result
                call.status = SUCCEEDED
            elif not self.retry_failed:
                call.status = FAILED
                earlier = redact(record.error or "unknown error")
                call.exceptions.append(CallError(f"failed in an earlier run: {earlier}"))
            else:
                continue  # failed before: try again
            call.from_store = True
            call.attempts = max(call.attempts, record.attempts)
            call.usage = dict(record.usage)

    def _save(self, call: Call, now: float) -> None:
        from rate_limited.stores import StoredOutcome

        assert self.store is not None and call.key is not None
        succeeded = call.status is SUCCEEDED
        error = call._exceptions[-1] if call._exceptions and not succeeded else None
        offset = self._wall_offset
        record = StoredOutcome(
            key=call.key,
            status="succeeded" if succeeded else "failed",
            result=call.result if succeeded else None,
            error=None if error is None else describe(error, call),
            attempts=call.attempts,
            usage=dict(call.usage or {}),
            started_at=None if call.started_at is None else call.started_at + offset,
            finished_at=now + offset,
            function=self.function_name,
        )
        try:
            self.store.put(record)
        except Exception as exc:  # unpicklable result, store closed: the call still succeeded
            self._store_failures += 1
            self._store_failed(describe(exc, call), f"could not store the outcome of {call!r}")
            return
        if not self._flush_scheduled:
            # Commit what settled in this pass of the loop, together, as soon as it ends:
            # a crash loses at most the outcomes of one pass, not a whole buffer.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_store)

    def _flush_store(self, final: bool = False) -> None:
        """Write the store's buffer; if it can't (disk full, Redis gone), try again after
        the store's backoff. ``final`` (the end of a run) tries at once, and counts the
        outcomes still unwritten as store failures of the run."""
        self._flush_scheduled = False
        store = self.store
        if store is None:
            return
        if self._flush_timer is not None:
            if not final:
                return  # a failed flush: the timer tries again after the store's backoff
            self._flush_timer.cancel()
            self._flush_timer = None
        try:
            if store.try_flush(force=final):
                return
        except Exception as exc:  # a store that breaks its contract: as if it failed
            self._store_failed(describe(exc), "could not write to the store")
            return
        error = store.flush_error
        self._store_failed(
            "unknown error" if error is None else describe(error),
            "could not write to the store (the outcomes are kept in memory and retried)",
        )
        if final:
            unreported = set(store.pending_keys()) - self._reported_unstored
            self._store_failures += len(unreported)
            self._reported_unstored |= unreported
        if self._flush_timer is None:
            self._flush_timer = self.loop.call_later(store.retry_in(), self._retry_flush)

    def _retry_flush(self) -> None:
        self._flush_timer = None
        self._flush_store()

    def _store_failed(self, reason: str, what: str) -> None:
        first = self._store_problem is None
        if first:
            self._store_problem = reason
        logger.log(logging.WARNING if first else logging.DEBUG, "%s: %s", what, reason)


def _admission(call: Call) -> Reservation | None:
    reservation = call.reservation
    return reservation if isinstance(reservation, Reservation) else None


def _errors_counted(call: Call) -> int:
    """Failed attempts that count against ``max_retries``: not 429s, nor usage errors."""
    return sum(
        1
        for e in call._exceptions or ()
        if not isinstance(e, UsageExtractionError) and not is_rate_limited(e)
    )


def _same_arguments(one: Call, other: Call) -> bool:
    try:
        return bool(one.args == other.args and dict(one.kwargs) == dict(other.kwargs))
    except Exception:  # arguments whose == raises: can't tell, don't warn
        return True


def _clear_frames(exc: BaseException) -> None:
    """Keep the exception and its traceback text, drop the frames' local variables."""
    tb = exc.__traceback__
    while tb is not None:
        with contextlib.suppress(RuntimeError):  # a frame still executing
            tb.tb_frame.clear()
        tb = tb.tb_next


class _StepTimer:
    """Awaits an awaitable step by step, timing each step: a step is the code that runs
    between two suspensions, and a long one blocked the loop. ``on_block(seconds)`` is
    called once, for the first step longer than ``_BLOCKING_SECONDS``."""

    __slots__ = ("_awaitable", "_on_block")

    def __init__(self, awaitable: Any, on_block: Callable[[float], None] | None) -> None:
        self._awaitable = awaitable
        self._on_block = on_block

    def __await__(self) -> Any:
        steps = self._awaitable.__await__()
        clock = time.perf_counter
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            began = clock()
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                self._check(clock() - began)
                return stop.value
            except BaseException:
                self._check(clock() - began)
                raise
            self._check(clock() - began)
            sent = thrown = None
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation and the like: pass them on
                thrown = exc

    def _check(self, seconds: float) -> None:
        if seconds > _BLOCKING_SECONDS and self._on_block is not None:
            on_block, self._on_block = self._on_block, None
            on_block(seconds)
