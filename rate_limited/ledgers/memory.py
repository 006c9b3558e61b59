"""The in-memory quota ledger: what each resource has used, holds, and when it frees.

Pure bookkeeping with time passed in explicitly (``now`` is ``loop.time()`` in the engine),
on top of the meters of ``rate_limited._meters``. The engine runs on one event loop
thread, so every operation is atomic without locks. ``InMemoryLedger`` implements
``rate_limited.ledgers.base.Ledger``, the interface a shared (Redis) ledger implements
too: a demand in, an opaque ``Reservation`` out, and the reservation back to settle,
keep, release or refuse it.

**Demand.** Per resource ``(arguments usage, results estimate, partition key)``, computed
once at ``schedule()``. A partitioned resource (``Resource(partition=...)``) has one meter
per key, made on first use with the quota ``partition_quotas`` gives that key (else the
resource's), so a call costs one dict lookup per resource, whatever the number of keys.

**Settle rules** (``Resource(settle=...)``), what the provider bills for a call:

* ``"actual"`` (rate_limited 0.4's rule, Anthropic's for output tokens): the estimate is
  held while the call runs, then the actual results usage replaces it.
* ``"reserved"`` (OpenAI's TPM): the provider counts ``prompt + max_tokens * n`` when the
  request arrives and does not give the unused part back. The ledger does the same: the
  estimate is billed at admission (it drains from then, as at the provider), and settling
  bills only what the actual usage has above it.

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
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING, cast

from rate_limited._meters import BucketMeter, Meter, make_meter
from rate_limited._reconcile import Mark, Track, Votes, correct, generous, release, settle
from rate_limited.ledgers.base import Demand, Settle

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["InMemoryLedger", "Reservation"]

logger = logging.getLogger("rate_limited")


class Reservation:
    """What one admitted attempt holds, per resource (aligned with the demand)."""

    __slots__ = (
        "at",
        "billed",
        "deferred",
        "demand",
        "first_token",
        "held",
        "marks",
        "meters",
        "reconciled",
        "rules",
    )

    def __init__(
        self,
        meters: list[Meter],
        demand: Demand,
        billed: list[object],
        held: list[tuple[float, float]],
        marks: list[Mark | None] | None,
        at: float,
        rules: tuple[Settle, ...],
        deferred: bool = False,
    ) -> None:
        #: The meter each resource was charged on (its partition's, if partitioned).
        self.meters = meters
        self.demand = demand
        #: Tokens of what was billed at admission (for ``release``).
        self.billed = billed
        #: Per meter, (usage + reservations, corrections so far) right after admission.
        self.held = held
        #: Per meter the provider reports on, what ``reconcile`` needs (else None).
        self.marks = marks
        #: Admission time, and each resource's settle rule then.
        self.at = at
        self.rules = rules
        #: True once a refusal of this attempt was reconciled from its headers.
        self.reconciled = False
        #: Admitted but not started yet (a sync call waiting for its thread): what it
        #: bills at admission is held instead, until ``Ledger.begin`` bills it at the
        #: moment the function starts, so that a window counts from the real start.
        self.deferred = deferred
        #: Seconds from sending to the first chunk of a streamed response (the presets
        #: report it here; the engine puts it on the call).
        self.first_token: float | None = None

    def mark(self, index: int) -> Mark | None:
        return None if self.marks is None else self.marks[index]


class _Partitions(dict[Hashable, Meter]):
    """The meters of a partitioned resource, one per key, made on first use."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[Hashable], Meter]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: Hashable) -> Meter:
        meter = self[key] = self._make(key)
        return meter


class InMemoryLedger:
    """One meter per resource (and partition key); admission, settlement, reconciliation."""

    __slots__ = (
        "_parts",
        "_reported",
        "_resources",
        "_rules",
        "_single",
        "_singles",
        "_tracks",
        "_votes",
        "names",
    )

    def __init__(self, resources: Sequence[Resource]) -> None:
        self.names = [r.name for r in resources]
        self._resources = list(resources)
        self._reported = False
        self._rules: tuple[Settle, ...] = tuple(r.settle for r in resources)
        self._single: list[Meter | None] = []
        self._parts: list[_Partitions | None] = []
        for index, resource in enumerate(resources):
            if resource.partition is None:
                self._single.append(self._new_meter(index, None))
                self._parts.append(None)
            else:
                self._single.append(None)
                self._parts.append(_Partitions(partial(self._new_meter, index)))
        #: Every resource's meter when none is partitioned (shared by the reservations,
        #: which never change it): admission then has no meter to look up.
        self._singles: list[Meter] | None = (
            None
            if any(meter is None for meter in self._single)
            else cast("list[Meter]", list(self._single))
        )
        #: Meters the provider reports on (by id), made by their first report.
        self._tracks: dict[int, Track] = {}
        self._votes = Votes(len(resources))

    def _new_meter(self, index: int, key: Hashable) -> Meter:
        resource = self._resources[index]
        quota = resource.quota_for(key)
        window, delay = resource.time_window_seconds, resource.refill_delay
        meter = make_meter(resource.refill, quota, window, delay)
        if self._reported:
            self._track(index, meter)
        return meter

    def _track(self, index: int, meter: Meter) -> Track:
        twin = (
            not self._votes.decided[index]
            and self._resources[index].max_results_usage_estimator is not None
        )
        track = self._tracks[id(meter)] = Track(meter, twin)
        return track

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

    # -- meters ------------------------------------------------------------------------------
    @property
    def partitioned(self) -> bool:
        """Whether some resource has one meter per partition key."""
        return any(part is not None for part in self._parts)

    def _meters(self, demand: Demand) -> list[Meter]:
        if self._singles is not None:
            return self._singles
        meters = []
        for single, part, need in zip(self._single, self._parts, demand, strict=True):
            meters.append(single if single is not None else part[need[2]])  # type: ignore[index]
        return meters

    def _index(self, resource: str) -> int:
        try:
            return self.names.index(resource)
        except ValueError:
            raise KeyError(f"no resource named {resource!r}; the ledger has {self.names}") from None

    def _all(self, index: int) -> list[Meter]:
        single = self._single[index]
        if single is not None:
            return [single]
        part = self._parts[index]
        assert part is not None
        return list(part.values())

    def meter(self, resource: str, partition: Hashable = None) -> Meter:
        """The meter of ``resource`` (``partition``'s, if partitioned; made if new)."""
        index = self._index(resource)
        single = self._single[index]
        if single is not None:
            return single
        part = self._parts[index]
        assert part is not None
        return part[partition]

    def rule(self, resource: str) -> Settle:
        """The settle rule ``resource`` is billed by now (it may have been discovered)."""
        return self._rules[self._index(resource)]

    # -- admission and settlement --------------------------------------------------------------
    def try_reserve(self, demand: Demand, now: float, *, defer: bool = False) -> Reservation | None:
        """Admit a call needing ``demand``, or return None without changing anything.

        ``defer``: hold what admission bills instead; ``begin`` bills it when the call
        actually starts."""
        meters = self._meters(demand)
        for meter, need in zip(meters, demand, strict=True):
            if not meter.fits(need[0] + need[1], now):
                return None
        rules, tracks = self._rules, self._tracks
        billed: list[object] = []
        held: list[tuple[float, float]] = []
        marks: list[Mark | None] | None = None
        for index, (meter, need) in enumerate(zip(meters, demand, strict=True)):
            args_usage, estimate = need[0], need[1]
            rule = rules[index]
            if defer:
                billed.append(None)
                if args_usage + estimate:
                    meter.reserve(args_usage + estimate)
            elif rule == "reserved":
                billed.append(meter.bill(args_usage + estimate, now))
            else:
                billed.append(meter.bill(args_usage, now))
                if estimate:
                    meter.reserve(estimate)
            held.append((meter.held(now), meter.corrected))
            track = tracks.get(id(meter)) if tracks else None
            if track is not None:
                if marks is None:
                    marks = [None] * len(meters)
                marks[index] = track.admit(meter, rule, args_usage, estimate, now)
        return Reservation(meters, demand, billed, held, marks, now, rules, defer)

    def begin(self, reservation: Reservation, now: float) -> None:
        """The call started at ``now``: bill what its admission held (no-op if it was not
        deferred). ``now`` may be a little in the past (when the thread started it)."""
        if not reservation.deferred:
            return
        reservation.deferred = False
        billed = reservation.billed
        for index, (meter, need) in enumerate(
            zip(reservation.meters, reservation.demand, strict=True)
        ):
            args_usage, estimate = need[0], need[1]
            if self._rule(reservation, index) == "reserved":
                meter.unreserve(args_usage + estimate)
                billed[index] = meter.bill(args_usage + estimate, now)
            elif args_usage:
                meter.unreserve(args_usage)
                billed[index] = meter.bill(args_usage, now)

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
        track.done(sum(reservation.demand[index][:2]), mark)
        return (track, mark) if track.twin is not None else None

    def settle(
        self, reservation: Reservation, results_usage: Sequence[float], now: float
    ) -> list[float]:
        """The call returned with ``results_usage``: bill it by each resource's rule.
        Returns what was billed per resource for the results (the estimate included)."""
        if reservation.deferred:
            self.begin(reservation, now)
        billed = []
        tracked = bool(self._tracks)
        for index, (meter, need, actual) in enumerate(
            zip(reservation.meters, reservation.demand, results_usage, strict=True)
        ):
            rule = self._rule(reservation, index)
            billed.append(settle(meter, rule, need[1], actual, now))
            twin = self._untrack(reservation, index) if tracked else None
            if twin is not None:
                twin[0].settle_twin(rule, twin[1], need[1], actual, now)
        return billed

    def keep(self, reservation: Reservation, now: float) -> None:
        """The call failed in a way that may have been billed: its estimate stays used."""
        self.begin(reservation, now)
        for index, (meter, need) in enumerate(
            zip(reservation.meters, reservation.demand, strict=True)
        ):
            rule = self._rule(reservation, index)
            settle(meter, rule, need[1], need[1], now)
            twin = self._untrack(reservation, index)
            if twin is not None:
                twin[0].keep_twin(rule, twin[1], need[1], now)

    def release(self, reservation: Reservation, now: float) -> None:
        """The call proved it was not billed (never sent, refused): undo everything."""
        deferred, reservation.deferred = reservation.deferred, False
        for index, (meter, need, token) in enumerate(
            zip(reservation.meters, reservation.demand, reservation.billed, strict=True)
        ):
            rule = self._rule(reservation, index)
            if deferred:  # never started: only held
                meter.unreserve(need[0] + need[1])
            else:
                release(meter, rule, need[1], token, now)
            twin = self._untrack(reservation, index)
            if twin is not None:
                twin[0].undo_twin(rule, twin[1], (need[0], need[1]), token, now, deferred)

    def refused(self, reservation: Reservation, now: float) -> None:
        """The provider refused the call (HTTP 429): release it, and unless its headers
        were reconciled already, correct the resource closest to its quota at admission
        (see the module docstring)."""
        self.release(reservation, now)
        if reservation.reconciled:
            return
        tightest, lowest = -1, math.inf
        for index, (meter, need, (held, _)) in enumerate(
            zip(reservation.meters, reservation.demand, reservation.held, strict=True)
        ):
            if need[0] + need[1] > 0 and (meter.quota - held) / meter.quota < lowest:
                tightest, lowest = index, (meter.quota - held) / meter.quota
        if tightest < 0:
            return
        meter = reservation.meters[tightest]
        charge = sum(reservation.demand[tightest][:2])
        held, corrected = reservation.held[tightest]
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

    def bill(self, demand: Demand, amounts: Sequence[float], now: float) -> None:
        """Bill ``amounts`` of results usage that no reservation holds (a late result)."""
        for meter, amount in zip(self._meters(demand), amounts, strict=True):
            if amount:
                meter.bill(amount, now)
                track = self._tracks.get(id(meter)) if self._tracks else None
                if track is not None and track.twin is not None:
                    track.twin.bill(amount, now)

    # -- waiting -------------------------------------------------------------------------------
    def next_free_time(self, demand: Demand, now: float) -> float:
        """Earliest time at which ``demand`` fits, ``inf`` if it waits on a release."""
        when = now
        for meter, need in zip(self._meters(demand), demand, strict=True):
            when = max(when, meter.free_at(need[0] + need[1], now))
        return when

    def binding(self, demand: Demand, now: float) -> str | None:
        """Name of the resource that keeps ``demand`` from fitting now (for messages)."""
        found = self.shortfall(demand, now)
        return None if found is None else found[0]

    def shortfall(self, demand: Demand, now: float) -> tuple[str, float, float] | None:
        """``(resource, needed, quota)`` of the first resource ``demand`` does not fit now."""
        for name, meter, need in zip(self.names, self._meters(demand), demand, strict=True):
            needed = need[0] + need[1]
            if not meter.fits(needed, now):
                return name, needed, meter.quota
        return None

    def blocked_by(self, demand: Demand, now: float) -> set[int]:
        """Identities of the meters ``demand`` does not fit on now (see the engine's lanes)."""
        return {
            id(meter)
            for meter, need in zip(self._meters(demand), demand, strict=True)
            if not meter.fits(need[0] + need[1], now)
        }

    def meter_ids(self, demand: Demand) -> set[int]:
        """Identities of the meters ``demand`` draws on (a positive amount)."""
        return {
            id(meter)
            for meter, need in zip(self._meters(demand), demand, strict=True)
            if need[0] + need[1] > 0
        }

    # -- quotas --------------------------------------------------------------------------------
    def quota(self, resource: str, partition: Hashable = None) -> float:
        """The quota enforced for ``resource`` (for ``partition``'s key if partitioned)."""
        return self.meter(resource, partition).quota

    def set_quota(self, resource: str, quota: float, partition: Hashable = None) -> None:
        """Enforce ``quota`` from now on: for ``partition``'s meter if the resource is
        partitioned and that key has one (a key not seen yet gets its quota when it is)."""
        index = self._index(resource)
        part = self._parts[index]
        if part is None:
            meters = self._all(index)
        else:
            found = part.get(partition)
            meters = [] if found is None else [found]
        for meter in meters:
            meter.set_quota(quota)
            track = self._tracks.get(id(meter))
            if track is not None and track.twin is not None:
                track.twin.set_quota(quota)

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
            held, corrected = admission.held[index]
            low: float | None = meter.quota - held - (meter.corrected - corrected)
        else:
            low = Track.lowest(meter, track.lows, mark[0], now)
        if low is None:
            return 0.0
        was_generous = False
        if track.twin is not None and mark[4] is not None and not refused:
            assert admission is not None
            held, corrected = admission.held[index][0], mark[3]
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

    # -- display -------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, tuple[float, float, float]]:
        """``{name: (used, reserved, quota)}`` for progress displays; for a partitioned
        resource, its key nearest to its quota."""
        shown: dict[str, tuple[float, float, float]] = {}
        for index, name in enumerate(self.names):
            best: tuple[float, float, float] | None = None
            fraction = -math.inf
            for meter in self._all(index):
                used, reserved = meter.used(now), meter.reserved
                if (used + reserved) / meter.quota > fraction:
                    fraction = (used + reserved) / meter.quota
                    best = (used, reserved, meter.quota)
            shown[name] = best or (0.0, 0.0, float(self._resources[index].quota))
        return shown

    def partitions(self, now: float) -> dict[tuple[str, Hashable], tuple[float, float, float]]:
        """``{(name, key): (used, reserved, quota)}`` of every partitioned meter."""
        out: dict[tuple[str, Hashable], tuple[float, float, float]] = {}
        for name, part in zip(self.names, self._parts, strict=True):
            for key, meter in list((part or {}).items()):
                out[(name, key)] = (meter.used(now), meter.reserved, meter.quota)
        return out

    def __repr__(self) -> str:
        rules = ", ".join(f"{n}:{r}" for n, r in zip(self.names, self._rules, strict=True))
        return f"<InMemoryLedger {rules}; {len(self._tracks)} meters reported on>"
