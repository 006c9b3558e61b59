"""The scheduler: runs a batch of calls, admitting each against the ledger.

Everything here runs on the Runner's own event loop thread, so state needs no locks.
The engine is one object whose class is built in layers, each on the one below, read
bottom up:

* ``_core``: the state machine, where a call's status and every counter change;
* ``_settling``: an attempt's end: billed, validated, retried or final, the 429 cool-down;
* ``_admitting``: admission (``_admit``: the head call against the ledger and budget);
* ``_threads``: sync functions' calls (the dispatcher and its thread pool), and stopping;
* ``_workers``: async functions' calls (worker coroutines: a general loop, a fast one);
* this module: a run from start to end (``run``), stopping and abandoning it.

Beside them, the objects the engine holds: ``_admission`` (the ready queue, the retry
heap, the lanes of partitioned resources, the wake-up timer and the 429 cool-down),
``_checkpoint`` (the store: restore before a run, one leader per key, save and flush),
``_billing`` (a reservation settled on the ledger) and ``_claims`` (work sharing).

Admission is FIFO by schedule index: a retried call keeps its index and goes back ahead
of calls scheduled after it, and only the head call is ever tried against the ledger, so
no call starves. When the head does not fit, whoever tried arms one timer for the exact
time the ledger says it will fit (``Ledger.next_free_time``) and waits; a settling call or
a new one also wakes the waiters. Nothing polls. With partitioned resources (one quota per
model, say), a head call waiting for its own partition does not hold up calls of another
(``Admission.pass_head``).

How calls run depends on the function:

* async (a coroutine function): up to ``max_concurrent`` worker coroutines, each admitting
  the head call and awaiting it in place, so that an instant coroutine costs no task;
* sync: one dispatcher coroutine admits calls and hands them to ``ThreadPool``; threads
  report back in batches. A sync function that returns an awaitable (a lambda or partial
  around a coroutine function) has that awaitable awaited on the loop.

This is a departure from ARCHITECTURE.md's "one dispatcher starting a task per call" for
async functions: with no task per call the engine's overhead per call is a small fraction
of a task's, which the overhead benchmark needs; the admission rule is the same.

A sync call's arguments usage is held at admission and billed at the instant its thread
calls the function (``Ledger.begin``, with the time the thread read): a window then counts
from the moment the request really left, however late the thread took the call (a call
whose start and result reach the loop together is billed once, at its result, at most
5 ms after it started: see ``_threads``).

A run of many calls leaves the heap it starts with out of garbage collections
(``_gc.frozen_heap``): the scheduled Calls are most of it, and each full collection would
walk them all again while the run allocates.

Stopping (Ctrl-C, ``handle.stop()``) stops admission and ends the run at once: calls
already started (threads and coroutines alike) finish on this loop, their outcomes kept
and stored when they arrive, and the next run waits for them instead of sending them
again. ``abandon()`` (a second Ctrl-C, ``close()``) cancels the coroutines and stops
waiting for the threads. A stop requested before its run has started is kept for it.

Online calls (``Runner.call()``) run on a second engine of the Runner, sharing its
ledger (``rate_limited._online``): ``priorities`` arbitrates which engine's waiting head
takes freed quota, and ``withdraw`` takes back a call whose caller went away.
``final_listeners`` (``as_completed()``, online callers) hear of every call that ends,
including those already final when a run starts.

No error may hang a run: an exception of a call's function, extractor or validator
(``BaseException`` subclasses included) ends that call; an error of the engine itself (or
the system refusing a thread) ends the run, and ``run()`` raises it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._core import EngineParts, Notice
from rate_limited._gc import frozen_heap
from rate_limited._redact import get_logger
from rate_limited._stats import RunStats
from rate_limited._status import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED
from rate_limited._workers import Workers
from rate_limited.exceptions import StoreWarning, UsageWarning

if TYPE_CHECKING:
    from collections.abc import Callable

    from rate_limited._config import RunnerConfig
    from rate_limited._spend import SpendControl
    from rate_limited._stats import Progress
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Ledger
    from rate_limited.semantic._step import SemanticStep

__all__ = ["Engine"]

logger = get_logger("rate_limited")


class Engine(Workers):
    """Runs batches of calls; one per Runner (and loop), living on that loop's thread."""

    def __init__(
        self,
        config: RunnerConfig,
        loop: asyncio.AbstractEventLoop,
        ledger: Ledger[Any],
        *,
        function_name: str = "",
        semantic: SemanticStep | None = None,
        spend: SpendControl | None = None,
        escalate: Callable[[Call, BaseException], bool] | None = None,
    ) -> None:
        super().__init__(
            EngineParts(config, loop, ledger, function_name, semantic, spend, escalate)
        )
        #: The current run, and a stop requested for a run that has not started yet.
        self._run_id = 0
        self._stop_for = 0
        self._running_batch = False
        self._batch_len = 0
        self._ticker: asyncio.TimerHandle | None = None
        self._lookup: asyncio.Task[set[Call]] | None = None

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
        self.budget_stopped = None
        if self.spend is not None:
            self.spend.follow(loop.time())
        self.progress = progress
        self._epoch += 1
        self.admission.reset((), partitioned=False)
        if self.checkpoint is not None:
            self.checkpoint.begin(calls)
            earlier = self.checkpoint.earlier()
            if earlier:  # a fresh process resumes: what the one before drained still counts
                self.ledger.charge_earlier(earlier, loop.time())
        if self.claims is not None:
            self.claims.start(self.config.refresh)
        if run_id and self._stop_for == run_id:
            self._stopping = True  # stopped before it started: nothing is looked up or sent
        waiting: set[Call] = set()
        if self.semantic is not None and not self._stopping:
            waiting = await self._semantic_lookup(calls)
        if self._stopping:  # stopped before it started, or while the semantic cache looked up
            self.progress = None  # nothing was shown: nothing to finish on the display
            self._end_run()  # what was stored is committed, the claims state is reset
            return True
        ready, succeeded, failed = self._sort(calls, waiting)
        self.admission.reset(ready, partitioned=self.ledger.partitioned)
        self._gave_up = None
        self._batch_len = len(calls)
        self._unfinished = len(calls) - succeeded - failed
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
            if self._unfinished:
                self._done = loop.create_future()
                with frozen_heap(self._unfinished):  # the scheduled calls stay out of GC
                    self._start_runners()
                    await self._done
        except asyncio.CancelledError:
            self._stop()  # as an interrupt: calls already started go on
            raise
        finally:
            self._end_run()
        if self._fatal is not None:
            raise self._fatal
        if not self._stopping:
            await self._join_workers()  # they are returning: nothing is left to run
        return self._stopping

    def _sort(self, calls: Sequence[Call], waiting: set[Call]) -> tuple[list[Call], int, int]:
        """The calls to send, in schedule order, and how many are final already. A call
        that follows another with its store key, or waits for an earlier call the semantic
        cache matched it with, is not sent."""
        checkpoint = self.checkpoint
        if checkpoint is None and not waiting:
            # A fresh batch (the usual first run): every call pending, none final. One
            # comprehension tells, and is all the work (~250 instructions a call against
            # ~870 for the loop below, callgrind).
            ready = [call for call in calls if call.status is PENDING]
            if len(ready) == len(calls):
                return ready, 0, 0
        ready = []
        succeeded = failed = 0
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
            elif checkpoint is not None and checkpoint.follows(call):
                call.status = PENDING
            elif waiting and call in waiting:
                continue  # the semantic cache: it waits for an earlier call of this run
            elif status is not RUNNING:  # RUNNING: a sync call still in its thread
                call.status = PENDING
                ready.append(call)
        return ready, succeeded, failed

    def _end_run(self) -> None:
        self._done = None
        self.admission.cancel_timer()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        # Nothing of this run is needed any more; a Call held here would keep its Runner
        # alive (calls still running are held by their own worker or thread).
        self.admission.reset((), partitioned=False)
        if self.priorities is not None:
            self.priorities.idle(self)
        if self.checkpoint is not None:
            self.checkpoint.end()  # commits what is left: then the claims can go
        if self.claims is not None:
            self.claims.finish()
        if self.progress is not None:
            self._report(self.progress.finish, self.stats, self._stopping)
        self.progress = None

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

    def enqueue(self, call: Call) -> None:
        """A call scheduled while a run is going (loop thread)."""
        if self._done is None or self._stopping or call.index < self._batch_len:
            return  # the next run() picks it up, or this one already has
        self.admission.append(call)
        self._unfinished += 1
        self.stats.total += 1
        self._start_runners()
        self.admission.wake()

    def withdraw(self, call: Call) -> bool:
        """Withdraw a call not sent yet (its caller went away): it ends ``cancelled`` and
        holds nothing; a call following its store key is sent in its place. False if it
        is running or done, or no run is going (loop thread)."""
        if call.status is not PENDING or self._done is None:
            return False
        call.status = CANCELLED
        if self.checkpoint is not None:
            self.checkpoint.forget(call)
            followers = self.checkpoint.followers_of(call)
            if followers:  # the next call with its key leads, the others follow it
                leader, *rest = followers
                self.checkpoint.lead(leader, rest)
                self._due(leader, self._epoch)
        self._unfinished -= 1
        self.stats.total -= 1
        if self._unfinished <= 0 and self._in_flight <= 0:
            self._resolve_done()
        self.admission.wake()
        return True

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

    # -- stopping ----------------------------------------------------------------------------
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

    def abandon(self) -> int:
        """Stop waiting for the calls still running (a second Ctrl-C, ``close()``): their
        coroutines are cancelled, sync calls are left to their threads (a late result is
        still kept). They end ``cancelled`` (a rerun sends them again; what they may have
        used stays billed). Returns how many there were (loop thread)."""
        count = self.running_calls
        if not count:
            return 0
        self._stopping = True
        self._abandon_threads()
        for task in (*self._workers, *self._awaiting):
            task.cancel()
        self._resolve_done()
        self.admission.wake()
        logger.warning("Abandoned %d calls that were still running", count)
        return count

    async def abandon_and_wait(self) -> int:
        """``abandon()``, then wait until the cancelled coroutines have ended."""
        tasks = [*self._workers, *self._awaiting]
        count = self.abandon()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return count

    async def _join_workers(self) -> None:
        workers = [*self._workers, *self._awaiting]
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    def take_notices(self) -> tuple[list[Notice], int]:
        """The warnings due since the last call (for the thread that called ``run()`` to
        emit), and how many outcomes could not be stored meanwhile."""
        notices, self._notices = self._notices, []
        store_failures = 0
        if self.checkpoint is not None:
            store_failures, text = self.checkpoint.take_failures()
            claims = None if self.claims is None else self.claims.take_problem()
            if text is not None or claims is not None:  # one StoreWarning says it all
                notices.append((StoreWarning, " ".join(t for t in (text, claims) if t)))
        take_ledger_notices = getattr(self.ledger, "take_notices", None)
        if take_ledger_notices is not None:  # a shared ledger lost (and found) its server
            notices += take_ledger_notices()
        usage_text = self.billing.take_problems()
        if usage_text is not None:
            notices.append((UsageWarning, usage_text))
        return notices, store_failures

    # -- admission ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Let waiting admission look again (capacity may have changed)."""
        self.admission.wake()

    def pause_until(self, when: float) -> None:
        """Admit nothing before ``when`` (loop time); extends, never shortens, a pause."""
        if self.admission.pause(when):
            self.stats.cooldowns += 1
        self.admission.wake()
