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
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import CallError, RunnerClosedError
from rate_limited.outcomes import Status

if TYPE_CHECKING:
    from rate_limited._engine import Engine
    from rate_limited.calls import Call

__all__ = ["ONLINE_PRIORITY", "OnlineCalls"]

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
