"""``FakeClock``: virtual time for tests, in the spirit of trio's MockClock with autojump.

A Runner built with ``clock=FakeClock()`` runs its engine on an event loop whose
``time()`` is virtual. Whenever that loop has nothing ready to run and would sleep until
its next timer, time jumps straight to that timer instead. A quota window of a minute or a
day therefore costs no real time, and the arithmetic is exact: a call admitted when a
1.0 s window frees starts at exactly 1.0.

Real I/O and threads still take real time: the loop polls for them without sleeping
before each jump (or for ``autojump_threshold`` real seconds, if set, so that a sync
function running in a thread can finish before time moves on). Tests of exact timing
should therefore wrap async functions (``await asyncio.sleep(...)`` is virtual too).
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["FakeClock"]


class FakeClock:
    """Virtual time for a Runner's engine loop; starts at 0.0 and only jumps forward."""

    def __init__(self, start: float = 0.0, autojump_threshold: float = 0.0) -> None:
        #: Real seconds the loop waits for I/O or threads before it jumps to its next timer.
        self.autojump_threshold = autojump_threshold
        self._now = float(start)

    def time(self) -> float:
        """The current virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (timers that come due run at the loop's next pass)."""
        if seconds < 0:
            raise ValueError("FakeClock cannot go back in time")
        self._now += seconds

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _VirtualTimeLoop(self)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"


class _JumpingSelector:
    """Wraps a real selector: a sleep until the next timer becomes a jump of the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self.loop: asyncio.BaseEventLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._selector.select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        if timeout is None:  # no timer at all: only I/O or a thread can wake the loop
            return self._selector.select(None)
        threshold = self._clock.autojump_threshold
        if threshold > 0:
            events = self._selector.select(min(threshold, timeout))
            if events:
                return events
        target = self._clock._now + timeout
        scheduled = getattr(self.loop, "_scheduled", None)  # asyncio's timer heap
        if scheduled:
            # Land exactly on the timer, not on now + (when - now), which may round below it.
            when: float = scheduled[0].when()
            if when <= target + 1e-6 * max(1.0, abs(target)):
                target = when
        self._clock._now = max(self._clock._now, target)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    #: Tells the engine not to refresh progress on a timer (each tick would be a jump).
    virtual_time = True

    def __init__(self, clock: FakeClock) -> None:
        self._fake_clock = clock
        selector = _JumpingSelector(clock)
        super().__init__(selector)  # type: ignore[arg-type]
        selector.loop = self

    def time(self) -> float:
        return self._fake_clock._now
