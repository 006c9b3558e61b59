"""The thread pool that runs synchronous callables for the engine.

Why not ``loop.run_in_executor``: it costs a ``concurrent.futures.Future``, a done
callback and a cross-thread wake-up of the event loop per call. Here worker threads append
``(call, token, ok, value)`` to one deque and wake the loop only when no wake-up is
already pending, so a burst of completions is settled by one callback. With trivial
functions this is several times cheaper per call, and with slow ones it is the same.

Threads are started lazily, one more whenever work is queued and none is idle, up to
``max_workers``; a thread running an abandoned call (interrupt, timeout) does not count,
so it cannot starve the calls that replace it. ``shutdown()`` lets busy threads finish
their current call in the background and joins idle ones.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rate_limited._feedback import CURRENT_ADMISSION

__all__ = ["ThreadPool"]

#: (call, token, succeeded, value or exception)
Completion = tuple[Any, int, bool, Any]
_STOP = object()


class ThreadPool:
    """Runs ``function(*call.args, **call.kwargs)`` for submitted calls in threads."""

    def __init__(
        self,
        function: Callable[..., Any],
        loop: asyncio.AbstractEventLoop,
        on_completions: Callable[[], None],
        max_workers: int,
        name: str = "rate_limited",
    ) -> None:
        self._function = function
        self._loop = loop
        self._on_completions = on_completions
        self.max_workers = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.completions: deque[Completion] = deque()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._queued = 0
        self._lock = threading.Lock()
        self._closed = False
        #: Threads still running a call the engine stopped waiting for.
        self.abandoned = 0

    # -- loop thread --------------------------------------------------------------------------
    def submit(self, call: Any, token: int) -> None:
        with self._lock:
            self._queued += 1
            spawn = (
                self._queued > self._idle
                and len(self._threads) - self.abandoned < self.max_workers
                and not self._closed
            )
        self._queue.put((call, token))
        if spawn:
            thread = threading.Thread(
                target=self._work,
                name=f"{self._name}-worker-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def take_back(self) -> list[tuple[Any, int]]:
        """Remove the calls no thread has started yet (on interrupt), and return them."""
        taken = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(item)
                break
            taken.append(item)
        with self._lock:
            self._queued -= len(taken)
        return taken

    def drain(self) -> list[Completion]:
        """Completions so far (called on the loop, in the callback woken by the threads)."""
        self._wake_pending = False  # before popping: a later append schedules a new wake
        completions = self.completions
        out = []
        while completions:
            out.append(completions.popleft())
        return out

    def shutdown(self, wait: float = 0.0) -> None:
        """Stop the threads once they finish their current call; wait up to ``wait``
        seconds in all for them (idle ones exit at once; a busy one finishes its call)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + wait
        for thread in threads:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if thread is not threading.current_thread():
                thread.join(remaining)

    # -- worker threads -----------------------------------------------------------------------
    def _work(self) -> None:
        function, get, lock = self._function, self._queue.get, self._lock
        append = self.completions.append
        while True:
            with lock:
                self._idle += 1
            item = get()
            with lock:
                self._idle -= 1
                if item is not _STOP:
                    self._queued -= 1
            if item is _STOP:
                return
            call, token = item
            CURRENT_ADMISSION.set(call.reservation)  # for the function's feedback (engine-set)
            try:
                completion = (call, token, True, function(*call.args, **call.kwargs))
            except BaseException as exc:
                completion = (call, token, False, exc)
            append(completion)
            del completion, call, item
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._on_completions)
                except RuntimeError:  # the loop was closed: the runner is gone
                    return
