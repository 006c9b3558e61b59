"""Spares: admissions the Redis ledger makes ahead, so that most calls need no round trip.

The engine asks ``try_reserve`` for one call at a time and waits for the answer, so every
admission through Redis costs a round trip plus the script's time, on the engine's loop.
When calls come fast, on meters far from their quotas, the reserve script admits the call
*and* up to ``SPARES`` more admissions of a *spare demand* (per resource, the most any of
the last calls of the same partitions needed), held in Redis as deferred leases of this
process (``m.r``: reserved, like any admission before its call starts). The next calls
that need no more than a spare take one here, with no round trip; a ``take`` operation
(queued, sent with the next script call) shrinks the lease to what the call needs and
bills it then, at Redis's time (later than the request left, so a window counts it
longer and a bucket drains it later than the provider: never in the user's favour).

What it does not change:

* **Atomic, all resources at once.** A spare is one admission on every meter, made in the
  same script call as the admission that asked for it, only while every meter stays below
  half of its quota (``SPARE_ROOM`` in the Lua model): near a limit, every call goes to
  Redis as before, and no process holds room another could use.
* **Leases.** Spares are leases of this process: if it dies, they are reaped and billed as
  kept (whole: more than the provider bills, never less). Unused ones are released after
  ``SPARE_TTL`` seconds (by the link's sender thread) or when the ledger closes. Once
  Redis was lost, none held before is taken (a restarted Redis may not have them): they
  are given back, and admission asks Redis again.
* **Reports.** Once the provider reports on the calls (``expect_reports``), ``reconcile``
  compares a report with the least room the meter believed in since the call's admission,
  a *mark* each admission pushes (``push_low`` in the Lua model). The admission that
  makes spares pushes its mark once the spares are held too, and every call taken from
  them shares that mark: it was made before the call's request left and counts the call's
  room held (the spare's), so the least room since it is at most what the ledger believed
  when the provider took the request, which is what ``rate_limited._reconcile`` needs
  (an earlier mark only makes the comparison more careful: it never bills more than the
  ledger over-believed). The price is a correction too small by at most what this
  process's spares hold, and spares exist only below half of every quota, where a
  correction has no call to stop. Each spare's ``held`` (what ``refused`` corrects from)
  counts itself and the spares made before it, as the script held them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from rate_limited.ledgers.base import Demand

if TYPE_CHECKING:
    from rate_limited.ledgers._redis_reservation import RedisReservation

__all__ = ["SPARES", "SPARE_TTL", "Spares"]

#: Most spares one admission makes.
SPARES = 8
#: Seconds an unused spare is kept before it is given back.
SPARE_TTL = 0.1
#: How many recent demands the spare demand covers.
_RECENT = 8

#: The partition keys of a demand, per resource: spares serve only calls on the same meters.
Meters = tuple[Hashable, ...]


class Spares:
    """The spares this process holds, by meters; thread-safe (the loop takes them, the
    link's sender thread gives back the expired)."""

    def __init__(self, release: Callable[[RedisReservation], None], ttl: float = SPARE_TTL) -> None:
        self._release = release
        #: Seconds within which a call "follows" another, and an unused spare is kept.
        self.ttl = ttl
        self._lock = threading.Lock()
        self._held: dict[Meters, list[RedisReservation]] = {}  # oldest first
        #: Monotonic time at which each group's spares are given back: a group of its own,
        #: so that spares of idle meters do not live on while other meters make new ones.
        self._expires: dict[Meters, float] = {}
        self._recent: deque[Demand] = deque(maxlen=_RECENT)
        self._last = -float("inf")  # monotonic time of the last round-trip admission

    def take(self, demand: Demand) -> RedisReservation | None:
        """A held spare that covers ``demand`` (each resource's arguments usage and
        estimate at most the spare's), or None (then those of its meters, too small, are
        given back: the admission that follows makes bigger ones)."""
        meters = tuple(need[2] for need in demand)
        with self._lock:
            held = self._held.get(meters)
            if not held:
                return None
            spare = held[0]  # the oldest: the one closest to being given back
            if all(
                need[0] <= cap[0] and need[1] <= cap[1]
                for need, cap in zip(demand, spare.demand, strict=True)
            ):
                return held.pop(0)
            del self._held[meters]
            self._expires.pop(meters, None)
        for small in held:
            self._release(small)
        return None

    def wanted(self, demand: Demand) -> tuple[int, Demand]:
        """How many spares to ask for with an admission of ``demand``, and their demand:
        none for a call that does not follow another one closely."""
        now = time.monotonic()
        follows, self._last = now - self._last < self.ttl, now
        self._recent.append(demand)
        if not follows:
            return 0, demand
        meters = tuple(need[2] for need in demand)
        caps = [[need[0], need[1]] for need in demand]
        for other in self._recent:
            if tuple(need[2] for need in other) == meters:
                for cap, need in zip(caps, other, strict=True):
                    cap[0], cap[1] = max(cap[0], need[0]), max(cap[1], need[1])
        return SPARES, [(a, est, key) for (a, est), key in zip(caps, meters, strict=True)]

    def add(self, spares: list[RedisReservation]) -> None:
        if not spares:
            return
        meters = tuple(need[2] for need in spares[0].demand)
        with self._lock:
            self._expires[meters] = time.monotonic() + self.ttl
            self._held.setdefault(meters, []).extend(spares)

    def expire(self, force: bool = False) -> float | None:
        """Give back the spares held past their time (all, if ``force``); returns the
        seconds until the next are due, None if none is held."""
        now = time.monotonic()
        gone: list[RedisReservation] = []
        next_due: float | None = None
        with self._lock:
            for meters in list(self._held):
                due = self._expires.get(meters, now)
                if force or due <= now or not self._held[meters]:
                    gone.extend(self._held.pop(meters))
                    self._expires.pop(meters, None)
                elif next_due is None or due < next_due:
                    next_due = due
        for spare in gone:
            self._release(spare)
        return None if next_due is None else next_due - now

    def holding(self) -> dict[tuple[int, Hashable], float]:
        """What the spares held now hold, by (resource index, partition key)."""
        holding: dict[tuple[int, Hashable], float] = {}
        with self._lock:
            for held in self._held.values():
                for spare in held:
                    for index, need in enumerate(spare.demand):
                        key = (index, need[2])
                        holding[key] = holding.get(key, 0.0) + need[0] + need[1]
        return holding

    def __len__(self) -> int:
        with self._lock:
            return sum(len(held) for held in self._held.values())
