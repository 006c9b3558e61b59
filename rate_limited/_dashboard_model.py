"""What the dashboard works out from a run's statistics over time, with no widget in sight.

``RunStats`` is a snapshot; a user watching a run wants what only a series of them
tells: how fast calls finish lately (and so the ETA), how long admission has waited for
each resource so far, and the ledger's numbers over the run for ``plot_run(...,
history=...)``. ``RunTracker`` keeps that series for ``DashboardProgress``
(``rate_limited._dashboard``), which draws what it returns.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rate_limited._stats import RunStats

__all__ = ["MAX_HISTORY", "RATE_WINDOW", "RunTracker", "Usage"]

#: Seconds of completions the ETA's rate is measured over.
RATE_WINDOW = 30.0
#: Most samples kept in ``history`` (past it, every other one is dropped).
MAX_HISTORY = 4000

#: Per resource: used, reserved, quota (the ledger's numbers).
Usage = dict[str, tuple[float, float, float]]


class RunTracker:
    """The rate, the waits per resource and the usage history of one run at a time."""

    def __init__(self) -> None:
        #: ``(loop time, usage)`` at each update of the current run (thinned past
        #: ``MAX_HISTORY``).
        self.history: list[tuple[float, Usage]] = []
        #: Seconds admission waited for each resource, this run.
        self.waited: dict[str, float] = {}
        self._history_every = 0.0
        self._samples: deque[tuple[float, int]] = deque()
        self._last_binding: str | None = None
        self._last_now = 0.0
        self._last_until = 0.0

    def start(self, now: float, finished: int) -> None:
        """A new run: forget the last one."""
        self.history = []
        self.waited = {}
        self._history_every = 0.0
        self._samples = deque([(now, finished)])
        self._last_binding = None
        self._last_now = now

    def record(self, now: float, usage: Usage, final: bool) -> None:
        """Keep ``usage`` in the history (the final one always, others if not too close)."""
        history = self.history
        if history and not final and now - history[-1][0] < self._history_every:
            return
        history.append((now, usage))
        if len(history) > MAX_HISTORY:
            del history[1::2]
            self._history_every = (now - history[0][0]) / len(history)

    def wait(self, stats: RunStats, final: bool) -> tuple[str | None, float | None]:
        """What admission waits for now (None: nothing; "capacity" when no resource is
        named) and the seconds left (None: until a running call settles); the wait seen
        at the last update is added to ``waited``, up to now or its announced end."""
        now = stats.now
        last = self._last_binding
        if last is not None:
            waited = min(now, self._last_until) - self._last_now
            self.waited[last] = self.waited.get(last, 0.0) + max(0.0, waited)
        until = stats.waiting_until
        waiting = not final and until is not None and until > now
        binding = (stats.binding or "capacity") if waiting else None
        self._last_binding, self._last_now = binding, now
        self._last_until = until if until is not None else now
        if not waiting or until is None or math.isinf(until):
            return binding, None
        return binding, until - now

    def rate(
        self, now: float, finished: int, total: int, final: bool
    ) -> tuple[float, float | None]:
        """Calls finished per second over the last ``RATE_WINDOW`` seconds, and the ETA in
        seconds (None: done, final, or no rate yet)."""
        samples = self._samples
        if not samples or finished != samples[-1][1]:
            samples.append((now, finished))
        while len(samples) > 2 and samples[1][0] < now - RATE_WINDOW:
            samples.popleft()
        first_time, first_done = samples[0]
        rate = (finished - first_done) / (now - first_time) if now > first_time else 0.0
        remaining = total - finished
        eta = remaining / rate if not final and remaining > 0 and rate > 0 else None
        return rate, eta
