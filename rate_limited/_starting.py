"""Starting a run: ``start()``, the one start path (``run()``, ``run_coro()``,
``as_completed()`` and ``apply()`` all go through it), and what a run shows meanwhile.

``start()`` picks the engine (the Runner's loop thread, or the caller's loop with
``event_loop="current"``), moves the Runner to ``RUNNING`` under a lock (two threads
starting at once: one run, one ``RunnerBusyError``), builds the progress display in
the caller's thread (a notebook display lands in its cell), submits the batch and
returns a ``RunHandle`` wired to stop, abandon and finish that run alone (runs are
numbered, so a late stop does not reach the next one). ``as_completed()`` starts a run
or joins the one going; ``snapshot()`` reads the current batch from any thread.

``RunStarter`` is a base of ``Runner`` (``rate_limited.runner``); it declares the
attributes of the Runner it reads, so it does not import ``runner``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from typing import Any

from rate_limited._completed import AsCompleted, Subscribe, subscriber
from rate_limited._runs import EngineHost
from rate_limited._status import RunnerState
from rate_limited.exceptions import ReentrantRunError
from rate_limited.handle import RunHandle
from rate_limited.outcomes import RunResult
from rate_limited.progress import make_progress

__all__ = ["RunStarter"]


class RunStarter(EngineHost):
    """``start()`` and what reads a run as it goes (``Runner`` inherits these methods)."""

    _start_lock: threading.Lock
    _listeners_lock: threading.Lock
    _run_seq: int
    _active_future: concurrent.futures.Future[Any] | asyncio.Task[Any] | None
    _active_handle: weakref.ref[RunHandle] | None

    def start(self) -> RunHandle:
        """Start running the scheduled calls in the background and return at once.

        ``handle.result()`` blocks for the RunResult, ``await handle`` awaits it,
        ``handle.stop()`` stops and returns the partial result, ``handle.snapshot()``
        shows what has finished so far. Calls scheduled meanwhile join the run.

        The engine runs on the Runner's own loop thread, or (``event_loop="current"``,
        an async function, called from a running loop) as a task on the caller's loop,
        made re-entrant with nest_asyncio so async clients bound to that loop work.
        """
        caller_loop = self._caller_loop()
        loop_thread = self._loop_thread
        if loop_thread is not None and threading.current_thread() is loop_thread.thread:
            raise ReentrantRunError(
                "run() was called from inside the Runner's own loop (from the function it "
                "runs); schedule() more calls instead, they join the current run."
            )
        with self._start_lock:  # two threads calling run() at once: one run, one error
            self._state.check_can_start()
            engine = self._engine_for(caller_loop)
            self._set_state(RunnerState.RUNNING)
            self._active_engine = engine
            self._run_seq += 1
            run_id = self._run_seq
        calls = self.scheduled_calls
        loop = engine.loop
        try:
            # Built here, in the caller's thread: a notebook display lands in its cell.
            progress = make_progress(self.config.progress)
            batch = self._run_batch(engine, calls, progress, run_id)
            future = self._submit(batch, caller_loop)
        except BaseException:
            self._set_state(RunnerState.IDLE)  # once submitted, only the batch says it ended
            raise
        self._active_future = future

        def request_stop() -> None:
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                loop.call_soon_threadsafe(engine.request_stop, run_id)

        def request_abandon() -> concurrent.futures.Future[int]:
            return asyncio.run_coroutine_threadsafe(engine.abandon_and_wait(), loop)

        handle = RunHandle(
            future,
            calls,
            request_stop=request_stop,
            finish=self._result,
            snapshot=self.snapshot,
            request_abandon=request_abandon,
            urgent=getattr(engine.ledger, "take_notices", None),
        )
        handle._subscribe = subscriber(engine, self._listeners_lock)
        self._active_handle = weakref.ref(handle)
        return handle

    def as_completed(self) -> AsCompleted:
        """The outcomes of a run as its calls finish: ``for outcome in
        runner.as_completed():`` (or ``async for`` in async code).

        Iterating starts the run (or joins the one ``start()`` started); the calls already
        final come first (from an interrupted run, or the store), then each call the moment
        it ends, every call once. Ctrl-C works as in ``run()``: the run stops and the loop
        ends after what has finished; leaving the loop early stops a run it started.
        Afterwards ``.result`` is the RunResult ``run()`` would have returned.
        """
        handle = None if self._active_handle is None else self._active_handle()
        if self._state is RunnerState.RUNNING and handle is not None and not handle.done():
            return handle.as_completed()

        def start() -> tuple[RunHandle, Subscribe]:
            handle = self.start()
            assert handle._subscribe is not None
            return handle, handle._subscribe

        return AsCompleted(start, owns_run=True)

    def snapshot(self) -> RunResult:
        """The current batch at once, readable while a run is going (from any thread):
        what has finished so far, in schedule order."""
        calls = list(self.scheduled_calls)
        engine = self._active_engine
        return RunResult.from_calls(
            calls,
            interrupted=not all(c.status.is_final for c in calls),
            resources=self.config.resources,
            started_at=None if engine is None else engine.stats.started_at,
            copy=True,
        )
