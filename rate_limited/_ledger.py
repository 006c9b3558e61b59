"""The in-memory quota ledger: how much of each resource is used, held, and when it frees.

Pure bookkeeping with time passed in explicitly (``now`` is ``loop.time()`` in the engine),
so it is tested without any clock and a 60 s window costs no real time.

Two refill models, one interface (``_Meter``):

* ``WindowMeter`` ("window"): every usage expires whole ``window`` seconds after it was
  logged, as in rate_limited 0.4, but with exact float arithmetic (0.4 compared
  ``timedelta.seconds``, so a 0.5 s window lasted 1 s and a 1-day window never expired).
* ``BucketMeter`` ("bucket"): usage drains continuously at ``quota / window`` per second,
  the way OpenAI and Anthropic refill their limits.

Each meter also holds *reservations*: results-usage estimates of calls in flight, which
count against the quota until the call settles and its actual usage replaces them.

``Ledger`` combines one meter per resource and admits a call only if every resource has
room for its whole demand, reserving on all of them at once (the engine runs on one event
loop thread, so this is atomic without locks).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rate_limited.resources import Resource

#: Relative slack in comparisons, so that float rounding never makes a call wait for
#: an amount of capacity that is smaller than rounding noise.
_EPS = 1e-9


class _Meter:
    """Usage of one resource: ``quota`` per ``window`` seconds."""

    __slots__ = ("_reserved", "quota", "window")

    def __init__(self, quota: float, window: float) -> None:
        self.quota = float(quota)
        self.window = float(window)
        self._reserved = 0.0

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

    # -- reservations --------------------------------------------------------------------
    @property
    def reserved(self) -> float:
        return self._reserved

    def reserve(self, amount: float) -> None:
        self._reserved += amount

    def unreserve(self, amount: float) -> None:
        self._reserved = max(0.0, self._reserved - amount)

    # -- queries -------------------------------------------------------------------------
    def available(self, now: float) -> float:
        return self.quota - self.used(now) - self._reserved

    def fits(self, needed: float, now: float) -> bool:
        return self.available(now) >= needed - _EPS * self.quota


class WindowMeter(_Meter):
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
        self._expire(now)
        return max(0.0, self._used)

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
        slack = _EPS * self.quota
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


class BucketMeter(_Meter):
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
        slack = _EPS * self.quota
        excess = self._level + self._reserved + needed - self.quota
        if excess <= slack:
            return now
        if self._reserved + needed > self.quota + slack:
            return math.inf
        return max(now, self._since) + excess / self._rate  # no refill before _since

    def next_expiry(self, now: float) -> float | None:
        self._drain(now)
        return max(now, self._since) + self._level / self._rate if self._level > 0 else None


def make_meter(refill: str, quota: float, window: float, refill_delay: float = 0.0) -> _Meter:
    if refill == "bucket":
        return BucketMeter(quota, window, refill_delay)
    return WindowMeter(quota, window)


class Reservation:
    """What one admitted attempt holds: tokens of its billed arguments usage and its
    reserved results estimates, per resource (aligned with ``Ledger.meters``).

    ``deferred`` is the arguments usage of an attempt admitted but not started yet (a sync
    call waiting for its thread): held like an estimate until ``Ledger.begin`` bills it
    at the moment the function starts, so that a window counts from the real start.
    """

    __slots__ = ("billed", "deferred", "estimates")

    def __init__(
        self,
        billed: list[object],
        estimates: Sequence[float],
        deferred: Sequence[float] | None = None,
    ) -> None:
        self.billed = billed
        self.estimates = estimates
        self.deferred = deferred


class Ledger:
    """One meter per resource; admission, settlement and wake-up times for the engine."""

    __slots__ = ("meters", "names")

    def __init__(self, resources: Sequence[Resource]) -> None:
        self.names = [r.name for r in resources]
        self.meters = [
            make_meter(r.refill, r.quota, r.time_window_seconds, r.refill_delay) for r in resources
        ]

    def try_reserve(
        self, demand: Sequence[tuple[float, float]], now: float, *, defer: bool = False
    ) -> Reservation | None:
        """Admit a call needing ``demand[i] = (arguments usage, results estimate)`` of
        resource i, or return None without changing anything.

        ``defer``: hold the arguments usage instead of billing it; ``begin`` bills it when
        the call actually starts.
        """
        meters = self.meters
        for meter, (args_usage, estimate) in zip(meters, demand, strict=True):
            if not meter.fits(args_usage + estimate, now):
                return None
        if defer:
            for meter, (args_usage, estimate) in zip(meters, demand, strict=True):
                if args_usage + estimate:
                    meter.reserve(args_usage + estimate)
            return Reservation(
                [None] * len(meters),
                [estimate for _, estimate in demand],
                [args_usage for args_usage, _ in demand],
            )
        billed = []
        for meter, (args_usage, estimate) in zip(meters, demand, strict=True):
            billed.append(meter.bill(args_usage, now))
            if estimate:
                meter.reserve(estimate)
        return Reservation(billed, [estimate for _, estimate in demand])

    def begin(self, reservation: Reservation, now: float) -> None:
        """The call started at ``now``: bill its deferred arguments usage (no-op if not
        deferred). ``now`` may be a little in the past (when the thread started it)."""
        deferred = reservation.deferred
        if deferred is None:
            return
        reservation.deferred = None
        billed = reservation.billed
        for i, (meter, args_usage) in enumerate(zip(self.meters, deferred, strict=True)):
            if args_usage:
                meter.unreserve(args_usage)
                billed[i] = meter.bill(args_usage, now)

    def settle(self, reservation: Reservation, results_usage: Sequence[float], now: float) -> None:
        """The call returned: release its estimates and bill its actual results usage."""
        self.begin(reservation, now)
        for meter, estimate, actual in zip(
            self.meters, reservation.estimates, results_usage, strict=True
        ):
            if estimate:
                meter.unreserve(estimate)
            if actual:
                meter.bill(actual, now)

    def keep(self, reservation: Reservation, now: float) -> None:
        """The call failed in a way that may have been billed: the estimate becomes usage."""
        self.begin(reservation, now)
        for meter, estimate in zip(self.meters, reservation.estimates, strict=True):
            if estimate:
                meter.unreserve(estimate)
                meter.bill(estimate, now)

    def release(self, reservation: Reservation, now: float) -> None:
        """The call proved it was not billed (never sent, refused, 429): undo everything."""
        deferred = reservation.deferred
        if deferred is not None:  # never started: only held
            reservation.deferred = None
            for meter, args_usage in zip(self.meters, deferred, strict=True):
                if args_usage:
                    meter.unreserve(args_usage)
        for meter, estimate, token in zip(
            self.meters, reservation.estimates, reservation.billed, strict=True
        ):
            if estimate:
                meter.unreserve(estimate)
            meter.refund(token, now)

    def next_free_time(self, demand: Sequence[tuple[float, float]], now: float) -> float:
        """Earliest time at which ``demand`` fits, ``inf`` if it waits on a release."""
        when = now
        for meter, (args_usage, estimate) in zip(self.meters, demand, strict=True):
            when = max(when, meter.free_at(args_usage + estimate, now))
        return when

    def binding(self, demand: Sequence[tuple[float, float]], now: float) -> str | None:
        """Name of the resource that keeps ``demand`` from fitting now (for messages)."""
        for name, meter, (args_usage, estimate) in zip(
            self.names, self.meters, demand, strict=True
        ):
            if not meter.fits(args_usage + estimate, now):
                return name
        return None

    def snapshot(self, now: float) -> dict[str, tuple[float, float, float]]:
        """``{name: (used, reserved, quota)}`` for progress displays."""
        return {
            name: (meter.used(now), meter.reserved, meter.quota)
            for name, meter in zip(self.names, self.meters, strict=True)
        }
