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

**Agreeing with the provider** (``reconcile``, ``refused``, ``expect_reports``, and the
settle rule the headers reveal) is ``rate_limited.ledgers._reports``, the other half of
``InMemoryLedger``.

**Cost per call.** O(1) amortized per resource in time, and nothing kept per call once it
settles: admission looks at each meter once (``Meter.held``) and bills or holds there,
settling is one ``Meter.settle`` per resource, and a window meter's log is bounded
(``rate_limited._meters.WindowMeter``); a partitioned resource adds one dict lookup.
Meters the provider reports on take a longer path, which also keeps what reconciling
with its reports needs. The reservation (``rate_limited.ledgers._reservation``) is
slotted, its lists flat. The engine calls ``per_call()``'s pair, which for unpartitioned
resources is the usual case of ``try_reserve`` and ``settle`` compiled for them
(``rate_limited.ledgers._compiled``): the same steps, written out per meter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, cast

from rate_limited._meters import EPS, Meter, make_meter
from rate_limited._reconcile import Mark, Track, Votes, release
from rate_limited.ledgers._compiled import compile_per_call
from rate_limited.ledgers._reports import ProviderReports
from rate_limited.ledgers._reservation import Reservation
from rate_limited.ledgers.base import Demand, Earlier, PerCall, Settle, resource_index

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["InMemoryLedger", "Reservation"]

logger = logging.getLogger("rate_limited")


class _Partitions(dict[Hashable, Meter]):
    """The meters of a partitioned resource, one per key, made on first use."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[Hashable], Meter]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: Hashable) -> Meter:
        meter = self[key] = self._make(key)
        return meter


class InMemoryLedger(ProviderReports):
    """One meter per resource (and partition key); admission, settlement, reconciliation
    (what the provider says: ``ProviderReports``)."""

    __slots__ = ("_parts", "_resources", "_single", "_singles", "names")

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
        return resource_index(self.names, resource)

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
        actually starts. The common case (no partition, nobody reporting, not deferred)
        costs one look at each meter and one bill or hold per resource."""
        meters = self._singles
        if meters is None:
            meters = self._meters(demand)
        held: list[float] = []
        # The loops of this path (and of ``settle``) walk the meters and index the lists
        # aligned with them (one entry per resource, by construction): a ``zip`` or an
        # ``enumerate`` makes an object and an iterator per list, per call, which cost
        # more than the loop's body over two resources (measured: a sixth of the ledger's
        # instructions per call, see benchmarks/RESULTS.md "Overhead").
        i = 0
        for meter in meters:
            need = demand[i]
            taken = meter.held(now)
            charge = need[0] + need[1]
            quota = meter.quota
            if quota - taken < charge - EPS * quota:
                return None
            held.append(taken + charge)  # what the meter holds right after admission
            held.append(meter.corrected)
            i += 1  # noqa: SIM113 (no enumerate: see try_reserve)
        rules = self._rules
        if self._tracks or defer:
            return self._reserve(meters, demand, held, now, defer)
        billed: list[object] = []
        i = 0
        for meter in meters:
            args_usage, estimate, _ = demand[i]
            if rules[i] == "reserved":
                billed.append(meter.bill(args_usage + estimate, now))
            else:
                billed.append(meter.bill(args_usage, now) if args_usage else None)
                meter.reserved += estimate  # ``Meter.reserve``, one call less per resource
            i += 1  # noqa: SIM113 (no enumerate: see try_reserve)
        return Reservation(meters, demand, billed, held, None, now, rules)

    def _reserve(
        self, meters: list[Meter], demand: Demand, held: list[float], now: float, defer: bool
    ) -> Reservation:
        """``try_reserve`` of a call that fits, deferred (see ``begin``) or on meters some
        of which the provider reports on (their tracks remember the admission)."""
        rules, tracks = self._rules, self._tracks
        billed: list[object] = []
        marks: list[Mark | None] | None = None
        index = 0
        for meter in meters:  # no zip: see ``try_reserve``
            need = demand[index]
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
            track = tracks.get(id(meter)) if tracks else None
            if track is not None:
                if marks is None:
                    marks = [None] * len(meters)
                marks[index] = track.admit(meter, rule, args_usage, estimate, now, held[2 * index])
            index += 1  # noqa: SIM113 (no enumerate: see try_reserve)
        return Reservation(meters, demand, billed, held, marks, now, rules, defer)

    def per_call(self) -> PerCall:
        """``try_reserve`` and ``settle`` compiled for these resources (see
        ``rate_limited.ledgers._compiled``), unless one is partitioned: then the methods."""
        if self._singles is None:
            return PerCall(self.try_reserve, self.settle)
        return PerCall(*compile_per_call(self, self._singles, self._rules))

    def begin(self, reservation: Reservation, now: float) -> None:
        """The call started at ``now``: bill what its admission held (no-op if it was not
        deferred). ``now`` may be a little in the past (when the thread started it)."""
        if not reservation.deferred:
            return
        reservation.deferred = False
        billed = reservation.billed
        rules = self._rules_of(reservation)
        demand = reservation.demand
        index = 0
        for meter in reservation.meters:  # no zip: see ``try_reserve``
            args_usage, estimate = demand[index][0], demand[index][1]
            if rules[index] == "reserved":
                meter.unreserve(args_usage + estimate)
                billed[index] = meter.bill(args_usage + estimate, now)
            elif args_usage:
                meter.unreserve(args_usage)
                billed[index] = meter.bill(args_usage, now)
            index += 1  # noqa: SIM113 (no enumerate: see try_reserve)

    def settle(
        self, reservation: Reservation, results_usage: Sequence[float], now: float
    ) -> list[float]:
        """The call returned with ``results_usage``: bill it by each resource's rule.
        Returns what the attempt was billed per resource in all: its arguments usage and
        its results (the estimate, if the rule bills that)."""
        if reservation.deferred:
            self.begin(reservation, now)
        rules = reservation.rules
        if rules is not self._rules:  # a rule switched since the admission
            rules = self._rules_of(reservation)
        billed: list[float] = []
        demand = reservation.demand
        i = 0
        for meter in reservation.meters:  # no zip: see ``try_reserve``
            args_usage, estimate, _ = demand[i]
            actual = results_usage[i]
            if estimate or actual:
                results = meter.settle(rules[i], estimate, actual, now)
                billed.append(args_usage + results if args_usage else results)
            else:  # nothing held, nothing used (a requests quota): either rule bills 0
                billed.append(args_usage)
            i += 1  # noqa: SIM113 (no enumerate: see try_reserve)
        if self._tracks:
            for index, (need, actual, rule) in enumerate(
                zip(reservation.demand, results_usage, rules, strict=True)
            ):
                twin = self._untrack(reservation, index)
                if twin is not None:
                    twin[0].settle_twin(rule, twin[1], need[1], actual, now)
        return billed

    def keep(self, reservation: Reservation, now: float) -> None:
        """The call failed in a way that may have been billed: its estimate stays used."""
        self.begin(reservation, now)
        rules = self._rules_of(reservation)
        for index, (meter, need, rule) in enumerate(
            zip(reservation.meters, reservation.demand, rules, strict=True)
        ):
            meter.settle(rule, need[1], need[1], now)
            twin = self._untrack(reservation, index)
            if twin is not None:
                twin[0].keep_twin(rule, twin[1], need[1], now)

    def release(self, reservation: Reservation, now: float) -> None:
        """The call proved it was not billed (never sent, refused): undo everything."""
        deferred, reservation.deferred = reservation.deferred, False
        rules = self._rules_of(reservation)
        for index, (meter, need, token, rule) in enumerate(
            zip(reservation.meters, reservation.demand, reservation.billed, rules, strict=True)
        ):
            if deferred:  # never started: only held
                meter.unreserve(need[0] + need[1])
            else:
                release(meter, rule, need[1], token, now)
            twin = self._untrack(reservation, index)
            if twin is not None:
                twin[0].undo_twin(rule, twin[1], (need[0], need[1]), token, now, deferred)

    def bill(self, demand: Demand, amounts: Sequence[float], now: float) -> None:
        """Bill ``amounts`` of results usage that no reservation holds (a late result)."""
        for meter, amount in zip(self._meters(demand), amounts, strict=True):
            if amount:
                meter.bill(amount, now)
                track = self._tracks.get(id(meter)) if self._tracks else None
                if track is not None and track.twin is not None:
                    track.twin.bill(amount, now)

    def charge_earlier(self, earlier: Iterable[Earlier], now: float) -> None:
        """Charge usage billed before this ledger existed (see ``Ledger.charge_earlier``):
        a window meter logs each usage at its time, a bucket the level they leave now."""
        index_of = {name: index for index, name in enumerate(self.names)}
        entries: dict[int, tuple[str, Meter, list[tuple[float, float]]]] = {}
        for demand, usage, at in earlier:
            meters = self._meters(demand)
            for name, amount in usage.items():
                index = index_of.get(name)
                if index is None or not amount > 0 or not math.isfinite(amount):
                    continue
                meter = meters[index]
                slot = entries.setdefault(id(meter), (name, meter, []))
                slot[2].append((min(at, now), amount))
        for name, meter, charges in entries.values():
            live = meter.charge_earlier(charges, now)
            track = self._tracks.get(id(meter)) if self._tracks else None
            if track is not None and track.twin is not None:
                track.twin.charge_earlier(charges, now)
            if live > 0:
                logger.info(
                    "%g of %r (quota %g) still counts from %d call(s) an earlier process "
                    "made: charged before this run starts",
                    live,
                    name,
                    meter.quota,
                    len(charges),
                )

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
