"""The thread pool that runs synchronous callables for the engine.

Why not ``loop.run_in_executor``: it costs a ``concurrent.futures.Future``, a done
callback and a cross-thread wake-up of the event loop per call. Here worker threads append
``(call, token, ok, value)`` to one deque and wake the loop only when no wake-up is
already pending, so a burst of completions is settled by one callback. With trivial
functions this is several times cheaper per call, and with slow ones it is the same.

With ``report_starts``, a thread also reports ``(call, token, None, started)`` when it
takes a call, ``started`` being the loop's clock read just before it calls the function:
the engine bills a call's arguments usage at that instant, not at admission, so that a
quota window counts from when the request really left (a thread can take a call
milliseconds after admission on a busy machine).

With ``sets_admission``, a thread puts the call's reservation in its context
(``CURRENT_ADMISSION``) before calling the function, which reads it to report what the
provider said about that request (a ``FeedbackSource``; nothing else reads it).

Threads are started lazily, one more whenever work is queued and none is idle, up to
``max_workers``; a thread running an abandoned call (interrupt, timeout) does not count,
so it cannot starve the calls that replace it. If the system refuses a new thread
(``RuntimeError: can't start new thread``, e.g. under a process limit), the pool goes on
with the threads it has and says so once (``thread_limit``); with none at all, ``submit``
raises. ``shutdown()`` lets busy threads finish their current call in the background and
joins idle ones.
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

#: (call, token, succeeded, value or exception); succeeded is None for "started"
Completion = tuple[Any, int, bool | None, Any]
_STOP = object()


def _start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread (a seam for tests that make the system refuse threads)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class ThreadPool:
    """Runs ``function(*call.args, **call.kwargs)`` for submitted calls in threads."""

    def __init__(
        self,
        function: Callable[..., Any],
        loop: asyncio.AbstractEventLoop,
        on_completions: Callable[[], None],
        max_workers: int,
        name: str = "rate_limited",
        report_starts: bool = False,
        sets_admission: bool = True,
    ) -> None:
        self._function = function
        self._report_starts = report_starts
        self._sets_admission = sets_admission
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
        #: Why the system refused a new thread, once it has (the pool then makes do).
        self.thread_limit: BaseException | None = None

    @property
    def thread_count(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    # -- loop thread --------------------------------------------------------------------------
    def submit(self, call: Any, token: int) -> None:
        """Queue a call for a thread, starting one if none is idle.

        Raises the system's error if it refuses a thread and the pool has none at all.
        """
        with self._lock:
            self._queued += 1
            spawn = (
                self._queued > self._idle
                and len(self._threads) - self.abandoned < self.max_workers
                and not self._closed
                and self.thread_limit is None
            )
        if spawn:
            try:
                thread = _start_thread(self._work, f"{self._name}-worker-{len(self._threads)}")
            except RuntimeError as exc:  # "can't start new thread"
                if not self._threads:
                    with self._lock:
                        self._queued -= 1
                    raise
                self.thread_limit = exc  # go on with the threads there are
            else:
                self._threads.append(thread)
        self._queue.put((call, token))

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
        clock = self._loop.time  # monotonic (or a FakeClock's): safe to read from here
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
            if self._report_starts:
                append((call, token, None, clock()))
                if not self._wake_pending and not self._wake():
                    return  # the loop was closed: the runner is gone
            if self._sets_admission:
                CURRENT_ADMISSION.set(call.reservation)  # for the function's feedback
            try:
                completion = (call, token, True, function(*call.args, **call.kwargs))
            except BaseException as exc:
                completion = (call, token, False, exc)
            append(completion)
            del completion, call, item
            if not self._wake_pending and not self._wake():
                return  # the loop was closed: the runner is gone

    def _wake(self) -> bool:
        """Have the loop drain the completions (no wake-up is pending); False if the loop
        is closed."""
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._on_completions)
        except RuntimeError:
            return False
        return True
