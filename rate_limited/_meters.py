"""Meters: the usage of one quota, as pure arithmetic with time passed in explicitly.

``now`` is ``loop.time()`` in the engine, so meters are tested without any clock and a
60 s window costs no real time. Two refill models, one interface (``Meter``):

* ``WindowMeter`` ("window"): every usage expires whole ``window`` seconds after it was
  logged, as in rate_limited 0.4, but with exact float arithmetic (0.4 compared
  ``timedelta.seconds``, so a 0.5 s window lasted 1 s and a 1-day window never expired),
  and in bounded memory: usages close in time share a bucket (``WindowMeter`` says the
  rule, which never lets a usage expire early).
* ``BucketMeter`` ("bucket"): usage drains continuously at ``quota / window`` per second,
  the way OpenAI and Anthropic refill their limits.

A meter also holds *reservations* (results-usage estimates of calls in flight, counted
against the quota until the call settles) and ``corrected``: the total the ledger billed
to it to agree with what the provider reported (``rate_limited.ledgers.memory``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

__all__ = ["EPS", "WINDOW_SLOTS", "BucketMeter", "Meter", "Settle", "WindowMeter", "make_meter"]

#: Relative slack in comparisons, so that float rounding never makes a call wait for
#: an amount of capacity that is smaller than rounding noise.
EPS = 1e-9
#: What the provider bills for a call (see ``Resource(settle=...)``).
Settle = Literal["actual", "reserved"]
#: A window meter coalesces the usages of each ``window / WINDOW_SLOTS`` seconds.
WINDOW_SLOTS = 1000


class Meter:
    """Usage of one resource: ``quota`` per ``window`` seconds."""

    __slots__ = ("corrected", "level", "quota", "reserved", "stale_at", "window")

    def __init__(self, quota: float, window: float) -> None:
        self.quota = float(quota)
        self.window = float(window)
        #: Results-usage estimates of the calls in flight (see the module docstring); the
        #: ledger adds to it in place on its admission path.
        self.reserved = 0.0
        #: Usage billed so far to agree with the provider (rate-limit headers, 429s).
        self.corrected = 0.0
        #: Usage counting against the quota (reservations excluded), as of the last
        #: ``refresh``; exact at any instant before ``stale_at``. At or after it, usage
        #: may have expired or drained: ``refresh(now)`` first. ``used`` and ``held`` do;
        #: the ledger's compiled per-call path reads the two fields itself (one test and
        #: no call per meter, see ``rate_limited.ledgers._compiled``).
        self.level = 0.0
        self.stale_at = math.inf

    # -- usage -------------------------------------------------------------------------
    def refresh(self, now: float) -> None:
        """Bring ``level`` (and ``stale_at``) up to ``now``: expire or drain what no longer
        counts. ``now`` never goes back (the engine's loop clock)."""
        raise NotImplementedError

    def used(self, now: float) -> float:
        """Usage still counting against the quota at ``now`` (reservations excluded)."""
        if now >= self.stale_at:
            self.refresh(now)
        return self.level

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

    def charge_earlier(self, entries: Sequence[tuple[float, float]], now: float) -> float:
        """Charge usage billed before this meter existed (an earlier process's calls):
        ``(time, amount)`` pairs, times <= ``now`` in this meter's clock. Returns what of
        it still counts at ``now``."""
        raise NotImplementedError

    def set_quota(self, quota: float) -> None:
        """Enforce ``quota`` from now on; what is in use stays in use."""
        self.quota = float(quota)

    # -- reservations --------------------------------------------------------------------
    def reserve(self, amount: float) -> None:
        self.reserved += amount

    def unreserve(self, amount: float) -> None:
        reserved = self.reserved - amount
        self.reserved = reserved if reserved > 0.0 else 0.0

    def settle(self, rule: Settle, estimate: float, actual: float, now: float) -> float:
        """Settle one call's results by ``rule`` (its ``estimate`` was billed at admission
        if ``"reserved"``, else held); returns what its results were billed."""
        if rule == "reserved":
            if actual > estimate:
                self.bill(actual - estimate, now)
                return actual
            return estimate
        if estimate:  # ``unreserve``, inlined: this runs for every call
            reserved = self.reserved - estimate
            self.reserved = reserved if reserved > 0.0 else 0.0
        if actual:
            self.bill(actual, now)
        return actual

    # -- queries -------------------------------------------------------------------------
    def held(self, now: float) -> float:
        """Usage plus reservations: what counts against the quota at ``now``."""
        if now >= self.stale_at:
            self.refresh(now)
        return self.level + self.reserved

    def available(self, now: float) -> float:
        return self.quota - self.held(now)

    def fits(self, needed: float, now: float) -> bool:
        quota = self.quota
        return quota - self.held(now) >= needed - EPS * quota

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} quota={self.quota:g}/{self.window:g}s "
            f"reserved={self.reserved:g} corrected={self.corrected:g}>"
        )


class WindowMeter(Meter):
    """Each usage counts against the quota for ``window`` seconds from when it was logged.

    **Buckets.** The log coalesces usages into buckets, so that its size is bounded
    whatever the rate of calls (a million calls a minute log at most
    ``WINDOW_SLOTS + 2`` buckets, not a million entries). The rule, with
    ``grain = window / WINDOW_SLOTS``:

    * a usage at ``t`` joins the oldest bucket opened less than ``grain`` before ``t``
      (or after ``t``: a usage logged a little in the past, see ``bill``); with none, it
      opens a new bucket at ``t``, which is then the newest;
    * a bucket is stamped with the latest time among its usages, and all of it expires
      ``window`` seconds after its stamp.

    So a usage never expires before ``t + window`` (it only counts longer, by less than
    ``grain`` when logged in time order): the meter never admits more than the quota in
    any window of ``window`` seconds, exactly as a log of every usage would, and a
    saturated meter loses at most ``grain / (window + grain)`` of the quota's throughput
    (under 0.1%). Usages more than ``grain`` apart keep buckets of their own and expire
    exactly ``window`` after them. Buckets are opened at least ``grain`` apart and the
    oldest still counting opened less than ``window + grain`` ago, hence the bound, and
    ``used`` / ``bill`` cost O(1) amortized.
    """

    __slots__ = ("_closes", "_grain", "_log", "_newest", "_opened")

    def __init__(self, quota: float, window: float) -> None:
        super().__init__(quota, window)
        self._grain = self.window / WINDOW_SLOTS
        # [stamp, amount, opened] buckets in time order; lists, so that a refund can take
        # from one and an expiry can zero it. ``stale_at`` is when the oldest expires (a
        # bucket's stamp only moves later, so it may be earlier than that, never later:
        # a ``refresh`` then finds nothing to expire and sets it right), ``inf`` if none.
        self._log: deque[list[float]] = deque()
        # The newest bucket ever opened, and the instants a usage joins it from and until
        # (``[_opened, _closes)``: ``bill``'s usual case, two comparisons). Once it has
        # expired (and left the log) a usage can no longer join it: it expires ``window``
        # after it was opened, and the window is longer than a grain.
        self._newest: list[float] = []  # none yet: nothing joins it before ``_opened``
        self._opened = math.inf
        self._closes = -math.inf

    def refresh(self, now: float) -> None:
        log, window = self._log, self.window
        level = self.level
        while log and log[0][0] + window <= now:
            bucket = log.popleft()
            level -= bucket[1]
            bucket[1] = 0.0  # a refund of an expired usage is then a no-op
        if log:
            self.level = level if level > 0.0 else 0.0
            self.stale_at = log[0][0] + window
        else:
            self.level = 0.0  # no drift from float sums once everything has expired
            self.stale_at = math.inf

    def bill(self, amount: float, now: float) -> object:
        """Log ``amount`` at ``now``, which may be a little in the past (a sync call billed
        at the instant its thread started it): it then joins the bucket the rule gives."""
        if amount <= 0:
            return None
        if self._opened <= now < self._closes:  # in time order, within the newest's grain
            bucket = self._newest
            if now > bucket[0]:
                bucket[0] = now
            bucket[1] += amount
            self.level += amount
            return (bucket, amount)
        log = self._log
        if log:
            if now < self._opened:  # before the newest bucket opened
                return self._bill_past(amount, now)
            if now >= self.stale_at:  # a new bucket: drop the expired ones first
                self.refresh(now)
        if not log:
            self.stale_at = now + self.window
        bucket = [now, float(amount), now]
        log.append(bucket)
        self._newest, self._opened, self._closes = bucket, now, now + self._grain
        self.level += amount
        return (bucket, amount)

    def _bill_past(self, amount: float, now: float) -> object:
        """``now`` is before the newest bucket opened: join the oldest bucket opened less
        than a grain before ``now``, or after it (it then counts a little longer)."""
        log, grain = self._log, self._grain
        at = len(log) - 1
        while at and log[at - 1][2] + grain > now:
            at -= 1
        bucket = log[at]
        if now > bucket[0]:
            bucket[0] = now
        bucket[1] += amount
        self.level += amount
        return (bucket, amount)

    def refund(self, token: object, now: float) -> None:
        if token is None:
            return
        assert isinstance(token, tuple)
        bucket: list[float] = token[0]
        amount: float = token[1]
        self.refresh(now)
        take = min(amount, bucket[1])
        bucket[1] -= take
        level = self.level - take
        self.level = level if level > 0.0 else 0.0

    def free_at(self, needed: float, now: float) -> float:
        self.refresh(now)
        slack = EPS * self.quota
        excess = self.level + self.reserved + needed - self.quota
        if excess <= slack:
            return now
        if self.reserved + needed > self.quota + slack:
            return math.inf  # only a settling call can make room
        for stamp, amount, _ in self._log:
            excess -= amount
            if excess <= slack:
                return stamp + self.window
        return math.inf  # unreachable unless the log is inconsistent

    def charge_earlier(self, entries: Sequence[tuple[float, float]], now: float) -> float:
        """Each usage still in its window is logged at its own time, and expires with it."""
        self.refresh(now)
        live = 0.0
        for at, amount in sorted(entries):
            if amount > 0 and at + self.window > now:
                self.bill(amount, min(at, now))
                live += amount
        return live

    def next_expiry(self, now: float) -> float | None:
        """When the oldest usage expires, or None when nothing is logged."""
        self.refresh(now)
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

    __slots__ = ("_rate", "start_delay")

    def __init__(self, quota: float, window: float, start_delay: float = 0.0) -> None:
        super().__init__(quota, window)
        self._rate = self.quota / self.window
        # ``level`` is the level at ``stale_at``, from which it drains (not before it: see
        # ``start_delay``); ``refresh(now)`` drains it to ``now``.
        self.stale_at = -math.inf
        self.start_delay = start_delay

    def refresh(self, now: float) -> None:
        since = self.stale_at
        if now > since:
            level = self.level
            if level > 0.0:
                level -= (now - since) * self._rate
                self.level = level if level > 0.0 else 0.0
            self.stale_at = now

    def bill(self, amount: float, now: float) -> object:
        if now > self.stale_at:
            self.refresh(now)
        if amount and self.level <= 0.0 and now >= self.stale_at:
            self.stale_at = now + self.start_delay  # idle -> busy: see the class docstring
        self.level += amount
        return (amount, now) if amount else None

    def refund(self, token: object, now: float) -> None:
        """Take back what is left of a usage: the part that has drained since is gone."""
        self.refresh(now)
        if token is None:
            return
        assert isinstance(token, tuple)
        amount, billed_at = token
        remaining = amount - (now - billed_at) * self._rate
        if remaining > 0:
            self.level = max(0.0, self.level - remaining)

    def free_at(self, needed: float, now: float) -> float:
        self.refresh(now)
        slack = EPS * self.quota
        excess = self.level + self.reserved + needed - self.quota
        if excess <= slack:
            return now
        if self.reserved + needed > self.quota + slack:
            return math.inf
        return max(now, self.stale_at) + excess / self._rate  # no refill before stale_at

    def charge_earlier(self, entries: Sequence[tuple[float, float]], now: float) -> float:
        """The level an empty bucket would have at ``now`` after these usages, added to
        this one's. That level is the largest, over every usage, of the usages from it on
        less the refill since it: ``max_k (sum_{i >= k} a_i - rate * (now - t_k))``, 0 if
        none is positive (what a bucket drained to empty in between forgot no longer
        counts). Charged at ``now`` as one usage (so an idle bucket also waits its
        ``start_delay`` before it drains, as for any burst)."""
        level = suffix = 0.0
        for at, amount in sorted(entries, reverse=True):
            if amount > 0:
                suffix += amount
                level = max(level, suffix - max(0.0, now - at) * self._rate)
        if level > 0:
            self.bill(level, now)
        return level

    def next_expiry(self, now: float) -> float | None:
        self.refresh(now)
        return max(now, self.stale_at) + self.level / self._rate if self.level > 0 else None

    def set_quota(self, quota: float) -> None:
        super().set_quota(quota)
        self._rate = self.quota / self.window

    def copy(self) -> BucketMeter:
        """An independent meter in the same state (level, reservations, refill)."""
        twin = BucketMeter(self.quota, self.window, self.start_delay)
        twin.level, twin.stale_at, twin.reserved = self.level, self.stale_at, self.reserved
        twin.corrected = self.corrected
        return twin

    def take_state(self, other: BucketMeter, now: float) -> None:
        """Adopt ``other``'s usage and reservations: the ledger switches to the view
        ``other`` kept of the same calls (see ``rate_limited.ledgers.memory``)."""
        other.refresh(now)
        self.refresh(now)
        self.level, self.stale_at, self.reserved = other.level, other.stale_at, other.reserved
        self.corrected = other.corrected


def make_meter(refill: str, quota: float, window: float, refill_delay: float = 0.0) -> Meter:
    if refill == "bucket":
        return BucketMeter(quota, window, refill_delay)
    return WindowMeter(quota, window)
