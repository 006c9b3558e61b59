"""Where a Runner's runs happen, and what their end hands back.

A Runner's engines run on its own loop thread (made by the first run, reused by every
later one, stopped by ``close()`` or the Runner's finalizer) or, with
``event_loop="current"`` and an async function called from a running loop, as a task on
the caller's loop. ``EngineHost`` (a base of ``Runner``) makes each engine and wires it
(a preset's ledger feedback, a shared ledger's wake-ups), submits a batch to it, and
turns the batch's end into the ``RunResult``: the calls scheduled after the engine had
finished carry over to the next batch, and the run's warnings are emitted in the thread
that asked for the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from rate_limited._engine import Engine
from rate_limited._feedback import FeedbackSource, LedgerControl
from rate_limited._gc import bulk_allocation
from rate_limited._loop_thread import LoopThread, shutdown
from rate_limited._status import RunnerState
from rate_limited.calls import Call
from rate_limited.exceptions import BudgetWarning, warn
from rate_limited.outcomes import RunResult, Status

if TYPE_CHECKING:
    from rate_limited._config import RunnerConfig
    from rate_limited._money import Money
    from rate_limited._priorities import Priorities
    from rate_limited._stats import Progress
    from rate_limited.ledgers.base import Ledger
    from rate_limited.semantic._step import SemanticStep

__all__ = ["EngineHost"]


class EngineHost:
    """The Runner's engines and its runs' ends (``Runner`` inherits these methods)."""

    config: RunnerConfig
    function: Callable[..., Any]
    logger: logging.Logger
    scheduled_calls: list[Call]
    last_result: RunResult | None
    _state: RunnerState
    _runs_on_loop: bool
    _money: Money
    _ledger: Ledger[Any]
    _priorities: Priorities
    _semantic: SemanticStep | None
    _function_identity: str
    _loop_thread: LoopThread | None
    _engine: Engine | None  # on the Runner's own loop thread
    _caller_engine: Engine | None  # event_loop="current"
    _active_engine: Engine | None  # the one the last run used
    _finalizer: weakref.finalize[Any, Any] | None

    def _set_state(self, state: RunnerState) -> None:
        raise NotImplementedError

    def _caller_loop(self) -> asyncio.AbstractEventLoop | None:
        """The caller's running loop, if the engine is to run on it."""
        if self.config.event_loop != "current" or not self._runs_on_loop:
            return None
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None  # a plain script: nothing is bound to a loop of its own

    def _engine_for(self, caller_loop: asyncio.AbstractEventLoop | None) -> Engine:
        if caller_loop is not None:
            import nest_asyncio

            nest_asyncio.apply(caller_loop)
            engine = self._caller_engine
            if engine is None or engine.loop is not caller_loop:
                engine = self._caller_engine = self._new_engine(caller_loop)
            return engine
        if self._loop_thread is None or self._engine is None:
            loop_thread = LoopThread(self.config.clock, name=f"rate_limited-{self.config.name}")
            self._loop_thread = loop_thread
            self._engine = self._new_engine(loop_thread.loop)
            self._finalizer = weakref.finalize(self, shutdown, loop_thread, self._engine)
            loop_thread.call_soon(self._priorities.join, self._engine)
        return self._engine

    def _submit(
        self,
        batch: Coroutine[Any, Any, tuple[bool, float]],
        caller_loop: asyncio.AbstractEventLoop | None,
    ) -> concurrent.futures.Future[tuple[bool, float]] | asyncio.Task[tuple[bool, float]]:
        if caller_loop is not None:
            return caller_loop.create_task(batch)
        assert self._loop_thread is not None
        return self._loop_thread.submit(batch)

    def _new_engine(self, loop: asyncio.AbstractEventLoop, online: bool = False) -> Engine:
        engine = Engine(
            self.config,
            loop,
            self._ledger,
            function_name=self._function_identity,
            semantic=None if online else self._semantic,
            spend=self._money.spend,
            escalate=None if self._money.ladder is None else self._money.escalate,
        )
        if isinstance(self.function, FeedbackSource):
            control = LedgerControl(
                engine.ledger, loop, wake=engine.wake, pause_until=engine.pause_until
            )
            self.function.attach_ledger(control)
        watch = getattr(self._ledger, "watch", None)
        if watch is not None:  # another process gave back what a waiting call needs
            watch(functools.partial(_wake_threadsafe, loop, engine))
        return engine

    async def _run_batch(
        self, engine: Engine, calls: list[Call], progress: Progress | None, run_id: int
    ) -> tuple[bool, float]:
        started = engine.loop.time()
        try:
            interrupted = await engine.run(calls, progress, run_id)
        finally:
            if self._state is RunnerState.RUNNING:
                self._set_state(RunnerState.IDLE)
        return interrupted, engine.loop.time() - started

    def _result(self, calls: list[Call], interrupted: bool, elapsed: float) -> RunResult:
        engine = self._active_engine
        budget = None
        if engine is not None and not interrupted:
            budget = self._money.stopped(engine.budget_stopped, calls, engine.loop.time())
        if budget is not None:
            # Stopped at the budget, the rest pending: the batch stays, run() goes on.
            warn(budget.message, BudgetWarning)
        elif interrupted:
            done = sum(1 for c in calls if c.status.is_final)
            running = sum(1 for c in calls if c.status is Status.RUNNING)
            self.logger.warning(
                "Interrupted: %d of %d calls finished%s; run() again to resume the rest.",
                done,
                len(calls),
                f" and {running} already sent are still running (their results will be "
                "kept; Ctrl-C again abandons them)"
                if running
                else "",
            )
        elif calls is self.scheduled_calls:
            # Complete: the next run() starts a new batch. Calls scheduled after the engine
            # had finished (a background run) were not part of this run: they carry over.
            ran = len(calls)
            while ran and calls[ran - 1].status is Status.PENDING and not calls[ran - 1].attempts:
                ran -= 1
            later = calls[ran:]
            for index, call in enumerate(later):
                call.index = index
            self.scheduled_calls = later
            calls = calls[:ran] if later else calls
        if not interrupted and budget is None:
            # Every call of the run is final: none needs the Runner to live any more, and
            # last_result (which holds them) must not make a reference cycle through it.
            Call.release_owners(calls)
        notices: list[tuple[type[Warning], str]] = []
        store_failures = 0
        if engine is not None:
            notices, store_failures = engine.take_notices()
        notices += self._money.take_notices()
        # Paused collector: 100k new lists would trigger full passes over every Call.
        with bulk_allocation(len(calls)):
            result = RunResult.from_calls(
                calls,
                interrupted=interrupted,
                elapsed=elapsed,
                resources=self.config.resources,
                started_at=None if engine is None else engine.stats.started_at,
                store_failures=store_failures,
                budget=budget,
            )
        for category, text in notices:
            warn(text, category)
        self.last_result = result
        return result


def _wake_threadsafe(loop: asyncio.AbstractEventLoop, engine: Engine) -> None:
    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
        loop.call_soon_threadsafe(engine.wake)
