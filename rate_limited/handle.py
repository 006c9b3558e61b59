"""``RunHandle``: a run going on in the background, from ``runner.start()``.

``runner.run()`` is ``runner.start().result()``. In a notebook, ``start()`` returns at once
and the progress display keeps updating while other cells run; ``handle.result()`` blocks
(Ctrl-C stops the run and returns the partial result, as ``run()`` does), ``await handle``
works in async code, ``handle.stop()`` stops and returns what has finished, and
``handle.results()`` is a snapshot at any time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.outcomes import RunResult

__all__ = ["RunHandle"]


class RunHandle:
    """A run started by ``Runner.start()``; ``result()`` or ``await`` it for the RunResult."""

    def __init__(
        self,
        future: concurrent.futures.Future[tuple[bool, float]] | asyncio.Task[tuple[bool, float]],
        calls: list[Call],
        request_stop: Callable[[], None],
        finish: Callable[[list[Call], bool, float], RunResult],
        snapshot: Callable[[], RunResult],
    ) -> None:
        self._future = future
        self._calls = calls
        self._request_stop = request_stop
        self._finish = finish
        self._snapshot = snapshot
        self._result: RunResult | None = None
        self._stop_requested = False
        self._lock = threading.Lock()

    def done(self) -> bool:
        """Whether the run has ended (completed, stopped or failed)."""
        return self._future.done()

    def stop(self, timeout: float | None = None) -> RunResult:
        """Stop admitting calls, cancel running coroutines, and return the partial result.

        Sync calls already in threads keep running; their results are kept when they
        arrive, and the next ``run()`` waits for them instead of sending them again.
        """
        self._stop()
        return self.result(timeout)

    def results(self) -> RunResult:
        """What has finished so far (a snapshot; the run goes on)."""
        if self._result is not None:
            return self._result
        return self._snapshot()

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end and return its RunResult.

        Ctrl-C while waiting in the main thread stops the run and returns the partial
        result (a second Ctrl-C raises KeyboardInterrupt). ``timeout``: seconds to wait
        before raising ``TimeoutError`` (the run goes on).
        """
        if self._result is not None:
            return self._result
        if isinstance(self._future, asyncio.Task):
            return self._result_on_this_loop(self._future, timeout)
        deadline = None if timeout is None else _monotonic() + timeout
        with self._sigint_stops_the_run():
            while True:
                wait = 0.25 if deadline is None else min(0.25, deadline - _monotonic())
                if wait <= 0:
                    raise TimeoutError(f"the run did not end within {timeout} s")
                try:
                    interrupted, elapsed = self._future.result(timeout=wait)
                    break
                except concurrent.futures.TimeoutError:
                    continue
                except KeyboardInterrupt:  # no handler of ours: not the main thread
                    if self._stop_requested:
                        raise
                    self._stop()
        return self._finished(interrupted, elapsed)

    def _result_on_this_loop(
        self, task: asyncio.Task[tuple[bool, float]], timeout: float | None
    ) -> RunResult:
        """``event_loop="current"``: the run is a task on the caller's (notebook's) loop,
        which nest_asyncio lets us run to completion from inside a cell."""
        loop = task.get_loop()
        with self._sigint_stops_the_run():
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

    def _finished(self, interrupted: bool, elapsed: float) -> RunResult:
        with self._lock:
            if self._result is None:
                self._result = self._finish(self._calls, interrupted, elapsed)
            return self._result

    @contextlib.contextmanager
    def _sigint_stops_the_run(self) -> Iterator[None]:
        """While waiting in the main thread, Ctrl-C stops the run instead of raising.

        Needed because Python 3.11+'s ``asyncio.run`` handler only cancels the main task,
        which a blocking wait never notices, and because Jupyter's "interrupt kernel" is a
        SIGINT too. The previous handler is restored afterwards.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum: int, frame: object) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt  # second Ctrl-C: give up waiting
            self._stop()

        try:
            previous = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # signals unavailable here (e.g. a subinterpreter)
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<RunHandle of {len(self._calls)} calls ({state})>"


def _monotonic() -> float:
    import time

    return time.monotonic()
