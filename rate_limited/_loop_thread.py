"""The Runner's own event loop, in a daemon thread, and how it ends.

The loop starts with the Runner's first run and serves every later one; the engine, its
ledger and its thread pool live there. ``shutdown`` stops it (``close()``, or the Runner's
finalizer when nothing refers to it any more). At the end of the program, calls still
running after an interrupt are waited for first when their results can be stored, so a
paid-for answer is not lost; Ctrl-C stops waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import RateLimitedWarning, RunnerClosedError, warn
from rate_limited.handle import SigintGuard

if TYPE_CHECKING:
    from rate_limited._clock import Clock
    from rate_limited._engine import Engine

__all__ = [
    "EXIT_WAIT_SECONDS",
    "LoopThread",
    "finish_running_calls",
    "flush_store",
    "shutdown",
    "stop_run",
    "wait_idle",
]

#: Seconds the end of the program waits for calls still running (with a store).
EXIT_WAIT_SECONDS = 30.0


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, clock: Clock, name: str) -> None:
        self.loop = clock.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Stopped for good (``shutdown``): closed here, also when the stop came from
            # this thread itself (a Runner's finalizer run by a garbage collection on the
            # loop), where no other thread would close it; an unclosed loop leaks its
            # self-pipe sockets until a ResourceWarning in some later, unrelated code.
            self.loop.close()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            self.loop.call_soon_threadsafe(callback, *args)


def shutdown(loop_thread: LoopThread | None, engine: Engine | None) -> None:
    """Stop the loop thread and the pool; safe to call twice, from any thread.

    At the end of the program, calls still running after an interrupt are waited for
    first when their results can be stored (``_wait_at_exit``). Coroutines still running
    are cancelled, not dropped half-way.
    """
    if loop_thread is None or loop_thread.loop.is_closed():
        if engine is not None and engine.pool is not None:
            engine.pool.shutdown()
        return
    loop = loop_thread.loop
    in_loop_thread = threading.current_thread() is loop_thread.thread
    if engine is not None and not in_loop_thread:
        if not threading.main_thread().is_alive():  # finalizers run at exit: the end
            _wait_at_exit(engine)
        if engine.running_calls:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(engine.abandon_and_wait(), loop).result(5)
    if engine is not None and engine.pool is not None:
        engine.pool.shutdown(wait=1.0)  # idle threads exit at once; busy ones finish later
    if not in_loop_thread:  # close async generators left open (an SDK's stream), as asyncio.run
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(5)
    loop_thread.call_soon(loop.stop)  # the thread then closes the loop
    if not in_loop_thread:
        loop_thread.thread.join(timeout=5)


def stop_run(
    engine: Engine | None,
    future: concurrent.futures.Future[Any] | asyncio.Future[Any] | None,
    timeout: float = 5.0,
) -> None:
    """``close()`` during a run: stop it and let it end, so that its handle returns the
    partial result instead of waiting for a loop that is gone."""
    if engine is None:
        return
    with contextlib.suppress(RuntimeError):  # loop already closed
        engine.loop.call_soon_threadsafe(engine.request_stop)
    if not isinstance(future, concurrent.futures.Future):
        return  # event_loop="current": the caller's loop ends the task by itself
    with contextlib.suppress(Exception):
        future.result(timeout)
    if not future.done():
        future.set_exception(RunnerClosedError("The Runner was closed before its run could stop."))


def wait_idle(engine: Engine, timeout: float) -> bool:
    """Block (another thread than the engine's) until no call of ``engine`` is running,
    at most ``timeout`` seconds; True if none is. The engine says when (no polling)."""
    if not engine.running_calls:
        return True

    async def idle() -> None:
        await asyncio.wait_for(engine.wait_idle(), timeout)

    try:
        future = asyncio.run_coroutine_threadsafe(idle(), engine.loop)
    except RuntimeError:  # the loop is closed: nothing runs any more
        return True
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError):
        future.result(timeout + 1)
    return not engine.running_calls


def finish_running_calls(engine: Engine, timeout: float) -> None:
    """``close()``: give the calls still running (after a Ctrl-C, say) up to ``timeout``
    seconds to finish, so that their paid-for results are kept and stored; then, or at a
    Ctrl-C meanwhile, abandon them with a warning saying how many."""
    if engine.loop.is_closed() or not engine.running_calls:
        return
    abandoned: list[concurrent.futures.Future[int]] = []

    def abandon() -> None:
        if not abandoned:
            coro = engine.abandon_and_wait()
            abandoned.append(asyncio.run_coroutine_threadsafe(coro, engine.loop))

    with SigintGuard() as guard:  # Ctrl-C here: stop waiting for them
        guard.attach(abandon)
        # The engine's loop settles (and stores) them meanwhile, and says when it has.
        if not wait_idle(engine, timeout):
            abandon()
    count = abandoned[0].result(10) if abandoned else 0
    if count:
        warn(
            f"close() abandoned {count} call(s) still running after {timeout:g} s or a "
            "Ctrl-C: they may have been billed, and their results are lost.",
            RateLimitedWarning,
        )


def _wait_at_exit(engine: Engine) -> None:
    """At the end of the program: wait for the calls still running after an interrupt,
    so that their paid-for results reach the store (Ctrl-C stops waiting)."""
    if engine.store is None or not engine.running_calls:
        return
    print(
        f"rate_limited: waiting up to {EXIT_WAIT_SECONDS:.0f} s for {engine.running_calls} "
        "call(s) still running, so that their results are stored (Ctrl-C abandons them)",
        file=sys.stderr,
        flush=True,
    )
    try:
        wait_idle(engine, EXIT_WAIT_SECONDS)
    except KeyboardInterrupt:
        return
    if engine.checkpoint is not None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(flush_store(engine), engine.loop).result(5)


async def flush_store(engine: Engine) -> None:
    """Commit what the engine's store holds (on its loop)."""
    if engine.checkpoint is not None:
        engine.checkpoint.flush(final=True)
