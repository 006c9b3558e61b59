"""``SigintGuard``: SIGINT as a callback while a run is waited for, not KeyboardInterrupt.

Its own module so that what waits on a run (``handle``, ``_completed``) shares it without
importing each other. ``rate_limited.handle`` re-exports it.
"""

from __future__ import annotations

import signal
import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["SigintGuard"]

# The guards installed (in the main thread, so no lock), in the order they were entered.
_active: list[SigintGuard] = []


class SigintGuard:
    """While active (in the main thread), SIGINT calls the attached callback instead of
    raising KeyboardInterrupt (for a run: the first stops it, the next abandons the calls
    still running). A SIGINT that comes before anything is attached is kept and delivered
    when something is. The previous handler is restored on exit.

    Needed because Python 3.11+'s ``asyncio.run`` handler only cancels the main task,
    which a blocking wait never notices, and because Jupyter's "interrupt kernel" is a
    SIGINT too.

    Guards may end out of order: ``as_completed()`` holds one across each ``yield``, and
    an iterator kept aside (``it = iter(runner.as_completed()); next(it)``) may end after
    a ``run()`` begun meanwhile. The active guards are kept in entry order, and one that
    ends under a later one hands what it found to that one, so the handler the first guard
    found is the one restored when the last ends (never a finished guard's).
    """

    def __init__(self) -> None:
        self._on_interrupt: Callable[[], None] | None = None
        self._early = 0  # SIGINTs before a run was attached
        self._previous: Any = None
        self._installed = False
        self._stale = False

    def __enter__(self) -> SigintGuard:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:  # signals unavailable here (e.g. a subinterpreter)
                return self
            self._installed = True
            _active.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._installed:
            return
        self._installed = False
        at = next(i for i, guard in enumerate(_active) if guard is self)
        del _active[at]
        if at < len(_active):  # a later guard is installed: it restores what this one found
            _active[at]._previous = self._previous
            return
        try:
            signal.signal(signal.SIGINT, self._previous)
        except ValueError:  # ended off the main thread (a generator collected there)
            self._stale = True  # _on_sigint puts it back at the next SIGINT

    def attach(self, on_interrupt: Callable[[], None]) -> None:
        """Call ``on_interrupt()`` for each SIGINT from now on (and now, for those already
        received; two at most: a stop and an abandon)."""
        self._on_interrupt = on_interrupt
        for _ in range(min(self._early, 2)):
            on_interrupt()
        self._early = 0

    def _on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        if self._stale:  # ended where it could not put the previous handler back
            signal.signal(signal.SIGINT, self._previous)
            signal.raise_signal(signum)  # handled as if this guard had never been there
            return
        if self._on_interrupt is None:
            self._early += 1
        else:
            self._on_interrupt()
