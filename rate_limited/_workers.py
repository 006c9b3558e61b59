"""Running the admitted calls of an async function: up to ``max_concurrent`` worker
coroutines, each admitting the head call (``_admit``, ``rate_limited._admitting``) and
awaiting it in place (no task per call). The first calls, then one in ``WATCH_EVERY``,
are timed step by step to catch a function that blocks the loop. Sync functions' calls
go to the dispatcher and its thread pool (``rate_limited._threads``, the layer below).

Two loops: ``_work``, the general one, and ``_work_fast``, the usual case of the same
steps written out for an engine with nothing but the ledger to ask (see its docstring).
Every status and counter change goes through ``EngineCore``'s transitions (or, in
``_work_fast``, their written-out copy).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rate_limited._core import EngineParts
from rate_limited._feedback import CURRENT_ADMISSION
from rate_limited._loopwatch import WATCH_EVERY, WATCH_FIRST, StepTimer, blocking_message
from rate_limited._redact import get_logger
from rate_limited._status import RUNNING, SUCCEEDED
from rate_limited._threads import Threads
from rate_limited.exceptions import BlockingCallWarning, CallTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rate_limited.calls import Call

__all__ = ["Workers"]

logger = get_logger("rate_limited")

#: An instant coroutine never yields; yield to the loop every this many calls anyway, so
#: that an interrupt or a progress update gets through.
_YIELD_EVERY = 512


class Workers(Threads):
    """The workers of one engine (loop thread)."""

    def __init__(self, parts: EngineParts) -> None:
        super().__init__(parts)
        self._workers: set[asyncio.Task[None]] = set()
        self._watched = 0  # async calls watched for blocking the loop
        self._timed = 0  # those of them timed step by step (StepTimer)
        self._blocking_calls = 0  # and those of them that blocked
        self._warned_blocking = False
        #: Whether the async workers take ``_work_fast`` (fixed for the engine's life):
        #: nothing to ask at admission but the ledger, and nothing to do when an attempt
        #: returns but bill it. A validator, a timeout, a store (its checkpoint, work
        #: sharing), a budget or escalation, or the semantic cache take ``_work``.
        self._fast = (
            self.is_async
            and not self.validators
            and self.timeout is None
            and self.store is None
            and self.checkpoint is None
            and self.claims is None
            and self.spend is None
            and self.escalate is None
            and self.semantic is None
        )

    def _start_runners(self) -> None:
        """Enough workers for the calls waiting. Async: each call in flight is awaited in
        place by a worker, so one worker per call in flight (calls of an interrupted run
        still going) and one per call waiting, up to ``max_concurrent``; sync: one
        dispatcher. ``_workers`` holds the live ones only (see ``_guarded``)."""
        if self.is_async:
            wanted = min(self.max_concurrent, self.running_calls + len(self.admission))
            work = self._work_fast if self._fast else self._work
            while len(self._workers) < wanted:
                self._spawn(work)
        elif not self._workers:
            self._spawn(self._dispatch)

    def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        task = self.loop.create_task(self._guarded(work))
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)  # one cancelled before it ever ran

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run a worker or the dispatcher; an error in them (a bug of the engine, the
        system refusing a thread) ends the run instead of hanging it.

        A worker leaves ``_workers`` in the step it returns in, not one loop iteration
        later (its done callback): after a Ctrl-C the workers of the stopped run return
        as their calls end, and a run started in between (``run()`` again at once) would
        count them, start none, and wait for ever."""
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._crash(exc)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._workers.discard(task)

    # -- async functions ---------------------------------------------------------------------
    def _blocked(self, seconds: float) -> None:
        """A watched call blocked the loop. Once may be a one-time set-up in the first call
        (a client building its headers, a tokenizer loading); twice is a habit, if at least
        half the calls timed so far did: a blocking client blocks every call, while a busy
        machine that took the CPU away in the middle of a step does so now and then."""
        self._blocking_calls += 1
        if self._warned_blocking or self._blocking_calls < 2:
            return
        if self._blocking_calls * 2 < self._timed:
            return
        self._warned_blocking = True
        text = blocking_message(self.function_name or repr(self.function), seconds)
        logger.warning(text)
        self._notices.append((BlockingCallWarning, text))

    def _attempt_cancelled(self, call: Call, now: float) -> bool:
        """The worker awaiting ``call`` was cancelled. The run is stopping: the call ends
        cancelled and True (the worker re-raises). Else the cancellation came from inside
        the call: its attempt failed with it, as with any error."""
        if self._stopping:
            self._cancelled(call, now)
            return True
        self._settle(self._failed, call, asyncio.CancelledError("the call was cancelled"), now)
        return False

    async def _work(self) -> None:
        """An async worker: admit the head call, await it in place, settle it; again."""
        function, timeout, loop_time = self.function, self.timeout, self.clock
        admission = self.admission
        checkpoint = self.checkpoint
        sets_admission = self._sets_admission
        since_yield = 0
        now = loop_time()  # read once per call; the next call starts when this one ended
        while True:
            if checkpoint is not None and checkpoint.flush_pending:
                # Let the store commit what just settled before this worker sends another
                # request: a crash then loses at most the calls in flight.
                await asyncio.sleep(0)
                now = loop_time()
            call = self._admit()
            if call is None:
                if self._unfinished <= 0 or self._stopping or self._budget_done:
                    return
                await admission.wait()
                since_yield = 0
                now = loop_time()
                continue
            if admission.wake_future is not None and admission:
                admission.wake()  # capacity may fit more than this call: let idle workers try
            self._start_attempt(call, now)
            if sets_admission:
                CURRENT_ADMISSION.set(call.reservation)  # type: ignore[arg-type]  # feedback
            try:
                kwargs = call.kwargs  # none, usually: then no empty dict is built per call
                awaitable = function(*call.args, **kwargs) if kwargs else function(*call.args)
                # The first calls, then one in WATCH_EVERY, are timed step by step: a long
                # step blocked the loop (see _blocked).
                watched = self._watched = self._watched + 1
                if (watched <= WATCH_FIRST or not watched % WATCH_EVERY) and (
                    not self._warned_blocking
                ):
                    awaitable = StepTimer(awaitable, self._blocked)
                    self._timed += 1
                if timeout is None:
                    value = await awaitable
                else:
                    value = await asyncio.wait_for(awaitable, timeout)
            except asyncio.CancelledError:
                now = loop_time()
                if self._attempt_cancelled(call, now):
                    raise
            except BaseException as exc:
                now = loop_time()
                if timeout is not None and isinstance(exc, TimeoutError | asyncio.TimeoutError):
                    error = CallTimeoutError(f"the call took longer than timeout={timeout} s")
                    error.__cause__ = exc
                    exc = error
                self._settle(self._failed, call, exc, now)
            else:
                now = loop_time()
                try:  # self._settle(self._returned, ...), one call less per call
                    self._returned(call, value, now)
                except BaseException as exc:
                    self._settle_failed(call, exc, now)
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                now = loop_time()

    async def _work_fast(self) -> None:
        """``_work`` for an engine with nothing but the ledger to ask (see ``_fast``): the
        same steps, with the usual case of each written out in this one loop, because
        for a quick call they are most of its cost (measured: a realistic call, two
        resources, 62k instructions with the steps as calls, 57k written out; see
        benchmarks/RESULTS.md "Overhead"). Written out, in order:

        * admission: ``_admit``'s first branch (the head call, the cool-down, the ledger);
        * ``EngineCore._start_attempt``;
        * an attempt that returned: ``Settling._returned`` without validators, then
          ``EngineCore._finish`` (with ``_out_of_flight`` and ``_end_with``) for an
          engine without a store or a semantic cache.

        Whatever else happens goes the general way, through the same methods as
        ``_work``: a call the head may not take now (another engine outranks it, a lane,
        a wait), an attempt that raised, a settle step that raised. A change to one of
        the steps above is a change here too; ``tests/test_workers.py`` runs both workers
        on the same calls and compares every call and counter.
        """
        function, loop_time = self.function, self.clock
        admission, billing = self.admission, self.billing
        reserve = billing.per_call.try_reserve if self._has_ledger else None
        sets_admission = self._sets_admission
        since_yield = 0
        # Without a ledger a call starts when the one before it ended (one clock read, and
        # one float, per call; calls start and end in the same instants as in ``_work``);
        # a reservation is made at a fresh reading, so that a window counts from then.
        now = loop_time()
        while True:
            # -- admission: _admit's first branch
            call = None
            if (
                not self._stopping
                and self._in_flight < self.max_concurrent
                and self.priorities is None
            ):
                call = admission.simple_head()
                if call is not None:
                    if reserve is not None:
                        now = loop_time()
                    if now < admission.paused_until:
                        admission.put_back(call)
                        call = None
                    elif reserve is not None:
                        try:
                            reservation = reserve(call.demand, now)
                        except BaseException:
                            admission.put_back(call)
                            raise
                        if reservation is None:
                            admission.put_back(call)  # it waits: the general path says how
                            call = None
                        else:
                            call.reservation = reservation
                            if self.stats.waiting_until is not None:
                                self._note_wait(None, None, now)
            if call is None:
                call = self._admit_general()  # the usual case was just tried, above
                if call is None:
                    if self._unfinished <= 0 or self._stopping or self._budget_done:
                        return
                    await admission.wait()
                    since_yield = 0
                    now = loop_time()
                    continue
                now = loop_time()
                if admission.wake_future is not None and admission:
                    admission.wake()  # capacity may fit more than this call: let idle workers try
            # -- _start_attempt
            self._in_flight += 1
            call.status = RUNNING
            call.attempts += 1
            call.started_at = now
            if sets_admission:
                CURRENT_ADMISSION.set(call.reservation)  # type: ignore[arg-type]  # feedback
            try:
                kwargs = call.kwargs
                awaitable = function(*call.args, **kwargs) if kwargs else function(*call.args)
                watched = self._watched = self._watched + 1  # see _work
                if (watched <= WATCH_FIRST or not watched % WATCH_EVERY) and (
                    not self._warned_blocking
                ):
                    awaitable = StepTimer(awaitable, self._blocked)
                    self._timed += 1
                value = await awaitable
            except asyncio.CancelledError:
                now = loop_time()
                if self._attempt_cancelled(call, now):
                    raise
            except BaseException as exc:
                now = loop_time()
                self._settle(self._failed, call, exc, now)
            else:
                now = loop_time()
                try:
                    # -- _returned, no validators
                    if reserve is not None:
                        first_token = billing.results(call, value, now)
                        if first_token is not None:
                            self._first_token(first_token)
                    call.result = value
                    # -- _finish(call, SUCCEEDED, now), no store, no semantic cache
                    call.status = SUCCEEDED
                    call.finished_at = now  # (no reservation left: billing.results took it)
                    in_flight = self._in_flight = self._in_flight - 1
                    if in_flight <= 0 and self._idle is not None:
                        self._now_idle()
                    self.stats.succeeded += 1
                    unfinished = self._unfinished = self._unfinished - 1
                    for listener in self.final_listeners:
                        listener(call)
                    if unfinished <= 0 and self._in_flight <= 0:
                        self._resolve_done()
                        admission.wake()
                    progress = self.progress
                    if progress is not None and now >= self._next_progress:
                        self._next_progress = now + self.progress_interval
                        self._report(progress.update, self.stats)
                except BaseException as exc:
                    self._settle_failed(call, exc, now)
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                now = loop_time()
