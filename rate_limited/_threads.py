"""Sync functions' calls, and stopping a run: the layer of the engine below the async
workers (``rate_limited._workers``) and above admission (``rate_limited._admitting``).

One dispatcher admits calls and hands them to ``ThreadPool``; threads report back in
batches (``_on_completions``), including the moment each started the call, so its
arguments usage is billed then (``Ledger.begin``). A call whose start and result come in
one batch within ``BILLED_LATE_AT_MOST`` (a quick function) is billed once, at the
result: at most 5 ms late, which only ever counts it against a window a little longer,
and saves a ledger round per call. A result that comes after the engine stopped waiting
for it (a timeout, an abandoned call) was paid for: ``_late`` keeps it if the call has
no value yet. Stopping a run (``_stop``) takes back the calls the pool has not started.

Every status and counter change goes through ``EngineCore``'s transitions.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rate_limited._admitting import Admitter
from rate_limited._billing import reservation_of
from rate_limited._core import EngineParts
from rate_limited._feedback import CURRENT_ADMISSION, FeedbackSource
from rate_limited._loopwatch import NOT_AWAITABLE, is_async_callable, is_awaitable
from rate_limited._policy import validate
from rate_limited._pool import ThreadPool
from rate_limited._redact import get_logger
from rate_limited._status import RUNNING, SUCCEEDED
from rate_limited.exceptions import CallTimeoutError, RateLimitedWarning

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = ["BILLED_LATE_AT_MOST", "Threads"]

logger = get_logger("rate_limited")

#: A sync call whose start and result reach the loop in one batch, at most this many
#: seconds apart, is billed once, when it settles: up to this much later than it started.
BILLED_LATE_AT_MOST = 0.005


class Threads(Admitter):
    """Sync calls in threads, and stopping a run (loop thread)."""

    def __init__(self, parts: EngineParts) -> None:
        super().__init__(parts)
        self.is_async = is_async_callable(self.function)
        #: An error of the engine itself: it ends the run and run() raises it.
        self._fatal: BaseException | None = None
        self._awaiting: set[asyncio.Task[None]] = set()  # awaitables from sync functions
        self._in_threads: set[Call] = set()  # sync calls handed to the pool, not settled
        self._warned_threads = False
        #: Sync calls hold their arguments usage until their thread starts (see begin()).
        self._defer_billing = not self.is_async and self._has_ledger
        #: Whether each attempt's reservation goes in its context (``CURRENT_ADMISSION``):
        #: only a function that reports the provider's headers reads it, and the Runner
        #: attaches the ledger to such a function alone (``FeedbackSource``).
        self._sets_admission = self._has_ledger and isinstance(self.function, FeedbackSource)
        self.pool: ThreadPool | None = None
        if not self.is_async:
            self.pool = ThreadPool(
                self.function,
                parts.loop,
                self._on_completions,
                self.max_concurrent,
                name=f"rate_limited-{parts.config.name}",
                report_starts=self._defer_billing,
                sets_admission=self._sets_admission,
            )

    def _stop(self) -> None:
        """Admit nothing more and end the run; calls already started go on."""
        self._stopping = True
        if self.pool is not None:
            now = self.loop.time()
            for call, token in self.pool.take_back():
                if call.attempts == token and call.status is RUNNING:
                    self._in_threads.discard(call)
                    self._unstart(call, now)  # never started
        self._resolve_done()
        self.admission.wake()

    def _abandon_threads(self) -> None:
        """Stop waiting for the sync calls running in threads (their late results are
        still kept): they end cancelled."""
        now = self.loop.time()
        for call in list(self._in_threads):
            if call.status is RUNNING:
                self._in_threads.discard(call)
                assert self.pool is not None
                self.pool.abandoned += 1  # its thread no longer counts
                self._cancelled(call, now)

    def _crash(self, exc: BaseException) -> None:
        """An error of the engine itself, not of a call: the run ends and raises it."""
        logger.error("Internal error; the run ends with it", exc_info=exc)
        if self._fatal is None and self._done is not None:
            self._fatal = exc
        if self._done is not None and not self._done.done():
            self._stop()

    # -- the dispatcher and the pool's reports ------------------------------------------------
    async def _dispatch(self) -> None:
        pool, timeout, loop = self.pool, self.timeout, self.loop
        assert pool is not None
        now = loop.time()  # one read per burst of admissions: they start together
        while True:
            call = self._admit()
            if call is None:
                if self._unfinished <= 0 or self._stopping or self._budget_done:
                    return
                await self.admission.wait()
                now = loop.time()
                continue
            self._start_attempt(call, now)
            try:
                pool.submit(call, call.attempts)
            except RuntimeError as exc:  # not a single thread could be started
                self._unstart(call, now)
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
        threads = pool.thread_count
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
            started_now: list[tuple[Call, float]] = []
            for call, token, ok, value in pool.drain():
                current = token == call.attempts
                if ok is None:  # a thread starts it: bill its arguments usage then
                    if current and call.status is RUNNING:
                        started = call.started_at = min(value, now)
                        if now - started > BILLED_LATE_AT_MOST:
                            self.billing.begin(call, started)
                        else:  # unless it settles in this batch (see the module docstring)
                            started_now.append((call, started))
                    continue
                if current:
                    self._in_threads.discard(call)
                if not current or call.status is not RUNNING:
                    pool.abandoned = max(0, pool.abandoned - 1)
                    self._late(call, ok, value)
                elif ok and type(value) not in NOT_AWAITABLE and is_awaitable(value):
                    task = self.loop.create_task(self._await_returned(call, value))
                    self._awaiting.add(task)
                    task.add_done_callback(self._awaiting.discard)
                elif ok:
                    self._settle(self._returned, call, value, now)
                else:
                    self._settle(self._failed, call, value, now)
            for call, started in started_now:
                if call.status is RUNNING and call.reservation is not None:
                    self.billing.begin(call, started)  # still running
        except BaseException as exc:  # never leave completions unsettled and run() waiting
            self._crash(exc)
        self.admission.wake()

    async def _await_returned(self, call: Call, awaitable: Any) -> None:
        if self._sets_admission:
            CURRENT_ADMISSION.set(reservation_of(call))
        try:
            value = await awaitable
        except asyncio.CancelledError:
            self._cancelled(call, self.loop.time())
            raise
        except BaseException as exc:
            self._settle(self._failed, call, exc, self.loop.time())
        else:
            self._settle(self._returned, call, value, self.loop.time())
        self.admission.wake()

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
        self.admission.wake()

    def _late(self, call: Call, ok: bool | None, value: Any) -> None:
        """A thread finished an attempt the engine had stopped waiting for (a timeout, an
        abandoned call). A value it returned was paid for: it is kept, unless the call
        has a value already or another attempt is running; even a call that failed for
        good after the timeout succeeds with it."""
        if not ok or call.status is SUCCEEDED or call.status is RUNNING:
            return  # a failure we already counted, or another attempt is running / won
        if is_awaitable(value):
            return  # not worth resurrecting: the retry will run it again
        if self.validators and validate(value, self.validators)[0]:
            return  # an invalid value: the call stays as it is
        logger.info("Keeping the late result of %r after its timeout", call)
        self._reopen(call)
        self._settle(self._validated, call, value, self.loop.time())
