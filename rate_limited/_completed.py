"""``as_completed()``: a run's outcomes in the order its calls finish, while it goes on.

``for outcome in runner.as_completed():`` (or ``async for``) starts the run (or joins the
one going on) and yields each call's ``Outcome`` the moment it becomes final: first the
calls already final (finished in an earlier, interrupted run, or found in the store), then
the others as they finish. Every call of the run is yielded exactly once; afterwards
``.result`` is the run's ``RunResult``, as ``run()`` would have returned it.

The engine tells a ``_Feed`` of each call that becomes final (``Engine.final_listeners``,
on its loop thread); the feed wakes the iterating thread (a ``threading.Event``) or task
(a future of its loop), without a wake-up per call when nobody waits. The run's end comes
after the last of them (its future completes after the engine returned), so the feed
ends then; a sweep of the run's calls at the end catches anything not reported.

Ctrl-C while iterating in the main thread (in the loop's body too) works as in ``run()``:
the run stops, the iteration ends after the outcomes already in, and ``.result`` is the
partial, interrupted RunResult; a second Ctrl-C abandons the calls still running. Leaving
the loop early (``break``, an exception) stops a run that ``runner.as_completed()``
started, and leaves one that it joined (``handle.as_completed()``) going. In async code,
cancelling the iterating task does the same as leaving the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from rate_limited._sigint import SigintGuard
from rate_limited.outcomes import Outcome

if TYPE_CHECKING:
    from rate_limited._core import EngineCore
    from rate_limited.calls import Call
    from rate_limited.outcomes import RunResult

__all__ = ["AsCompleted", "subscriber"]


def _by_end(calls: list[Call]) -> list[Call]:
    """``calls`` in the order they ended: those of earlier runs or the store (no end time
    in this run) first, by index."""
    return sorted(calls, key=lambda c: (c.finished_at is not None, c.finished_at or 0.0, c.index))


class RunHandle(Protocol):
    """What this module uses of ``rate_limited.handle.RunHandle`` (not imported: the
    handle imports this module)."""

    _calls: list[Call]
    _future: concurrent.futures.Future[tuple[bool, float]] | asyncio.Task[tuple[bool, float]]

    def _stop(self) -> None: ...

    def _interrupt(self) -> None: ...

    def _add_done_callback(self, callback: Callable[[], None]) -> None: ...

    def _result_guarded(self, timeout: float | None, guard: SigintGuard | None) -> RunResult: ...

    def __await__(self) -> Generator[Any, None, RunResult]: ...


#: ``subscribe(listener)`` adds a final listener to the run's engine; it returns the
#: function that removes it.
Subscribe = Callable[[Callable[["Call"], None]], Callable[[], None]]

#: Seconds between two looks at a pending Ctrl-C while the iterating thread waits.
_SIGNAL_CHECK = 0.25


class _Feed:
    """Calls that became final, from the engine's thread to the iterating one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: deque[Call] = deque()
        self._ended = False
        self._event = threading.Event()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)
            waiter, self._waiter = self._waiter, None
        self._event.set()
        if waiter is not None:
            _wake_soon(*waiter)

    def end(self, *_: object) -> None:
        with self._lock:
            self._ended = True
            waiter, self._waiter = self._waiter, None
        self._event.set()
        if waiter is not None:
            _wake_soon(*waiter)

    def take(self) -> tuple[list[Call], bool]:
        """Everything in so far, and whether the run has ended."""
        with self._lock:
            calls = list(self._calls)
            self._calls.clear()
            self._event.clear()
            return calls, self._ended

    def wait(self) -> None:
        """Until something comes in (wakes now and then so that a Ctrl-C gets through)."""
        while not self._event.wait(_SIGNAL_CHECK):
            pass

    async def wait_async(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._calls or self._ended:
                return
            self._waiter = (loop, future)
        await future


def _wait(handle: RunHandle, feed: _Feed) -> None:
    """Wait for the feed in a blocking loop. A run of ``event_loop="current"`` is a task on
    this thread's own loop: run that loop meanwhile (re-entrant: nest_asyncio)."""
    run = handle._future
    if isinstance(run, asyncio.Task):
        run.get_loop().run_until_complete(feed.wait_async())
    else:
        feed.wait()


def _wake_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def wake() -> None:
        if not future.done():
            future.set_result(None)

    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
        loop.call_soon_threadsafe(wake)


class AsCompleted:
    """The outcomes of one run as its calls finish: ``for`` or ``async for`` it, once."""

    def __init__(
        self,
        start: Callable[[], tuple[RunHandle, Subscribe]],
        *,
        owns_run: bool,
    ) -> None:
        self._start = start
        self._owns_run = owns_run
        self._started = False
        #: The run's RunResult, once the iteration has ended (None before).
        self.result: RunResult | None = None
        #: Outcomes yielded so far.
        self.yielded = 0

    def _begin(self) -> tuple[RunHandle, _Feed, Callable[[], None]]:
        if self._started:
            raise RuntimeError("as_completed() can be iterated once; call it again for a new run.")
        self._started = True
        handle, subscribe = self._start()
        feed = _Feed()
        unsubscribe = subscribe(feed.put)  # before the sweep: nothing falls in between
        # Calls that ended between the start and the subscription (all of a fast run, on a
        # FakeClock) come in the order they ended, like those the listener hears of.
        for call in _by_end([c for c in list(handle._calls) if c.status.is_final]):
            feed.put(call)
        handle._add_done_callback(feed.end)
        return handle, feed, unsubscribe

    def _fresh(self, calls: list[Call], seen: set[Call]) -> list[Call]:
        fresh = []
        for call in calls:
            if call not in seen:
                seen.add(call)
                fresh.append(call)
        return fresh

    def _batches(self, handle: RunHandle, feed: _Feed) -> Iterator[list[Call]]:
        """The calls to yield, batch by batch and none twice, until the run ends (at its
        end, the run's final calls not reported too: the safety net). An empty batch
        means: nothing new yet, wait on the feed."""
        seen: set[Call] = set()
        while True:
            calls, ended = feed.take()
            fresh = self._fresh(calls, seen)
            if ended:
                final = [c for c in list(handle._calls) if c.status.is_final]
                fresh += self._fresh(_by_end(final), seen)
                if fresh:
                    yield fresh
                return
            yield fresh

    def __iter__(self) -> Iterator[Outcome]:
        return self._iterate()

    def _iterate(self) -> Iterator[Outcome]:
        # Ctrl-C is the run's from before it starts, as in run(), until the iteration ends.
        with SigintGuard() as guard:
            handle, feed, unsubscribe = self._begin()
            guard.attach(handle._interrupt)
            finished = False
            try:
                for calls in self._batches(handle, feed):
                    if not calls:
                        _wait(handle, feed)
                    for call in calls:
                        self.yielded += 1
                        yield Outcome.of(call)
                finished = True
            finally:
                unsubscribe()
                if not finished and self._owns_run:
                    handle._stop()  # left early: stop the run this iteration started
                if finished or self._owns_run:
                    self.result = handle._result_guarded(None, guard)

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._iterate_async()

    async def _iterate_async(self) -> AsyncIterator[Outcome]:
        handle, feed, unsubscribe = self._begin()
        finished = False
        try:
            for calls in self._batches(handle, feed):
                if not calls:
                    await feed.wait_async()
                for call in calls:
                    self.yielded += 1
                    yield Outcome.of(call)
            finished = True
        finally:
            unsubscribe()
            if not finished and self._owns_run:
                handle._stop()
        self.result = await handle

    def __repr__(self) -> str:
        state = "done" if self.result is not None else f"{self.yielded} yielded"
        return f"<AsCompleted ({state})>"


def subscriber(engine: EngineCore, lock: threading.Lock) -> Subscribe:
    """Adds final listeners to ``engine`` (from any thread, under ``lock``; the engine
    reads them on its loop)."""

    def subscribe(listener: Callable[[Call], None]) -> Callable[[], None]:
        with lock:
            engine.final_listeners = (*engine.final_listeners, listener)

        def unsubscribe() -> None:
            with lock:
                engine.final_listeners = tuple(
                    other for other in engine.final_listeners if other is not listener
                )

        return unsubscribe

    return subscribe
