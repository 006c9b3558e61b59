"""Where the engine's time comes from.

The engine reads time only as ``loop.time()`` (monotonic, exact floats) and waits only
with ``loop.call_at``; a ``Clock`` is therefore just a factory of the event loop the
Runner's background thread runs. ``MonotonicClock`` gives a normal asyncio loop;
``rate_limited.testing.FakeClock`` gives one whose time jumps ahead whenever the loop
would otherwise sleep, so that a test of a 60 s or one-day window takes no real time.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """Makes the event loop a Runner runs on; the loop's ``time()`` is the clock."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop: ...


class MonotonicClock:
    """Real time: a standard asyncio event loop (``loop.time()`` is ``time.monotonic()``)."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def __repr__(self) -> str:
        return "MonotonicClock()"
