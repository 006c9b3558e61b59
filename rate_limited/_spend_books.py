"""Spend books: where a ``Budget`` keeps what was spent and what running calls hold.

(``_spend.book_for(store, ...)`` picks the book of a store; the SQLite and Redis books
live in ``_spend_sqlite`` and ``_spend_redis``.)

One interface, three places:

* ``MemoryBook``: this process (a Runner without a store; ``memory://`` stores share one
  per store and budget name);
* ``SqliteBook``: tables beside ``outcomes`` in the SQLite store's file, each operation
  one ``BEGIN IMMEDIATE`` transaction, so processes on the same file are serialised;
* ``RedisBook``: keys under the Redis store's prefix, each operation one Lua script.

Each keeps running sums, so an operation costs O(1) (a rolling window: plus the spends
that leave it; see ``benchmarks/RESULTS.md``, "Budget").

``reserve`` is the one place the limit is checked: spent (within the window) plus held
plus the new amount must stay within it, checked and held in one atomic step, so spent
plus reserved never exceeds the limit whatever the concurrency, in one process or many.
Times are wall-clock epoch seconds (the engine's loop time plus its offset), so that a
rolling window means the same in every process. A reservation is a lease: one left
behind by a process that died expires after ``lease`` seconds and then counts as spent at
its reserved amount, since its call may have been billed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    pass

__all__ = ["MemoryBook", "SpendBook", "fits", "frees_at"]

#: Rounding slack on the limit: sums of floats drift by a few ulps.
_SLACK = 1e-9


def fits(spent: float, held: float, amount: float, limit: float) -> bool:
    return spent + held + amount <= limit * (1 + _SLACK) + 1e-15


class SpendBook(Protocol):
    """What a Budget needs from the place its spend is kept."""

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        """Hold ``amount`` if spent + held + amount <= limit; a token, else None."""

    def settle(self, token: str, amount: float, now: float) -> None:
        """The reservation is spent, ``amount`` of it (the rest is freed)."""

    def release(self, token: str) -> None:
        """The reservation is freed: nothing was spent."""

    def bill(self, amount: float, now: float) -> None:
        """``amount`` was spent without a reservation (a late result)."""

    def state(self, window: float, now: float) -> tuple[float, float]:
        """``(spent within the window, held)``."""

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        """When ``amount`` fits, as far as the window's expiry can tell (``inf``: never,
        unless a reservation is released)."""


def frees_at(
    entries: list[tuple[float, float]],
    spent: float,
    held: float,
    amount: float,
    limit: float,
    window: float,
    now: float,
) -> float:
    """From the spend ``entries`` (time, amount) inside the window, oldest first."""
    if fits(spent, held, amount, limit):
        return now
    if math.isinf(window):
        return math.inf
    for at, value in entries:
        spent -= value
        if fits(spent, held, amount, limit):
            return at + window
    return math.inf


class MemoryBook:
    """A spend book in this process (thread-safe), for one window: running sums, so that
    each operation costs O(1) (amortised: spends leave a rolling window from the front)."""

    def __init__(self, window: float = math.inf) -> None:
        self._window = window
        self._lock = threading.Lock()
        #: Spends inside the window, (time, amount) in time order; a total keeps none.
        self._spent: deque[tuple[float, float]] = deque()
        self._spent_sum = 0.0
        self._held: dict[str, float] = {}
        self._held_sum = 0.0
        self._count = itertools.count()

    def _trim(self, window: float, now: float) -> float:
        """Spent within ``window`` of ``now``, dropping what left the book's own window."""
        if math.isinf(self._window):
            return self._spent_sum
        spent = self._spent
        floor = now - self._window
        while spent and spent[0][0] <= floor:
            self._spent_sum -= spent.popleft()[1]
        if not spent:
            self._spent_sum = 0.0  # no drift left behind
        if window == self._window:
            return self._spent_sum
        return math.fsum(a for t, a in spent if t > now - window)

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        with self._lock:
            if not fits(self._trim(window, now), self._held_sum, amount, limit):
                return None
            token = str(next(self._count))
            self._held[token] = amount
            self._held_sum += amount
            return token

    def _unhold(self, token: str) -> None:
        amount = self._held.pop(token, None)
        if amount is not None:
            self._held_sum = self._held_sum - amount if self._held else 0.0

    def settle(self, token: str, amount: float, now: float) -> None:
        with self._lock:
            self._unhold(token)
            self._add(amount, now)

    def _add(self, amount: float, now: float) -> None:
        if amount <= 0:
            return
        self._spent_sum += amount
        if math.isinf(self._window):
            return
        spent = self._spent
        if spent and spent[-1][0] > now:  # times of two engines on one book
            times = [e[0] for e in spent]
            spent.insert(bisect.bisect_right(times, now), (now, amount))
        else:
            spent.append((now, amount))

    def release(self, token: str) -> None:
        with self._lock:
            self._unhold(token)

    def bill(self, amount: float, now: float) -> None:
        with self._lock:
            self._add(amount, now)

    def state(self, window: float, now: float) -> tuple[float, float]:
        with self._lock:
            return self._trim(window, now), self._held_sum

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        with self._lock:
            spent = self._trim(window, now)
            entries = [e for e in self._spent if e[0] > now - window]
            return frees_at(entries, spent, self._held_sum, amount, limit, window, now)

    def __repr__(self) -> str:
        return (
            f"<MemoryBook spent={self._spent_sum:.6g} held={self._held_sum:.6g} "
            f"({len(self._held)} reservations)>"
        )
