"""What the ledger keeps of a meter whose provider reports on it, to agree with it.

A rate-limit header (``x-ratelimit-remaining-tokens``...) says how much the provider had
left when it took one request: at that request's *arrival*, which the ledger does not
see. Between its admission and its answer the ledger admitted other requests, some of
which may have arrived first (and are counted in the header), and the buckets refilled.
So the header is compared with the *lowest* room the ledger believed in between that
admission and now (``Lows``, corrections made since added back): whichever request
arrived when, the provider cannot have had less than that unless the ledger believed in
room that was not there. What it believed above the header is then billed (usage from
elsewhere: another process on the key, an estimate too low). A header can thus make the
ledger more careful, never less; and a ledger more careful than the provider stays so,
except for the one thing headers can settle: the settle rule.

``Track.twin`` is the same meter's calls billed by the other settle rule (and corrected
against the headers by the same reasoning); the corrections each view needs tell which
rule the provider bills by (``Ledger._weigh``).
"""

from __future__ import annotations

import bisect
import math

from rate_limited._meters import BucketMeter, Meter, Settle

__all__ = ["Lows", "Mark", "Track", "Votes", "correct", "generous", "release"]

_NO_TWIN = (math.nan, math.nan)

#: Seconds of admissions a meter remembers: a report on an older one tells nothing.
HORIZON = 300.0
#: Consecutive votes for the twin's rule before the ledger switches to it.
VOTES_TO_SWITCH = 3
#: Evidence is weighed over calls whose unused estimates add up to this fraction of the
#: quota; the provider must be this much (plus rounding) beyond what a view can explain.
VOTE_MARGIN = 0.05

#: What a tracked meter records at an admission: (admission number, charge in flight then
#: (this one's included), charge admitted so far (this one's included), corrections so
#: far, the twin's billing token (None: no twin), the twin's held and corrections right
#: after (nan: no twin)).
Mark = tuple[int, float, float, float, object, float, float]


class Lows:
    """The room believed after each admission, for "the lowest since admission k":
    a stack of (number, time, room + corrections then) increasing from bottom to top, so
    the first entry at or after k holds the minimum of everything pushed since k."""

    __slots__ = ("_numbers", "_times", "_trimmed", "_values", "count")

    def __init__(self) -> None:
        self._numbers: list[int] = []
        self._times: list[float] = []
        self._values: list[float] = []
        self._trimmed = 0  # admissions up to this number are forgotten
        #: Admissions pushed so far.
        self.count = 0

    def push(self, value: float, now: float) -> int:
        """Record the room ``value`` right after an admission at ``now``; its number."""
        self.count += 1
        numbers, times, values = self._numbers, self._times, self._values
        while values and values[-1] >= value:
            numbers.pop()
            times.pop()
            values.pop()
        numbers.append(self.count)
        times.append(now)
        values.append(value)
        if times[0] < now - HORIZON:
            old = bisect.bisect_left(times, now - HORIZON)
            self._trimmed = numbers[old - 1]
            del numbers[:old], times[:old], values[:old]
        return self.count

    def since(self, number: int) -> float | None:
        """The lowest value pushed from admission ``number`` on (None: forgotten)."""
        if number <= self._trimmed:
            return None
        at = bisect.bisect_left(self._numbers, number)
        return self._values[at] if at < len(self._values) else None


class Track:
    """A meter the provider reports on: its admissions' lows, the charge in flight, and
    (for buckets) the twin billed by the other rule."""

    __slots__ = (
        "admitted",
        "fixed",
        "in_flight",
        "lows",
        "twin",
        "twin_fixed",
        "twin_lows",
        "unused",
    )

    def __init__(self, meter: Meter, twin: bool) -> None:
        #: Charge of admitted calls not settled yet (admitted while tracked).
        self.in_flight = 0.0
        #: Charge admitted since the meter is tracked.
        self.admitted = 0.0
        #: Evidence on the rule since it was last weighed: the unused estimates of the
        #: calls settled (what the two rules bill differently), and the corrections the
        #: meter and its twin needed meanwhile.
        self.unused = 0.0
        self.fixed = 0.0
        self.twin_fixed = 0.0
        self.lows = Lows()
        #: The meter's calls billed by the other rule, since it started to be tracked.
        self.twin: BucketMeter | None = None
        self.twin_lows: Lows | None = None
        if twin and isinstance(meter, BucketMeter):
            self.twin = meter.copy()
            self.twin_lows = Lows()

    def admit(
        self,
        meter: Meter,
        rule: Settle,
        args_usage: float,
        estimate: float,
        now: float,
        held: float,
    ) -> Mark:
        """A call was admitted on ``meter`` (already billed there by ``rule``), which now
        holds ``held`` (usage and reservations)."""
        charge = args_usage + estimate
        self.in_flight += charge
        self.admitted += charge
        number = self.lows.push(meter.quota - held + meter.corrected, now)
        twin = self.twin
        if twin is None:
            return (number, self.in_flight, self.admitted, meter.corrected, None, *_NO_TWIN)
        if rule == "reserved":  # the twin bills by the other rule
            token = twin.bill(args_usage, now) or True
            if estimate:
                twin.reserve(estimate)
        else:
            token = twin.bill(charge, now) or True
        assert self.twin_lows is not None
        held = twin.held(now)
        self.twin_lows.push(twin.quota - held + twin.corrected, now)
        return (number, self.in_flight, self.admitted, meter.corrected, token, held, twin.corrected)

    def done(self, charge: float, mark: Mark | None) -> None:
        """A call admitted with ``mark`` settled, was kept or released."""
        if mark is not None:
            in_flight = self.in_flight - charge
            self.in_flight = in_flight if in_flight > 0.0 else 0.0

    def settle_twin(
        self, rule: Settle, mark: Mark | None, estimate: float, actual: float, now: float
    ) -> None:
        """Settle a call on the twin by the other rule than the meter's ``rule``."""
        twin = self.twin
        assert twin is not None
        other: Settle = "actual" if rule == "reserved" else "reserved"
        if mark is not None and mark[4] is not None:  # admitted while twinned
            twin.settle(other, estimate, actual, now)
            self.unused += max(0.0, estimate - actual)
        elif rule == "reserved":  # the twin copied its estimate as used: hand back the rest
            if actual < estimate:
                twin.refund((estimate - actual, now), now)
            elif actual > estimate:
                twin.bill(actual - estimate, now)
        else:  # the twin copied its estimate as reserved: bill it whole
            twin.unreserve(estimate)
            twin.bill(max(estimate, actual), now)

    def undo_twin(
        self,
        rule: Settle,
        mark: Mark | None,
        need: tuple[float, float],
        token: object,
        now: float,
        deferred: bool = False,
    ) -> None:
        """Release a call on the twin: ``need`` is its (arguments usage, estimate),
        ``token`` the meter's billing token, ``deferred`` whether the meter only held it
        (the twin bills a deferred call at its admission, as if it had started then)."""
        assert self.twin is not None
        if mark is not None and mark[4] is not None:
            other: Settle = "actual" if rule == "reserved" else "reserved"
            release(self.twin, other, need[1], mark[4], now)
        elif deferred:  # copied from the meter while only held
            self.twin.unreserve(need[0] + need[1])
        else:  # billed there as on the meter
            release(self.twin, rule, need[1], token, now)

    def keep_twin(self, rule: Settle, mark: Mark | None, estimate: float, now: float) -> None:
        """A call that may have been billed: its estimate stays used on the twin too."""
        assert self.twin is not None
        twinned = mark is not None and mark[4] is not None
        rule_there: Settle = rule
        if twinned:
            rule_there = "actual" if rule == "reserved" else "reserved"
        self.twin.settle(rule_there, estimate, estimate, now)

    @staticmethod
    def lowest(meter: Meter, lows: Lows, number: int, now: float) -> float | None:
        """The lowest room the meter believed in since admission ``number``, with the
        corrections made since counted as if made then (None: too long ago)."""
        low = lows.since(number)
        return None if low is None else min(meter.available(now), low - meter.corrected)


def generous(
    meter: Meter,
    believed: float,
    mark: Mark,
    charge: float,
    waited: float,
    remaining: float,
    precision: float,
) -> bool:
    """Whether the provider had more room (``remaining``) when it took a request than the
    ledger ``believed`` at its admission can explain: beyond what was then in flight
    (arriving after it) and the refill in the ``waited`` seconds since, by the margin."""
    more = mark[1] - charge + max(0.0, waited) * meter.quota / meter.window
    return remaining - believed > more + VOTE_MARGIN * meter.quota + precision


class Votes:
    """Per resource, the evidence so far on which settle rule its provider applies."""

    __slots__ = ("counts", "decided")

    def __init__(self, count: int) -> None:
        self.counts = [0] * count
        #: Resources whose rule was switched: decided once and for all.
        self.decided = [False] * count

    def weigh(
        self, index: int, rule: Settle, meter: Meter, track: Track, was_generous: bool
    ) -> bool:
        """Weigh a window of evidence, once the calls settled since it opened have unused
        estimates (what the two rules bill differently) worth the vote margin: the
        corrections each view needed meanwhile. The view of the provider's rule needs none
        for them; the other needs about all of them (the "actual" view when the provider
        keeps what it reserves), or finds the provider far more generous than it can
        explain (the "reserved" view when it refunds). True: switch to the twin's rule."""
        if self.decided[index] or track.unused < VOTE_MARGIN * meter.quota:
            return False
        needed, twin_needed = track.fixed / track.unused, track.twin_fixed / track.unused
        if rule == "reserved":
            # Switching to "actual" is the risky way: each header must show the provider
            # with that much room, while the "actual" twin has needed next to no correction
            # for the calls of the window (which stays open while the votes add up).
            favours = was_generous and twin_needed < 0.25
            if not favours:
                track.unused = track.fixed = track.twin_fixed = 0.0
            return self._count(index, favours)
        track.unused = track.fixed = track.twin_fixed = 0.0
        if needed - twin_needed >= 0.5:
            return self._count(index, True)  # the careful way round: corrections suffice
        if needed - twin_needed < 0.1:
            return self._count(index, False)
        return False

    def _count(self, index: int, favours_twin: bool) -> bool:
        self.counts[index] = self.counts[index] + 1 if favours_twin else 0
        if self.counts[index] >= VOTES_TO_SWITCH:
            self.decided[index] = True
            return True
        return False


def release(meter: Meter, rule: Settle, estimate: float, token: object, now: float) -> None:
    """Undo one call's admission on one meter (it was never billed by the provider)."""
    if rule != "reserved" and estimate:
        meter.unreserve(estimate)
    if token is not True:  # True: a twin billed nothing at admission
        meter.refund(token, now)


def correct(meter: Meter, amount: float, now: float) -> float:
    """Bill ``amount`` (if positive) as usage the provider saw and the ledger did not."""
    if not amount > 1e-9 * meter.quota:
        return 0.0
    meter.bill(amount, now)
    meter.corrected += amount
    return amount
