"""Online calls: ``await runner.call(...)`` through the same quotas as the batch.

A service answers requests one at a time while a nightly batch runs on the same API key.
Both must go through one ledger, or together they overrun the quota; and a request a
user is waiting for must not queue behind ten thousand batch calls.

``OnlineCalls`` gives the online calls an ``Engine`` of their own on the Runner's loop
thread, sharing the Runner's ledger: they get everything a batch call gets (admission,
billing by the provider's rule, 429 cool-downs, retries, validation, timeouts, the store)
without joining the batch's results. The engine runs while online calls are unfinished
and starts again with the next one. Concurrency is per engine (each has its own
``max_concurrent``); the quotas are shared.

``Priorities`` (``rate_limited._priorities``) arbitrates between the engines of one
Runner: an engine whose head call is outranked (a higher ``priority``) by another
engine's head waiting for the same quota does not take that quota, so the waiting call
gets the capacity as soon as it frees; wake-ups and 429 cool-downs reach every engine.
Online calls (priority 1 by default) thus go ahead of the batch's waiting calls (0) and
never starve behind them; the batch gets whatever they leave.

A caller that goes away (an HTTP client that disconnects cancels the awaiting task)
withdraws its call: not yet sent, it ends ``cancelled`` and its reservation is released;
already sent, it finishes (the provider bills it whatever we do) and its usage is billed,
its result dropped (or stored, with a store).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any

from rate_limited._demand import demand_of
from rate_limited._runs import EngineHost
from rate_limited._scheduling import key_of, pop_priority
from rate_limited._status import RunnerState
from rate_limited.calls import Call, CallOwner
from rate_limited.exceptions import (
    BudgetExhaustedError,
    CallError,
    RateLimitedWarning,
    ReentrantRunError,
    RunnerClosedError,
    warn,
)
from rate_limited.outcomes import Status

if TYPE_CHECKING:
    from rate_limited._demand import Extractors
    from rate_limited._engine import Engine
    from rate_limited.stores.base import Store

__all__ = ["ONLINE_PRIORITY", "OnlineCaller", "OnlineCalls"]

#: The priority of ``Runner.call()`` unless given: above the batch's default of 0.
ONLINE_PRIORITY = 1

_UNFINISHED = (Status.PENDING, Status.RUNNING)


class OnlineCalls:
    """The online calls of one Runner, run by their own engine (on its loop thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.final_listeners = (*engine.final_listeners, self._settled)
        self._waiters: dict[Call, asyncio.Future[None]] = {}
        self._unfinished: dict[Call, None] = {}  # submitted, not final (in order)
        self._serving: asyncio.Task[None] | None = None
        self._seq = 0
        self._closed = False

    async def call(self, call: Call) -> Any:
        """Run ``call`` and return its value, or raise its last error (on the loop thread).

        Cancelling the awaiting task withdraws the call (see the module docstring)."""
        if self._closed:
            raise RunnerClosedError("This Runner was closed; create a new Runner to call.")
        engine = self.engine
        done: asyncio.Future[None] = engine.loop.create_future()
        self._waiters[call] = done
        self._seq += 1
        call.index = self._seq  # above every index of the engine's current run
        self._unfinished[call] = None
        if self._serving is None:
            self._serving = engine.loop.create_task(self._serve())
        else:
            engine.enqueue(call)  # a run that is ending leaves it to the next one
        try:
            await done
        except asyncio.CancelledError:
            self._waiters.pop(call, None)
            if call.status is Status.PENDING:  # not sent: nothing is held for it any more
                if not engine.withdraw(call):  # its run has not started yet
                    call.status = Status.CANCELLED
                self._unfinished.pop(call, None)
            raise
        if call.status is Status.SUCCEEDED:
            return call.result
        errors = call.exception_history
        if errors:
            raise errors[-1]
        raise CallError(f"{call!r} ended {call.status.value} without an exception")

    def _settled(self, call: Call) -> None:
        """A final listener of the engine: the caller of ``call`` gets its outcome."""
        self._unfinished.pop(call, None)
        waiter = self._waiters.pop(call, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _serve(self) -> None:
        """Run the engine while online calls are unfinished."""
        engine = self.engine
        try:
            while not self._closed:
                calls = [c for c in self._unfinished if c.status in _UNFINISHED]
                if not calls:
                    return
                await engine.run(calls, None)
                if engine.budget_stopped is not None:  # the calls not sent can't be, now
                    self._fail_waiting(
                        BudgetExhaustedError(
                            "The Runner's budget could not admit this call (spent plus "
                            "reserved would pass it); raise budget.usd to call again."
                        )
                    )
        except BaseException as exc:  # an error of the engine itself: every caller gets it
            self._fail_waiting(exc)
            raise
        finally:
            self._serving = None
            if self._closed:
                self._fail_waiting(
                    RunnerClosedError("The Runner was closed before the call was sent.")
                )

    def _fail_waiting(self, error: BaseException) -> None:
        for call, waiter in list(self._waiters.items()):
            if call.status is not Status.RUNNING and not waiter.done():
                self._waiters.pop(call, None)
                self._unfinished.pop(call, None)
                waiter.set_exception(error)

    async def close(self) -> int:
        """Stop: calls not sent fail with ``RunnerClosedError``, coroutines still running
        are cancelled (threads left to finish). Returns how many were abandoned."""
        self._closed = True
        engine = self.engine
        engine.request_stop()
        self._fail_waiting(RunnerClosedError("The Runner was closed before the call was sent."))
        abandoned = await engine.abandon_and_wait()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(RunnerClosedError("The Runner was closed during the call."))
        self._waiters.clear()
        if engine.pool is not None:
            engine.pool.shutdown(wait=1.0)
        return abandoned

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._unfinished)} unfinished"
        return f"<OnlineCalls ({state})>"


class OnlineCaller(EngineHost, CallOwner):
    """The Runner's online calls (``call``, ``call_sync``): what a Runner has that they use,
    and the methods (the Runner inherits them)."""

    store: Store | None
    _extractors: Extractors
    _takes_priority: bool
    _start_lock: threading.Lock
    _online: OnlineCalls | None

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run one call now and return its value: ``await runner.call(x, y=1)`` where you
        would ``await f(x, y=1)`` (or call ``f``, for a sync function).

        The call goes through the same quotas as the batch (running or not), billed by the
        same rules, with the same retries, validation and timeouts; it raises the last
        error if it fails for good. ``priority=`` (default 1) puts it ahead of waiting
        calls of a lower priority (the batch's are 0 unless scheduled otherwise).
        Cancelling the awaiting task (a client that disconnects) withdraws the call: if it
        was not sent yet its reservation is released, else it finishes and is billed.
        Online calls run on the Runner's own loop thread (``event_loop="current"`` is for
        batch runs), in an engine of their own with its own ``max_concurrent`` slots.
        """
        online, call = self._online_call(args, kwargs)
        future = asyncio.run_coroutine_threadsafe(online.call(call), online.engine.loop)
        return await asyncio.wrap_future(future)

    #: ``call()``, by the name async libraries use.
    acall = call

    def call_sync(self, *args: Any, **kwargs: Any) -> Any:
        """``call()`` for blocking code (a thread of a web server, a script): returns the
        value or raises the last error. Ctrl-C withdraws the call and raises."""
        loop_thread = self._loop_thread
        if loop_thread is not None and threading.current_thread() is loop_thread.thread:
            raise ReentrantRunError(
                "call_sync() was called from the Runner's own loop (from the function it "
                "runs), where it would wait for itself; use `await runner.call(...)`."
            )
        online, call = self._online_call(args, kwargs)
        future = asyncio.run_coroutine_threadsafe(online.call(call), online.engine.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def _online_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[OnlineCalls, Call]:
        if self._state is RunnerState.CLOSED:
            raise RunnerClosedError("This Runner was closed; create a new Runner to call.")
        priority = pop_priority(kwargs, ONLINE_PRIORITY, self._takes_priority)
        call = Call(self.function, args, kwargs, 0, self)
        call.priority = priority
        money = self._money
        money.schedule(call)
        if self._extractors:
            call.demand = demand_of(self._extractors, call)
        money.price(call)  # a budget counts online calls too
        if self.store is not None:
            call.key = key_of(self.config.key, self.function, call, money.key_kwargs(call))
        return self._ensure_online(), call

    def _ensure_online(self) -> OnlineCalls:
        with self._start_lock:
            if self._online is None:
                self._engine_for(None)  # the loop thread, and the batch's engine on it
                assert self._loop_thread is not None
                engine = self._new_engine(self._loop_thread.loop, online=True)
                self._online = OnlineCalls(engine)
                self._loop_thread.call_soon(self._priorities.join, engine)
            return self._online

    def _close_online(self, timeout: float) -> None:
        """Online calls not sent fail with RunnerClosedError; those running are abandoned."""
        online, loop_thread = self._online, self._loop_thread
        if online is None or loop_thread is None or loop_thread.loop.is_closed():
            return
        count = 0
        with contextlib.suppress(Exception):
            count = loop_thread.submit(online.close()).result(timeout)
        if count:
            warn(
                f"close() abandoned {count} online call(s) still running: they may have been "
                "billed, and their callers got RunnerClosedError.",
                RateLimitedWarning,
            )
