"""The in-memory ledger's side of agreeing with the provider: its reports, its refusals,
and the settle rule they reveal (``InMemoryLedger`` is made of this and the bookkeeping
of ``rate_limited.ledgers.memory``).

**Agreeing with the provider.** ``reconcile`` takes what a response's rate-limit headers
say was left when the provider took the request. The ledger compares it with the lowest
room it believed in between that request's admission and now, and bills what it believed
above it (``rate_limited._reconcile`` says why that reading is safe whatever the order in
which requests arrived). A 429 (``refused``) is reconciled from its headers when it has
them, else the resource that was closest to its quota at the request's admission is
corrected: the provider had less than the request needed where the ledger saw that and
more. A bucket is billed what it believed was free plus the request's charge (a level that
drains at the refill rate: the burst the provider did not allow is given up, the pace is
kept); a window only the request's charge (billing its free room would block it for a
whole window).

**Discovering the rule.** A bucket meter of a resource with an estimate that receives
headers also keeps a *twin*: its calls billed by the other rule, corrected by the same
headers against its own belief. Whenever the calls settled since the last look have
unused estimates (what the two rules bill differently) worth the vote margin (5% of the
quota), the corrections each view needed meanwhile are weighed (``_weigh``): the view of
the provider's rule needs none for them, the other about all. Switching to ``"actual"``
(the provider refunds) is the risky way, so it also needs the provider to have shown
more room than the ``"reserved"`` view can explain, beyond what was in flight and the
refill since. Three such windows in a row switch the resource (every key) once and for
all, the meter taking its twin's view: the capacity a refunding provider hands back is
used, and an ``"actual"`` view of a provider that keeps what it reserves stops being
corrected call after call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable
from typing import TYPE_CHECKING

from rate_limited._meters import BucketMeter, Meter
from rate_limited._reconcile import Mark, Track, Votes, correct, generous
from rate_limited.ledgers._reservation import Reservation
from rate_limited.ledgers.base import Settle

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["ProviderReports"]

logger = logging.getLogger("rate_limited")


class ProviderReports:
    """What ``InMemoryLedger`` does with what the provider says (a mixin: the state is the
    ledger's, declared here for the type checker)."""

    __slots__ = ("_reported", "_rules", "_tracks", "_votes")

    names: list[str]
    _resources: list[Resource]
    #: Whether a provider reports on the calls (``expect_reports``).
    _reported: bool
    #: Each resource's settle rule now (a new tuple when one is discovered).
    _rules: tuple[Settle, ...]
    #: Meters the provider reports on (by id), made by their first report.
    _tracks: dict[int, Track]
    _votes: Votes

    def _all(self, index: int) -> list[Meter]:
        raise NotImplementedError

    def _index(self, resource: str) -> int:
        raise NotImplementedError

    def meter(self, resource: str, partition: Hashable = None) -> Meter:
        raise NotImplementedError

    def release(self, reservation: Reservation, now: float) -> None:
        raise NotImplementedError

    def expect_reports(self) -> None:
        """The provider will report on the calls (a ``FeedbackSource`` function): keep
        from now on what ``reconcile`` needs, for every meter (and every new key's)."""
        if self._reported:
            return
        self._reported = True
        for index in range(len(self.names)):
            for meter in self._all(index):
                if id(meter) not in self._tracks:
                    self._track(index, meter)

    def _track(self, index: int, meter: Meter) -> Track:
        twin = (
            not self._votes.decided[index]
            and self._resources[index].max_results_usage_estimator is not None
        )
        track = self._tracks[id(meter)] = Track(meter, twin)
        return track

    def _rules_of(self, reservation: Reservation) -> tuple[Settle, ...]:
        """Each resource's rule for ``reservation``'s call (``_rule``): the ledger's own
        tuple while no rule switched since the admission (a switch makes a new tuple)."""
        rules = self._rules
        if reservation.rules is rules:
            return rules
        return tuple(self._rule(reservation, index) for index in range(len(rules)))

    def _rule(self, reservation: Reservation, index: int) -> Settle:
        """The rule a call is billed by on its meter: the one it was admitted under, unless
        the resource switched since and the meter took its twin's view of the call."""
        rule = self._rules[index]
        then = reservation.rules[index]
        if then == rule:
            return rule
        mark = reservation.mark(index)
        return rule if mark is not None and mark[4] is not None else then

    def _untrack(self, reservation: Reservation, index: int) -> tuple[Track, Mark | None] | None:
        """The reservation's call on meter ``index`` is over: out of its track's charge in
        flight. Returns the track and the call's mark if the meter has a twin."""
        if not self._tracks:
            return None
        track = self._tracks.get(id(reservation.meters[index]))
        if track is None:
            return None
        mark = reservation.mark(index)
        need = reservation.demand[index]
        track.done(need[0] + need[1], mark)
        return (track, mark) if track.twin is not None else None

    def refused(self, reservation: Reservation, now: float) -> None:
        """The provider refused the call (HTTP 429): release it, and unless its headers
        were reconciled already, correct the resource closest to its quota at admission
        (see the module docstring)."""
        self.release(reservation, now)
        if reservation.reconciled:
            return
        tightest, lowest = -1, math.inf
        for index, (meter, need) in enumerate(
            zip(reservation.meters, reservation.demand, strict=True)
        ):
            held = reservation.held[2 * index]
            if need[0] + need[1] > 0 and (meter.quota - held) / meter.quota < lowest:
                tightest, lowest = index, (meter.quota - held) / meter.quota
        if tightest < 0:
            return
        meter = reservation.meters[tightest]
        charge = sum(reservation.demand[tightest][:2])
        held, corrected = reservation.held_at(tightest)
        free = meter.quota - held if isinstance(meter, BucketMeter) else 0.0
        # Less what was corrected since the admission (other refusals of the same moment).
        fixed = correct(meter, free + charge - (meter.corrected - corrected), now)
        track = self._tracks.get(id(meter)) if self._tracks else None
        mark = reservation.mark(tightest)
        if track is None or track.twin is None or mark is None or mark[4] is None:
            return
        twin = track.twin
        free = twin.quota - mark[5]
        track.twin_fixed += correct(twin, free + charge - (twin.corrected - mark[6]), now)
        track.fixed += fixed  # weighed with the next header

    # -- the provider's view -------------------------------------------------------------------
    def reconcile(
        self,
        resource: str,
        remaining: float,
        now: float,
        *,
        partition: Hashable = None,
        admission: Reservation | None = None,
        precision: float = 0.0,
        refused: bool = False,
    ) -> float:
        """The provider says ``remaining`` (± ``precision``) of ``resource`` was left after
        it took the request of ``admission`` (without it, if ``refused``). Bills what the
        ledger believed above that, and returns it (see ``rate_limited._reconcile``)."""
        index = self._index(resource)
        meter = self.meter(resource, partition)
        track = self._tracks.get(id(meter))
        if track is None:  # not expecting reports: remember admissions from now on
            track = self._track(index, meter)
        ours = (
            admission is not None
            and index < len(admission.meters)
            and admission.meters[index] is meter
        )
        mark = admission.mark(index) if ours else None  # type: ignore[union-attr]
        if refused:
            if not ours:
                return 0.0  # what the refused request held is unknown: ``refused`` handles it
            assert admission is not None
            admission.reconciled = True
            remaining -= sum(admission.demand[index][:2])  # as if it had been taken
        if mark is None:
            # Not a call admitted since the ledger tracks this meter (or one too old to
            # compare with): what it believed then is unknown, so nothing can be told.
            return 0.0
        if refused:
            # The provider refused it: more careful is right, so compare with what the
            # ledger believed at the admission itself (requests admitted after it and
            # arrived before count against it here, which only makes it more careful).
            assert admission is not None
            held, corrected = admission.held_at(index)
            low: float | None = meter.quota - held - (meter.corrected - corrected)
        else:
            low = Track.lowest(meter, track.lows, mark[0], now)
        if low is None:
            return 0.0
        was_generous = False
        if track.twin is not None and mark[4] is not None and not refused:
            assert admission is not None
            held, corrected = admission.held[2 * index], mark[3]
            believed = meter.quota - held - (meter.corrected - corrected)
            charge = sum(admission.demand[index][:2])
            was_generous = generous(
                meter, believed, mark, charge, now - admission.at, remaining, precision
            )
        fixed = correct(meter, low - (remaining - precision), now)
        if track.twin is not None and track.twin_lows is not None and mark[4] is not None:
            twin_low = Track.lowest(track.twin, track.twin_lows, mark[0], now)
            if twin_low is not None:
                track.twin_fixed += correct(track.twin, twin_low - (remaining - precision), now)
            track.fixed += fixed
            rule = self._rules[index]
            if not refused and self._votes.weigh(index, rule, meter, track, was_generous):
                self._switch(index, now)
        return fixed

    def _switch(self, index: int, now: float) -> None:
        old = self._rules[index]
        new: Settle = "actual" if old == "reserved" else "reserved"
        rules = list(self._rules)
        rules[index] = new
        self._rules = tuple(rules)  # a new tuple: reservations keep the rules of their time
        for meter in self._all(index):
            track = self._tracks.get(id(meter))
            if track is not None and track.twin is not None and isinstance(meter, BucketMeter):
                meter.take_state(track.twin, now)
                track.lows = track.twin_lows or track.lows
                track.twin = track.twin_lows = None
        what = (
            "hands back the unused part of what it reserves"
            if new == "actual"
            else "keeps what it reserves, used or not"
        )
        logger.info(
            "The provider's rate-limit headers show it %s for %r: billing it by the %r rule "
            "from now on.",
            what,
            self.names[index],
            new,
        )
