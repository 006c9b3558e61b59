"""``RunHandle``: a run going on in the background, from ``runner.start()``.

``runner.run()`` is ``runner.start().result()``. In a notebook, ``start()`` returns at once
and the progress display keeps updating while other cells run; ``handle.result()`` blocks
(Ctrl-C stops the run and returns the partial result, as ``run()`` does), ``await handle``
works in async code, ``handle.stop()`` stops and returns what has finished, and
``handle.snapshot()`` is what has finished so far, at any time.

Ctrl-C while waiting (``SigintGuard``): the first stops admission and the run returns its
partial result at once; calls already started go on in the background and are kept when
they finish. A second Ctrl-C abandons them (``RunHandle.abandon``) and says how many. No
KeyboardInterrupt is raised while a batch is running: ``run()`` installs the guard before
it starts the batch, so a Ctrl-C in its first instant stops the run like any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from rate_limited._sigint import SigintGuard
from rate_limited.exceptions import RateLimitedWarning, warn

if TYPE_CHECKING:
    from rate_limited._completed import AsCompleted, Subscribe
    from rate_limited.calls import Call
    from rate_limited.outcomes import RunResult

__all__ = ["RunHandle", "SigintGuard"]


class RunHandle:
    """A run started by ``Runner.start()``; ``result()`` or ``await`` it for the RunResult."""

    def __init__(
        self,
        future: concurrent.futures.Future[tuple[bool, float]] | asyncio.Task[tuple[bool, float]],
        calls: list[Call],
        request_stop: Callable[[], None],
        finish: Callable[[list[Call], bool, float], RunResult],
        snapshot: Callable[[], RunResult],
        request_abandon: Callable[[], concurrent.futures.Future[int]] | None = None,
        urgent: Callable[[], list[tuple[type[Warning], str]]] | None = None,
    ) -> None:
        self._future = future
        #: Warnings that must not wait for the end of the run (a shared ledger's server
        #: lost: nothing is admitted meanwhile): ``result()`` emits them as they come.
        self._urgent = urgent
        self._calls = calls
        self._request_stop = request_stop
        self._request_abandon = request_abandon
        self._finish = finish
        self._snapshot = snapshot
        self._result: RunResult | None = None
        self._stop_requested = False
        self._abandoned: concurrent.futures.Future[int] | None = None
        self._lock = threading.Lock()
        #: Adds a final listener to the run's engine (set by the Runner; see as_completed).
        self._subscribe: Subscribe | None = None

    def done(self) -> bool:
        """Whether the run has ended (completed, stopped or failed)."""
        return self._future.done()

    def as_completed(self) -> AsCompleted:
        """This run's outcomes as its calls finish: ``for outcome in
        handle.as_completed():`` (or ``async for``); the calls already finished come
        first. Leaving the loop early leaves the run going; Ctrl-C stops it."""
        from rate_limited._completed import AsCompleted

        subscribe = self._subscribe
        if subscribe is None:
            raise RuntimeError("this RunHandle was not made by Runner.start()")
        return AsCompleted(lambda: (self, subscribe), owns_run=False)

    def _add_done_callback(self, callback: Callable[[], None]) -> None:
        """``callback()`` when the run ends (on the thread that ends it)."""
        self._future.add_done_callback(lambda _: callback())

    def stop(self, timeout: float | None = None) -> RunResult:
        """Stop admitting calls and return the partial result.

        Calls already started (threads and coroutines) keep running on the Runner's loop;
        their results are kept (and stored) when they arrive, and the next ``run()``
        waits for them instead of sending them again.
        """
        self._stop()
        return self.result(timeout)

    def abandon(self) -> int:
        """Stop the run and stop waiting for the calls still running: coroutines are
        cancelled, threads left to finish unseen (a late result is still kept). They end
        ``cancelled``, and a rerun sends them again. Returns how many were abandoned."""
        self._stop()
        if self._request_abandon is None:
            return 0
        return self._request_abandon().result(timeout=10)

    def snapshot(self) -> RunResult:
        """What has finished so far, at once (the run goes on; ``result()`` waits)."""
        if self._result is not None:
            return self._result
        return self._snapshot()

    def results(self) -> RunResult:
        """Deprecated name of ``snapshot()`` (too close to the blocking ``result()``)."""
        warn("handle.results() is now handle.snapshot()", DeprecationWarning)
        return self.snapshot()

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end and return its RunResult.

        Ctrl-C while waiting in the main thread stops the run and returns the partial
        result (a second Ctrl-C raises KeyboardInterrupt). ``timeout``: seconds to wait
        before raising ``TimeoutError`` (the run goes on).
        """
        return self._result_guarded(timeout, None)

    def _result_guarded(self, timeout: float | None, guard: SigintGuard | None) -> RunResult:
        """``result()``, with SIGINT handled by ``guard`` (installed by ``run()`` before
        the run started), or by a guard of its own."""
        if self._result is not None:
            return self._result
        if guard is None:
            with SigintGuard() as own:
                return self._result_guarded(timeout, own)
        guard.attach(self._interrupt)
        if isinstance(self._future, asyncio.Task):
            return self._result_on_this_loop(self._future, timeout)
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            wait = 0.25 if deadline is None else min(0.25, deadline - _monotonic())
            if wait <= 0:
                raise TimeoutError(f"the run did not end within {timeout} s")
            try:
                interrupted, elapsed = self._future.result(timeout=wait)
                break
            except concurrent.futures.TimeoutError:
                if self._urgent is not None:
                    for category, text in self._urgent():
                        warn(text, category)
        return self._finished(interrupted, elapsed)

    def _result_on_this_loop(
        self, task: asyncio.Task[tuple[bool, float]], timeout: float | None
    ) -> RunResult:
        """``event_loop="current"``: the run is a task on the caller's (notebook's) loop,
        which nest_asyncio lets us run to completion from inside a cell."""
        loop = task.get_loop()
        try:
            interrupted, elapsed = loop.run_until_complete(
                asyncio.wait_for(asyncio.shield(task), timeout)
            )
        except asyncio.TimeoutError:
            raise TimeoutError(f"the run did not end within {timeout} s") from None
        return self._finished(interrupted, elapsed)

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> RunResult:
        if self._result is not None:
            return self._result
        try:
            if isinstance(self._future, asyncio.Task):
                interrupted, elapsed = await asyncio.shield(self._future)
            else:
                interrupted, elapsed = await asyncio.wrap_future(self._future)
        except asyncio.CancelledError:
            self._stop()
            raise
        return self._finished(interrupted, elapsed)

    def _stop(self) -> None:
        self._stop_requested = True
        self._request_stop()

    def _interrupt(self) -> None:
        """A Ctrl-C (in the signal handler): the first stops, the next abandons."""
        if not self._stop_requested:
            self._stop()
        elif self._abandoned is None and self._request_abandon is not None:
            self._abandoned = self._request_abandon()

    def _finished(self, interrupted: bool, elapsed: float) -> RunResult:
        with self._lock:
            if self._result is None:
                self._result = self._finish(self._calls, interrupted, elapsed)
                abandoned = self._abandoned
                if abandoned is not None:
                    _warn_abandoned(abandoned.result(timeout=10))
            return self._result

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<RunHandle of {len(self._calls)} calls ({state})>"


def _monotonic() -> float:
    import time

    return time.monotonic()


def _warn_abandoned(count: int) -> None:
    if count:
        warn(
            f"Abandoned {count} call(s) that were still running after the interrupt: they "
            "may have been billed, and a rerun sends them again.",
            RateLimitedWarning,
        )
