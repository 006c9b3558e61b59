"""RedisLedger: one quota shared by every process and machine that reaches one Redis.

``Runner(..., ledger="redis://host:6379/0?name=team-key")`` keeps every resource's meters
in Redis instead of in the process, so N processes on one API key admit together what one
would admit alone. It has the in-memory ledger's operations (``rate_limited._ledger``),
and the engine does not know which of the two it has.

* **Atomic.** Reserve (every resource at once), settle, keep, release and refuse are each
  one Lua operation (``rate_limited.ledgers._lua``, a Redis Function library): no other
  process's admission runs between the check and the reservation.
* **Cheap.** An admission is one round trip, which carries the settlements queued before
  it; while calls come fast on meters far from their quotas, it also makes *spares*
  (``rate_limited.ledgers._redis_spares``), and the next calls are admitted on those
  with no round trip at all.
* **Redis's clock.** Windows and buckets run on Redis ``TIME``; the engine's own clock only
  turns "fits in 0.8 s" into a timer. Machines whose clocks disagree share one quota right.
* **Same settle rules, same partitions.** ``settle="actual"`` holds the estimate and bills
  the actual usage; ``settle="reserved"`` bills the estimate at admission, keeps it, and
  bills only what a result has above it. A partitioned resource has one meter per key.
* **Leases.** Every reservation is held under its process's lease (a *holder*), renewed by
  a keeper thread every ``lease / 4`` seconds (``rate_limited.ledgers._redis_link``, with
  the connection and the queue of settlements). A process that dies (SIGKILL, a lost
  machine) stops renewing; once its lease is past, the next script any process runs bills
  each of its reservations as the provider would have billed the call, which may have been
  sent (what it held is billed whole, as ``keep`` does), and frees the rest.
* **Waiting.** A call that does not fit waits for the time the shared meters say it will
  (a bucket's refill, a window's expiry). One that waits for reservations other processes
  hold is woken by the ``freed`` notification (Redis pub/sub) when one is given back, or
  after ``poll`` seconds at most.
* **Declared quotas.** Runners sharing a name must count alike (refill, window, settle
  rule, partitioned), but may declare other quotas: the quota a Runner declares is the
  user's latest intent, set on the shared meters when it joins (a ``LedgerWarning`` names
  the old and new quota when a Runner still running declared the old one); a Runner
  declaring the same leaves the meters alone, so a limit read from the provider's headers
  stays (``rate_limited.ledgers._redis_declarations``).
* **Redis lost mid-run.** Admission pauses (nothing is admitted without the shared view,
  so nothing is over-admitted) and a ``LedgerWarning`` says so; the calls already running
  finish and their results are stored as usual, and what they used is billed to Redis,
  in order, once it is back. Unreachable when the Runner is made: ``LedgerUnavailableError``.
  A Redis refusing the calls (out of memory, read-only, ACL) counts as lost; one back
  without its data (restarted without persistence) makes meters that start full (see
  ``rate_limited.ledgers._redis_link``).

**Agreeing with the provider** works as in the in-memory ledger: a rate-limit header is
compared with the least room the shared meter believed in since the request's admission
(a stack per meter in Redis, ``RECONCILE``), what it believed above it is billed (an
estimate too low, a user of the key outside the ledger); a 429 corrects the meter closest
to its quota; limits read from headers set the shared quota. One departure, on purpose:
the provider's settle rule is not *discovered* from the headers (the in-memory ledger's
twin meters and votes would double the work of every admission in Redis): declare it,
as the presets do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING

from rate_limited.exceptions import (
    LedgerUnavailableError,
)
from rate_limited.ledgers._redis_declarations import declare
from rate_limited.ledgers._redis_link import RETRY_FIRST, RedisLink
from rate_limited.ledgers._redis_reservation import RedisReservation
from rate_limited.ledgers._redis_spares import Spares
from rate_limited.ledgers._redis_url import parse_url, partition_text
from rate_limited.ledgers._redis_wire import num, refusal
from rate_limited.ledgers.base import Demand, Earlier, PerCall, Settle, resource_index

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["RedisLedger", "RedisReservation", "parse_url"]

#: Most seconds a call waiting for reservations of other processes sleeps between looks.
POLL = 0.2


class RedisLedger:
    """The quotas of ``resources`` kept in the Redis at ``url``, shared by name."""

    def __init__(
        self,
        url: str,
        resources: Sequence[Resource],
        *,
        owner: str = "",
        socket_timeout: float = 2.0,
        poll: float = POLL,
    ) -> None:
        client_url, name, lease = parse_url(url)
        self._link = RedisLink(client_url, name, lease, owner=owner, socket_timeout=socket_timeout)
        self.name, self.lease, self.url = name, lease, self._link.url
        self.prefix, self.holder = self._link.prefix, self._link.holder
        self.names = [r.name for r in resources]
        self._resources = list(resources)
        self._rules: tuple[Settle, ...] = tuple(r.settle for r in resources)
        self.poll = poll
        try:
            declare(self._link, self._resources, name)
        except BaseException as exc:
            self._link.disconnect()  # nothing was taken yet: only the connections to close
            refused = refusal(exc)
            if refused is not None:
                raise LedgerUnavailableError(
                    f"can't join the shared ledger {name!r} at {self.url}: {refused}. "
                    "Fix the server's state (memory, replica, ACL), or leave ledger= out for "
                    "a ledger of this process only."
                ) from exc
            raise
        self._specs: dict[tuple[int, Hashable], list[str]] = {}
        self._quotas: dict[tuple[int, Hashable], float] = {}
        #: The answer of the last admission that failed: (demand, now, per resource
        #: (seconds until it fits, needed, quota)); the waiting questions reuse it.
        self._last: tuple[Demand, float, list[tuple[float, float, float]]] | None = None
        self._reported = False
        #: Admissions made ahead for the next calls (see ``rate_limited.ledgers._redis_spares``).
        self._spares = Spares(lambda spare: self._finish(spare, "release"))
        self._link.chores = self._spares.expire
        self._link.full_for = max(
            (r.time_window_seconds + r.refill_delay for r in resources), default=0.0
        )
        self._losses = 0
        self._link.start()

    def __repr__(self) -> str:
        state = "unreachable" if self._link.down_since is not None else "connected"
        return (
            f"<RedisLedger {self.url} name={self.name!r} lease={self.lease:g}s {state}; "
            f"{len(self._link.outbox)} settlements to send>"
        )

    # -- set-up ------------------------------------------------------------------------------
    def watch(self, wake: Callable[[], None]) -> None:
        """``wake()`` (thread-safe) is called when another process gives back a
        reservation a waiting call needs."""
        self._link.wake = wake

    def close(self) -> None:
        """Give back the spares, stop renewing the lease and give up what this process
        still holds (kept, as if it had died: a call still running may have been sent)."""
        if not self._link.closed:
            self._spares.expire(force=True)
        self._link.close()

    @property
    def closed(self) -> bool:
        return self._link.closed

    def take_notices(self) -> list[tuple[type[Warning], str]]:
        """Warnings for the thread that called ``run()`` (see ``Engine.take_notices``)."""
        return self._link.take_notices()

    # -- meters ------------------------------------------------------------------------------
    @property
    def partitioned(self) -> bool:
        return any(r.partition is not None for r in self._resources)

    def _spec(self, index: int, key: Hashable) -> list[str]:
        spec = self._specs.get((index, key))
        if spec is None:
            r = self._resources[index]
            spec = self._specs[(index, key)] = [
                f"{self.prefix}m:{r.name}:{partition_text(key)}",
                r.refill,
                num(r.quota_for(key)),
                num(r.time_window_seconds),
                num(r.refill_delay),
            ]
        return spec

    def _index(self, resource: str) -> int:
        return resource_index(self.names, resource)

    def rule(self, resource: str) -> Settle:
        return self._rules[self._index(resource)]

    def expect_reports(self) -> None:
        """The provider will report on the calls: from now on every admission also records
        the room it leaves, which ``reconcile`` compares the reports with (it costs a
        list operation per meter in Redis, so not before). Spares held now were made
        without that mark: they are given back (see ``rate_limited.ledgers._redis_spares``
        for those made from now on)."""
        self._reported = True
        self._spares.expire(force=True)

    # -- admission and settlement --------------------------------------------------------------
    def per_call(self) -> PerCall:
        """The methods themselves: a round trip to Redis dwarfs what compiling would save."""
        return PerCall(self.try_reserve, self.settle)

    def try_reserve(
        self, demand: Demand, now: float, *, defer: bool = False
    ) -> RedisReservation | None:
        """Admit a call needing ``demand`` on every shared meter at once, or return None."""
        if self._link.paused:
            return None
        # spares: see rate_limited.ledgers._redis_spares
        if self._link.losses != self._losses:  # Redis was lost: they may be gone there
            self._losses = self._link.losses
            self._spares.expire(force=True)
        spare = self._spares.take(demand)
        if spare is not None:
            return self._take(spare, demand, now, defer)
        count, spare_demand = self._spares.wanted(demand)
        entries = []
        track = "1" if self._reported else "0"
        args = [self.holder, num(self.lease), "1" if defer else "0", track, str(len(demand))]
        for index, need in enumerate(demand):
            entry = [*self._spec(index, need[2]), self._rules[index], num(need[0]), num(need[1])]
            entries.append(entry)
            args += entry
        if count:
            args.append(str(count))
            for need in spare_demand:
                args += [num(need[0]), num(need[1])]
        try:
            out = self._link.run("reserve", args)
        except self._link.down_errors:
            return None
        if int(out[0]) != 1:
            waits = []
            for i, need in enumerate(demand):
                seconds, needed, quota = (float(x) for x in out[2 + 3 * i : 5 + 3 * i])
                waits.append((seconds, needed, quota))
                self._quotas[(i, need[2])] = quota
            self._last = (demand, now, waits)
            return None
        held: list[float] = []  # flat: [level_0, corrected_0, level_1, ...] (Admission.held)
        quotas = []
        for i, need in enumerate(demand):
            level, quota, corrected = (float(x) for x in out[3 + 3 * i : 6 + 3 * i])
            held += (level, corrected)
            quotas.append(quota)
            self._quotas[(i, need[2])] = quota
        n = len(demand)
        numbers = [int(x) for x in out[3 + 3 * n : 3 + 4 * n]]
        if len(out) > 3 + 4 * n:  # spares
            spare_entries = [
                [*entry[:6], num(need[0]), num(need[1])]
                for entry, need in zip(entries, spare_demand, strict=True)
            ]
            spares = []
            for j, lease in enumerate(out[3 + 4 * n :], start=1):
                # as the script counts it: the admission's level plus j spares' demand
                spare_held = list(held)
                for i, need in enumerate(spare_demand):
                    spare_held[2 * i] += j * (need[0] + need[1])
                spares.append(RedisReservation(
                    str(lease), spare_entries, spare_demand, spare_held, quotas, numbers, now,
                    self._rules, True,
                ))  # fmt: skip
            self._spares.add(spares)
            self._link.poke()  # the sender thread gives them back if unused
        return RedisReservation(
            str(out[1]), entries, demand, held, quotas, numbers, now, self._rules, defer
        )

    def _take(
        self, spare: RedisReservation, demand: Demand, now: float, defer: bool
    ) -> RedisReservation:
        """Admit a call needing ``demand`` on ``spare`` (no round trip: the ``take`` goes
        with the next script call, and begins it there unless ``defer``)."""
        entries = [
            [*entry[:6], num(need[0]), num(need[1])]
            for entry, need in zip(spare.entries, demand, strict=True)
        ]
        args = [self.holder, num(self.lease), spare.lease, "take", "0" if defer else "1"]
        for need in demand:
            args += [num(need[0]), num(need[1])]
        self._link.tell("finish", args)
        return RedisReservation(
            spare.lease, entries, demand, spare.held, spare.quotas, spare.numbers, now,
            self._rules, defer,
        )  # fmt: skip

    def _finish(self, reservation: RedisReservation, op: str, *extra: str) -> None:
        self._link.tell("finish", [self.holder, num(self.lease), reservation.lease, op, *extra])

    def begin(self, reservation: RedisReservation, now: float) -> None:
        """The call started (its thread took it): bill what admission held, now (the
        request reaches the provider after this, so billing it now is never early)."""
        if not reservation.deferred:
            return
        reservation.deferred = False
        self._finish(reservation, "begin")

    def settle(
        self, reservation: RedisReservation, results_usage: Sequence[float], now: float
    ) -> list[float]:
        reservation.deferred = False
        entries = json.dumps([e[:8] for e in reservation.entries])
        self._finish(reservation, "settle", entries, *map(num, results_usage))
        billed = []  # the arguments usage, and what the script bills for the results
        for rule, need, actual in zip(
            reservation.rules, reservation.demand, results_usage, strict=True
        ):
            billed.append(need[0] + (max(need[1], actual) if rule == "reserved" else actual))
        return billed

    def keep(self, reservation: RedisReservation, now: float) -> None:
        self._finish(reservation, "keep")

    def release(self, reservation: RedisReservation, now: float) -> None:
        self._finish(reservation, "release")

    def refused(self, reservation: RedisReservation, now: float) -> None:
        """HTTP 429: release the call and correct the meter closest to its quota at the
        admission (as the in-memory ledger does, see ``rate_limited._ledger``)."""
        tightest, lowest = 0, math.inf
        if not reservation.reconciled:  # else its headers corrected the ledger already
            for i, (need, quota) in enumerate(
                zip(reservation.demand, reservation.quotas, strict=True)
            ):
                held = reservation.held_at(i)[0]
                room = (quota - held) / quota
                if need[0] + need[1] > 0 and room < lowest:
                    tightest, lowest = i + 1, room
        self._finish(reservation, "refuse", str(tightest))

    def bill(self, demand: Demand, amounts: Sequence[float], now: float) -> None:
        """Bill a late result's usage, which no reservation holds."""
        args = [str(len(demand))]
        for index, (need, amount) in enumerate(zip(demand, amounts, strict=True)):
            args += [*self._spec(index, need[2]), num(amount)]
        self._link.tell("bill", args)

    def charge_earlier(self, earlier: Iterable[Earlier], now: float) -> None:
        """Nothing to do: the calls an earlier process made through this ledger were
        billed in Redis when they ran, and are still counted there (charging them again
        from the store's records would count them twice)."""

    # -- waiting -------------------------------------------------------------------------------
    def _waits(self, demand: Demand, now: float) -> list[tuple[float, float, float]] | None:
        """Per resource (seconds until it fits, needed, quota); None if Redis is away."""
        last = self._last
        if last is not None and last[0] is demand and last[1] == now:
            return last[2]
        if self._link.paused:
            return None
        args = [str(len(demand))]
        for index, need in enumerate(demand):
            args += [*self._spec(index, need[2]), num(need[0] + need[1])]
        try:
            out = self._link.run("peek", args)
        except self._link.down_errors:
            return None
        waits = []
        for i, need in enumerate(demand):
            quota, seconds = float(out[3 + 4 * i]), float(out[4 + 4 * i])
            waits.append((seconds, need[0] + need[1], quota))
        self._last = (demand, now, waits)
        return waits

    def next_free_time(self, demand: Demand, now: float) -> float:
        """When ``demand`` fits by the shared meters, in the engine's time: ``inf`` only
        if it can never fit; a look after ``poll`` s at most if it waits for a release."""
        waits = self._waits(demand, now)
        if waits is None:  # Redis away: look again after the retry delay
            return now + max(RETRY_FIRST, self._link.retry_in())
        when = now
        for seconds, _, _ in waits:
            if seconds == -2:
                return math.inf
            if seconds == -1:
                self._link.waiting_release = True
                when = max(when, now + self.poll)
            else:
                when = max(when, now + seconds)
        return when

    def binding(self, demand: Demand, now: float) -> str | None:
        found = self.shortfall(demand, now)
        return None if found is None else found[0]

    def shortfall(self, demand: Demand, now: float) -> tuple[str, float, float] | None:
        waits = self._waits(demand, now)
        if waits is None:
            return ("the shared ledger (Redis unreachable)", 0.0, 0.0)
        for name, (seconds, needed, quota) in zip(self.names, waits, strict=True):
            if seconds != 0:
                return name, needed, quota
        return None

    def blocked_by(self, demand: Demand, now: float) -> set[int]:
        """Identities of the meters ``demand`` does not fit on now (its cached spec's)."""
        waits = self._waits(demand, now)
        specs = [id(self._spec(i, need[2])) for i, need in enumerate(demand)]
        if waits is None:
            return set(specs)
        return {key for key, (seconds, _, _) in zip(specs, waits, strict=True) if seconds != 0}

    def meter_ids(self, demand: Demand) -> set[int]:
        return {
            id(self._spec(i, need[2])) for i, need in enumerate(demand) if need[0] + need[1] > 0
        }

    # -- quotas --------------------------------------------------------------------------------
    def _peek(self, keys: list[tuple[int, Hashable]]) -> list[tuple[float, float, float]]:
        """(used, reserved, quota) of the meters of ``keys`` ((resource index, partition
        key)); reserved leaves out this process's spares (not calls: made ahead)."""
        args = [str(len(keys))]
        for index, key in keys:
            args += [*self._spec(index, key), "0"]
        out = self._link.run("peek", args)
        spares = self._spares.holding()
        return [
            (
                float(out[1 + 4 * i]),
                max(0.0, float(out[2 + 4 * i]) - spares.get(key, 0.0)),
                float(out[3 + 4 * i]),
            )
            for i, key in enumerate(keys)
        ]

    def quota(self, resource: str, partition: Hashable = None) -> float:
        index = self._index(resource)
        key = partition if self._resources[index].partition is not None else None
        known = self._quotas.get((index, key))
        if known is None:
            try:
                known = self._peek([(index, key)])[0][2]
            except self._link.down_errors:
                known = float(self._resources[index].quota_for(key))
            self._quotas[(index, key)] = known
        return known

    def set_quota(self, resource: str, quota: float, partition: Hashable = None) -> None:
        """Enforce ``quota`` on the shared meter from now on (every process sees it)."""
        index = self._index(resource)
        key = partition if self._resources[index].partition is not None else None
        self._quotas[(index, key)] = float(quota)
        self._link.tell("set_quota", [*self._spec(index, key), num(quota)])

    def reconcile(
        self,
        resource: str,
        remaining: float,
        now: float,
        *,
        partition: Hashable = None,
        admission: RedisReservation | None = None,
        precision: float = 0.0,
        refused: bool = False,
    ) -> float:
        """The provider says ``remaining`` (± ``precision``) of ``resource`` was left when
        it took the request of ``admission`` (without it, if ``refused``): bill what the
        shared meter believed above that (see ``rate_limited._reconcile``), and return it.
        A report on another ledger's admission tells nothing (0); the provider's settle
        rule is not discovered here (declare it; the presets do)."""
        index = self._index(resource)
        key = partition if self._resources[index].partition is not None else None
        spec = self._spec(index, key)
        if (
            not isinstance(admission, RedisReservation)
            or index >= len(admission.entries)
            or admission.entries[index][0] != spec[0]
        ):
            return 0.0
        held, corrected = admission.held_at(index)
        charge = sum(admission.demand[index][:2])
        if refused:
            admission.reconciled = True
        args = [
            *spec,
            str(admission.numbers[index]),
            num(remaining),
            num(precision),
            "1" if refused else "0",
            num(charge),
            num(held),
            num(corrected),
        ]
        self._link.tell("reconcile", args)
        return 0.0  # billed with the next operation; nobody reads the amount

    # -- display -------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, tuple[float, float, float]]:
        """``{name: (used, reserved, quota)}`` of the shared meters (for a partitioned
        resource, its key nearest to its quota among those this process used)."""
        shown: dict[str, tuple[float, float, float]] = {}
        keys: list[tuple[int, Hashable]] = [
            (i, None) for i, r in enumerate(self._resources) if r.partition is None
        ]
        keys += [k for k in list(self._specs) if self._resources[k[0]].partition is not None]
        try:
            states = self._peek(keys) if keys else []
        except self._link.down_errors:
            states = []
        for (index, _), state in zip(keys, states, strict=False):
            name = self.names[index]
            best = shown.get(name)
            if best is None or (state[0] + state[1]) / state[2] > (best[0] + best[1]) / best[2]:
                shown[name] = state
        for resource in self._resources:
            shown.setdefault(resource.name, (0.0, 0.0, float(resource.quota)))
        return {name: shown[name] for name in self.names}

    def partitions(self, now: float) -> dict[tuple[str, Hashable], tuple[float, float, float]]:
        keys = [k for k in list(self._specs) if self._resources[k[0]].partition is not None]
        try:
            states = self._peek(keys) if keys else []
        except self._link.down_errors:
            return {}
        return {(self.names[i], key): state for (i, key), state in zip(keys, states, strict=True)}
