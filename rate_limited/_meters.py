"""Meters: the usage of one quota, as pure arithmetic with time passed in explicitly.

``now`` is ``loop.time()`` in the engine, so meters are tested without any clock and a
60 s window costs no real time. Two refill models, one interface (``Meter``):

* ``WindowMeter`` ("window"): every usage expires whole ``window`` seconds after it was
  logged, as in rate_limited 0.4, but with exact float arithmetic (0.4 compared
  ``timedelta.seconds``, so a 0.5 s window lasted 1 s and a 1-day window never expired).
* ``BucketMeter`` ("bucket"): usage drains continuously at ``quota / window`` per second,
  the way OpenAI and Anthropic refill their limits.

A meter also holds *reservations* (results-usage estimates of calls in flight, counted
against the quota until the call settles) and ``corrected``: the total the ledger billed
to it to agree with what the provider reported (``rate_limited.ledgers.memory``).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["EPS", "BucketMeter", "Meter", "WindowMeter", "make_meter"]

#: Relative slack in comparisons, so that float rounding never makes a call wait for
#: an amount of capacity that is smaller than rounding noise.
EPS = 1e-9


class Meter:
    """Usage of one resource: ``quota`` per ``window`` seconds."""

    __slots__ = ("_reserved", "corrected", "quota", "window")

    def __init__(self, quota: float, window: float) -> None:
        self.quota = float(quota)
        self.window = float(window)
        self._reserved = 0.0
        #: Usage billed so far to agree with the provider (rate-limit headers, 429s).
        self.corrected = 0.0

    # -- usage -------------------------------------------------------------------------
    def used(self, now: float) -> float:
        """Usage still counting against the quota at ``now`` (reservations excluded)."""
        raise NotImplementedError

    def bill(self, amount: float, now: float) -> object:
        """Log ``amount`` as used at ``now``; returns a token that ``refund`` accepts."""
        raise NotImplementedError

    def refund(self, token: object, now: float) -> None:
        """Take back a usage logged by ``bill`` (the call proved it was not billed)."""
        raise NotImplementedError

    def free_at(self, needed: float, now: float) -> float:
        """Earliest time >= now at which ``needed`` fits; ``inf`` if only a release helps."""
        raise NotImplementedError

    def next_expiry(self, now: float) -> float | None:
        """When the usage logged so far has drained or expired, or None if there is none."""
        raise NotImplementedError

    def set_quota(self, quota: float) -> None:
        """Enforce ``quota`` from now on; what is in use stays in use."""
        self.quota = float(quota)

    # -- reservations --------------------------------------------------------------------
    @property
    def reserved(self) -> float:
        return self._reserved

    def reserve(self, amount: float) -> None:
        self._reserved += amount

    def unreserve(self, amount: float) -> None:
        self._reserved = max(0.0, self._reserved - amount)

    # -- queries -------------------------------------------------------------------------
    def held(self, now: float) -> float:
        """Usage plus reservations: what counts against the quota at ``now``."""
        return self.used(now) + self._reserved

    def available(self, now: float) -> float:
        return self.quota - self.used(now) - self._reserved

    def fits(self, needed: float, now: float) -> bool:
        quota = self.quota
        return quota - self.used(now) - self._reserved >= needed - EPS * quota

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} quota={self.quota:g}/{self.window:g}s "
            f"reserved={self._reserved:g} corrected={self.corrected:g}>"
        )


class WindowMeter(Meter):
    """Each usage expires whole ``window`` seconds after it was logged."""

    __slots__ = ("_log", "_used")

    def __init__(self, quota: float, window: float) -> None:
        super().__init__(quota, window)
        # [logged_at, amount] pairs in time order; lists so that refund can zero one.
        self._log: deque[list[float]] = deque()
        self._used = 0.0

    def _expire(self, now: float) -> None:
        log, window = self._log, self.window
        while log and log[0][0] + window <= now:
            entry = log.popleft()
            self._used -= entry[1]
            entry[1] = 0.0  # a refund of an expired usage is then a no-op
        if not log:
            self._used = 0.0  # no drift from float sums once everything has expired

    def used(self, now: float) -> float:
        log = self._log
        if not log or log[0][0] + self.window <= now:  # else nothing expires: no call
            self._expire(now)
        used = self._used
        return used if used > 0.0 else 0.0

    def bill(self, amount: float, now: float) -> object:
        """Log ``amount`` at ``now``, which may be a little in the past (a sync call billed
        at the instant its thread started it): the log stays in time order."""
        if amount <= 0:
            return None
        log = self._log
        if log and log[-1][0] == now:  # same instant: merge, keeps the log short
            entry = log[-1]
            entry[1] += amount
            self._used += amount
            return (entry, amount)
        entry = [now, float(amount)]
        if not log or log[-1][0] < now:
            log.append(entry)
        else:  # earlier than the last entries (a few at most): insert in its place
            at = len(log)
            while at and log[at - 1][0] > now:
                at -= 1
            log.insert(at, entry)
        self._used += amount
        return (entry, amount)

    def refund(self, token: object, now: float) -> None:
        if token is None:
            return
        assert isinstance(token, tuple)
        entry: list[float] = token[0]
        amount: float = token[1]
        self._expire(now)
        take = min(amount, entry[1])
        entry[1] -= take
        self._used -= take

    def free_at(self, needed: float, now: float) -> float:
        self._expire(now)
        slack = EPS * self.quota
        excess = self._used + self._reserved + needed - self.quota
        if excess <= slack:
            return now
        if self._reserved + needed > self.quota + slack:
            return math.inf  # only a settling call can make room
        for logged_at, amount in self._log:
            excess -= amount
            if excess <= slack:
                return logged_at + self.window
        return math.inf  # unreachable unless the log is inconsistent

    def next_expiry(self, now: float) -> float | None:
        """When the oldest usage expires, or None when nothing is logged."""
        self._expire(now)
        return self._log[0][0] + self.window if self._log else None


class BucketMeter(Meter):
    """Usage drains continuously at ``quota / window`` per second (a leaky bucket).

    An idle bucket (level 0) loses its refill, and so does the provider's. The provider's
    starts to drain when the first request *arrives*, some time after we admitted it, so
    a ledger draining from the admission would credit refill the provider never had and
    admit a request too early. With ``start_delay`` (``Resource(refill_delay=...)``; the
    provider presets use 0.5 s), a bucket going from idle to busy starts to drain that much
    later: a one-time cost of that much refill per idle period, nothing in a saturated run.
    """

    __slots__ = ("_level", "_rate", "_since", "start_delay")

    def __init__(self, quota: float, window: float, start_delay: float = 0.0) -> None:
        super().__init__(quota, window)
        self._rate = self.quota / self.window
        self._level = 0.0
        self._since = -math.inf
        self.start_delay = start_delay

    def _drain(self, now: float) -> None:
        if now > self._since:
            if self._level > 0.0:
                self._level = max(0.0, self._level - (now - self._since) * self._rate)
            self._since = now

    def used(self, now: float) -> float:
        self._drain(now)
        return self._level

    def bill(self, amount: float, now: float) -> object:
        self._drain(now)
        if amount and self._level <= 0.0 and now >= self._since:
            self._since = now + self.start_delay  # idle -> busy: see the class docstring
        self._level += amount
        return (amount, now) if amount else None

    def refund(self, token: object, now: float) -> None:
        """Take back what is left of a usage: the part that has drained since is gone."""
        self._drain(now)
        if token is None:
            return
        assert isinstance(token, tuple)
        amount, billed_at = token
        remaining = amount - (now - billed_at) * self._rate
        if remaining > 0:
            self._level = max(0.0, self._level - remaining)

    def free_at(self, needed: float, now: float) -> float:
        self._drain(now)
        slack = EPS * self.quota
        excess = self._level + self._reserved + needed - self.quota
        if excess <= slack:
            return now
        if self._reserved + needed > self.quota + slack:
            return math.inf
        return max(now, self._since) + excess / self._rate  # no refill before _since

    def next_expiry(self, now: float) -> float | None:
        self._drain(now)
        return max(now, self._since) + self._level / self._rate if self._level > 0 else None

    def set_quota(self, quota: float) -> None:
        super().set_quota(quota)
        self._rate = self.quota / self.window

    def copy(self) -> BucketMeter:
        """An independent meter in the same state (level, reservations, refill)."""
        twin = BucketMeter(self.quota, self.window, self.start_delay)
        twin._level, twin._since, twin._reserved = self._level, self._since, self._reserved
        twin.corrected = self.corrected
        return twin

    def take_state(self, other: BucketMeter, now: float) -> None:
        """Adopt ``other``'s usage and reservations: the ledger switches to the view
        ``other`` kept of the same calls (see ``rate_limited.ledgers.memory``)."""
        other._drain(now)
        self._drain(now)
        self._level, self._since, self._reserved = other._level, other._since, other._reserved
        self.corrected = other.corrected


def make_meter(refill: str, quota: float, window: float, refill_delay: float = 0.0) -> Meter:
    if refill == "bucket":
        return BucketMeter(quota, window, refill_delay)
    return WindowMeter(quota, window)
