"""RedisLedger: one quota shared by every process and machine that reaches one Redis.

``Runner(..., ledger="redis://host:6379/0?name=team-key")`` keeps every resource's meters
in Redis instead of in the process, so N processes on one API key admit together what one
would admit alone. It has the in-memory ledger's operations (``rate_limited._ledger``),
and the engine does not know which of the two it has.

* **Atomic.** Reserve (every resource at once), settle, keep, release and refuse are each
  one Lua script (``rate_limited.ledgers._lua``): no other process's admission runs between
  the check and the reservation.
* **Redis's clock.** Windows and buckets run on Redis ``TIME``; the engine's own clock only
  turns "fits in 0.8 s" into a timer. Machines whose clocks disagree share one quota right.
* **Same settle rules, same partitions.** ``settle="actual"`` holds the estimate and bills
  the actual usage; ``settle="reserved"`` bills the estimate at admission, keeps it, and
  bills only what a result has above it. A partitioned resource has one meter per key.
* **Leases.** Every reservation is held under its process's lease (a *holder*), renewed by
  a keeper thread every ``lease / 4`` seconds. A process that dies (SIGKILL, a lost
  machine) stops renewing; once its lease is past, the next script any process runs bills
  each of its reservations as the provider would have billed the call, which may have been
  sent (what it held is billed whole, as ``keep`` does), and frees the rest.
* **Waiting.** A call that does not fit waits for the time the shared meters say it will
  (a bucket's refill, a window's expiry). One that waits for reservations other processes
  hold is woken by the ``freed`` notification (Redis pub/sub) when one is given back, or
  after ``poll`` seconds at most.
* **Redis lost mid-run.** Admission pauses (nothing is admitted without the shared view,
  so nothing is over-admitted) and a ``LedgerWarning`` says so; the calls already running
  finish and their results are stored as usual, and what they used is billed to Redis,
  in order, once it is back. Unreachable when the Runner is made: ``LedgerUnavailableError``.

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
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rate_limited.exceptions import (
    ConfigurationError,
    LedgerUnavailableError,
    LedgerWarning,
    UnknownResourceError,
)
from rate_limited.ledgers import _lua
from rate_limited.ledgers.base import Demand, Settle

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["RedisLedger", "RedisReservation", "parse_url"]

logger = logging.getLogger("rate_limited")

#: Default seconds a holder's lease lasts without renewal (a dead process's reservations
#: come back at most this long after it died, plus one renewal period).
DEFAULT_LEASE = 20.0
#: Most seconds a call waiting for reservations of other processes sleeps between looks.
POLL = 0.2
#: Seconds a queued settlement waits for an admission to take it before it goes alone.
_BATCH_WAIT = 0.005
#: Seconds between attempts to reach Redis again once it is lost: first, and most.
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
_ROOT = "rate_limited:ledger:"


def parse_url(url: str) -> tuple[str, str, float]:
    """``redis://host:port/db?name=N&lease=S`` -> (the URL for redis-py, name, lease).

    ``name`` (default ``"default"``) names the shared ledger: Runners with the same name on
    the same Redis share their quotas. ``lease`` is in seconds (default 20)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"ledger= must be a redis://, rediss:// or unix:// URL (or None for the "
            f"in-process ledger), got {_redacted(url)!r}."
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("name", "lease")}
    rest = urlencode([(k, v) for k, v in query if k not in ("name", "lease")])
    name = ours.get("name") or "default"
    try:
        lease = float(ours.get("lease", DEFAULT_LEASE))
    except ValueError:
        lease = math.nan
    if not (0.2 <= lease < math.inf):
        raise ConfigurationError(
            f"lease= in the ledger URL must be a number of seconds >= 0.2, got "
            f"{ours.get('lease')!r}."
        )
    return urlunsplit(parts._replace(query=rest)), name, lease


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _num(value: float) -> str:
    return repr(float(value))


def _partition_text(key: Hashable) -> str:
    return "" if key is None else key if isinstance(key, str) else repr(key)


class RedisReservation:
    """An admission held in Redis under ``lease`` (the lease id)."""

    __slots__ = (
        "at",
        "deferred",
        "demand",
        "entries",
        "first_token",
        "held",
        "lease",
        "numbers",
        "quotas",
        "reconciled",
        "rules",
    )

    def __init__(
        self,
        lease: str,
        entries: list[list[str]],
        demand: Demand,
        held: list[tuple[float, float]],
        quotas: list[float],
        numbers: list[int],
        at: float,
        rules: tuple[Settle, ...],
        deferred: bool,
    ) -> None:
        self.demand = demand
        #: Per meter, (usage + reservations, corrections so far) right after admission.
        self.held = held
        #: Admission time (the engine's), and each resource's settle rule then.
        self.at = at
        self.rules = rules
        #: Admitted but not started yet (a sync call waiting for its thread).
        self.deferred = deferred
        #: True once a refusal of this attempt was reconciled from its headers.
        self.reconciled = False
        self.lease = lease
        #: Per resource: meter key, kind, quota, window, delay, rule, arguments, estimate.
        self.entries = entries
        self.quotas = quotas
        #: Per resource, the admission's number on its meter (see ``reconcile``).
        self.numbers = numbers
        #: Seconds to the first streamed chunk, reported by a preset (``Reservation``).
        self.first_token: float | None = None


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
        try:
            import redis
        except ImportError as exc:
            raise ImportError(
                "ledger='redis://...' needs the redis package: pip install 'rate_limited[redis]'"
            ) from exc
        client_url, self.name, self.lease = parse_url(url)
        #: The server's URL, password hidden.
        self.url = _redacted(client_url)
        self.names = [r.name for r in resources]
        self._resources = list(resources)
        self._rules: tuple[Settle, ...] = tuple(r.settle for r in resources)
        self.prefix = f"{_ROOT}{{{self.name}}}:"
        self.poll = poll
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "owner": owner, "since": time.time()}
        )
        self._down_errors = (redis.ConnectionError, redis.TimeoutError)
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=socket_timeout,
                socket_timeout=socket_timeout,
                decode_responses=True,
            )
            self._client.ping()
        except (ValueError, redis.RedisError) as exc:
            raise LedgerUnavailableError(
                f"can't reach the shared ledger's Redis at {self.url} ({exc}). Is "
                "redis-server running and reachable there? Start it, fix the URL, or leave "
                "ledger= out for a ledger of this process only."
            ) from exc
        self._script = self._client.register_script(_lua.SCRIPT)
        self._check_declarations()
        self._specs: dict[tuple[int, Hashable], list[str]] = {}
        self._quotas: dict[tuple[int, Hashable], float] = {}
        #: The answer of the last admission that failed: (demand, now, per resource
        #: (seconds until it fits, needed, quota)); the waiting questions reuse it.
        self._last: tuple[Demand, float, list[tuple[float, float, float]]] | None = None
        #: Settling operations not sent yet, in order: they go with the next admission
        #: (one round trip per call), or from the sender thread if none comes within
        #: ``_BATCH_WAIT``; they stay here while Redis is away.
        self._outbox: list[tuple[str, list[str]]] = []
        self._send_soon = threading.Event()
        self._armed = False  # the sender thread was told, and has not flushed yet
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = -math.inf
        self._failures = 0
        self._notices: list[tuple[type[Warning], str]] = []
        self._waiting_release = False
        self._reported = False
        self._wake: Callable[[], None] | None = None
        self._closed = threading.Event()
        self._heartbeat()
        self._keeper = threading.Thread(
            target=self._keep_alive, name=f"rate_limited-ledger-{self.name}", daemon=True
        )
        self._keeper.start()
        self._sender = threading.Thread(
            target=self._send_queued, name=f"rate_limited-ledger-{self.name}-send", daemon=True
        )
        self._sender.start()

    def __repr__(self) -> str:
        state = "unreachable" if self._down_since is not None else "connected"
        return (
            f"<RedisLedger {self.url} name={self.name!r} lease={self.lease:g}s {state}; "
            f"{len(self._outbox)} settlements to send>"
        )

    # -- set-up ------------------------------------------------------------------------------
    def _check_declarations(self) -> None:
        """Runners sharing a name must count the same way: the same refill, window and
        settle rule per resource (quotas may differ: the shared meter keeps one)."""
        meta = self.prefix + "meta"
        for resource in self._resources:
            declared = json.dumps(
                {
                    "refill": resource.refill,
                    "window": float(resource.time_window_seconds),
                    "settle": resource.settle,
                    "partitioned": resource.partition is not None,
                }
            )
            self._client.hsetnx(meta, resource.name, declared)
            stored: Any = self._client.hget(meta, resource.name)
            if stored != declared:
                raise ConfigurationError(
                    f"Resource {resource.name!r} is declared {declared} here but {stored} in "
                    f"the shared ledger {self.name!r} at {self.url}: Runners sharing a ledger "
                    "must count a resource the same way. Use another ?name= for a different "
                    "quota, or clear this one with `rate-limited ledger reset`."
                )

    def watch(self, wake: Callable[[], None]) -> None:
        """``wake()`` (thread-safe) is called when another process gives back a
        reservation a waiting call needs."""
        self._wake = wake

    def close(self) -> None:
        """Stop renewing the lease and give up what this process still holds (kept, as
        if it had died: a call still running may have been sent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._send_soon.set()
        self._keeper.join(timeout=2.0)
        self._sender.join(timeout=2.0)
        try:
            self._run("release_holder", [self.holder])
        except self._down_errors:
            logger.warning(
                "The shared ledger at %s is unreachable: this process's reservations come "
                "back when its lease expires",
                self.url,
            )
        finally:
            self._client.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- meters ------------------------------------------------------------------------------
    @property
    def partitioned(self) -> bool:
        return any(r.partition is not None for r in self._resources)

    def _spec(self, index: int, key: Hashable) -> list[str]:
        spec = self._specs.get((index, key))
        if spec is None:
            r = self._resources[index]
            spec = self._specs[(index, key)] = [
                f"{self.prefix}m:{r.name}:{_partition_text(key)}",
                r.refill,
                _num(r.quota_for(key)),
                _num(r.time_window_seconds),
                _num(r.refill_delay),
            ]
        return spec

    def _index(self, resource: str) -> int:
        try:
            return self.names.index(resource)
        except ValueError:
            raise UnknownResourceError(
                f"no resource named {resource!r}; the ledger has {self.names}"
            ) from None

    def rule(self, resource: str) -> Settle:
        return self._rules[self._index(resource)]

    def expect_reports(self) -> None:
        """The provider will report on the calls: from now on every admission also records
        the room it leaves, which ``reconcile`` compares the reports with (it costs a
        list operation per meter in Redis, so not before)."""
        self._reported = True

    # -- talking to Redis -----------------------------------------------------------------------
    def _send(self, ops: list[tuple[str, list[str]]]) -> Any:
        """Run ``ops`` in one script call (the caller holds the lock); a lost connection
        is noted (a warning) and raised."""
        args = [self.prefix]
        for name, op_args in ops:
            args += [name, str(len(op_args)), *op_args]
        try:
            result = self._script(args=args)
        except self._down_errors as exc:
            self._lost(exc)
            raise
        if self._down_since is not None:
            self._back()
        return result

    def _run(self, op: str, args: list[str]) -> Any:
        """Run ``op`` now, after the operations queued before it, in one round trip."""
        with self._lock:
            result = self._send([*self._outbox, (op, args)])
            self._outbox.clear()
        return result

    def _tell(self, op: str, args: list[str]) -> None:
        """Queue a settling operation (never raises: the call's result matters more than
        this bookkeeping, which waits for Redis if it is away)."""
        with self._lock:
            self._outbox.append((op, args))
            if self._armed:
                return  # the sender thread is due already: one wake-up per batch
            self._armed = True
        self._send_soon.set()

    def _flush(self) -> None:
        with self._lock:
            if self._outbox:
                ops = list(self._outbox)
                self._send(ops)
                del self._outbox[: len(ops)]

    def _send_queued(self) -> None:
        """The sender thread: what is queued and not taken by an admission within
        ``_BATCH_WAIT`` goes on its own (so that other processes see it soon)."""
        while not self._closed.is_set():
            self._send_soon.wait()
            if self._closed.wait(_BATCH_WAIT):
                return
            self._send_soon.clear()
            with self._lock:
                self._armed = False
            try:
                self._flush()
            except self._down_errors:
                self._send_soon.set()  # again once Redis may be back
                self._closed.wait(max(0.0, self._retry_at - time.monotonic()))
            except Exception:  # a bug: say so, keep the operations, try again later
                logger.exception("The shared ledger could not send its settlements")
                self._closed.wait(1.0)

    def _lost(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** min(self._failures - 1, 10))
        self._retry_at = time.monotonic() + delay
        if self._down_since is None:
            self._down_since = time.monotonic()
            text = (
                f"Lost the shared ledger's Redis at {self.url} ({exc}): nothing is admitted "
                "until it is back; calls already running finish, their results are kept, and "
                "what they used is billed to it once it is back."
            )
            logger.warning("%s", text)
            self._notices.append((LedgerWarning, text))

    def _back(self) -> None:
        seconds = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since, self._failures, self._retry_at = None, 0, -math.inf
        logger.warning("The shared ledger's Redis at %s is back after %.1f s", self.url, seconds)

    def take_notices(self) -> list[tuple[type[Warning], str]]:
        """Warnings for the thread that called ``run()`` (see ``Engine.take_notices``)."""
        notices, self._notices = self._notices, []
        return notices

    # -- the keeper thread ---------------------------------------------------------------------
    def _heartbeat(self) -> None:
        self._run("heartbeat", [self.holder, _num(self.lease), self._info])

    def _keep_alive(self) -> None:
        """Renew the lease every ``lease / 4`` s and pass on ``freed`` notifications."""
        period = self.lease / 4
        pubsub = None
        while not self._closed.is_set():
            try:
                if pubsub is None:
                    pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                    pubsub.subscribe(self.prefix + "freed")
                self._heartbeat()
                due = time.monotonic() + period
                while not self._closed.is_set() and (left := due - time.monotonic()) > 0:
                    message = pubsub.get_message(timeout=min(left, 0.25))
                    if message is not None and self._waiting_release and self._wake:
                        self._waiting_release = False
                        self._wake()
            except self._down_errors as exc:
                self._lost(exc)
                if pubsub is not None:
                    pubsub.close()
                    pubsub = None
                self._closed.wait(max(0.0, self._retry_at - time.monotonic()))
            except Exception:  # never let the lease lapse silently on a bug
                logger.exception("The shared ledger's keeper thread failed; retrying")
                self._closed.wait(period)
        if pubsub is not None:
            pubsub.close()

    # -- admission and settlement --------------------------------------------------------------
    def try_reserve(
        self, demand: Demand, now: float, *, defer: bool = False
    ) -> RedisReservation | None:
        """Admit a call needing ``demand`` on every shared meter at once, or return None."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return None
        entries = []
        track = "1" if self._reported else "0"
        args = [self.holder, _num(self.lease), "1" if defer else "0", track, str(len(demand))]
        for index, need in enumerate(demand):
            entry = [*self._spec(index, need[2]), self._rules[index], _num(need[0]), _num(need[1])]
            entries.append(entry)
            args += entry
        try:
            out = self._run("reserve", args)
        except self._down_errors:
            return None
        if int(out[0]) != 1:
            waits = []
            for i, need in enumerate(demand):
                seconds, needed, quota = (float(x) for x in out[2 + 3 * i : 5 + 3 * i])
                waits.append((seconds, needed, quota))
                self._quotas[(i, need[2])] = quota
            self._last = (demand, now, waits)
            return None
        held, quotas = [], []
        for i, need in enumerate(demand):
            level, quota, corrected = (float(x) for x in out[3 + 3 * i : 6 + 3 * i])
            held.append((level, corrected))
            quotas.append(quota)
            self._quotas[(i, need[2])] = quota
        numbers = [int(x) for x in out[3 + 3 * len(demand) :]]
        return RedisReservation(
            str(out[1]), entries, demand, held, quotas, numbers, now, self._rules, defer
        )

    def _finish(self, reservation: RedisReservation, op: str, *extra: str) -> None:
        self._tell("finish", [self.holder, _num(self.lease), reservation.lease, op, *extra])

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
        self._finish(reservation, "settle", entries, *map(_num, results_usage))
        billed = []  # what the script bills for the results, by each resource's rule
        for rule, need, actual in zip(
            reservation.rules, reservation.demand, results_usage, strict=True
        ):
            billed.append(max(need[1], actual) if rule == "reserved" else actual)
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
            for i, (need, (held, _), quota) in enumerate(
                zip(reservation.demand, reservation.held, reservation.quotas, strict=True)
            ):
                room = (quota - held) / quota
                if need[0] + need[1] > 0 and room < lowest:
                    tightest, lowest = i + 1, room
        self._finish(reservation, "refuse", str(tightest))

    def bill(self, demand: Demand, amounts: Sequence[float], now: float) -> None:
        """Bill a late result's usage, which no reservation holds."""
        args = [str(len(demand))]
        for index, (need, amount) in enumerate(zip(demand, amounts, strict=True)):
            args += [*self._spec(index, need[2]), _num(amount)]
        self._tell("bill", args)

    # -- waiting -------------------------------------------------------------------------------
    def _waits(self, demand: Demand, now: float) -> list[tuple[float, float, float]] | None:
        """Per resource (seconds until it fits, needed, quota); None if Redis is away."""
        last = self._last
        if last is not None and last[0] is demand and last[1] == now:
            return last[2]
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return None
        args = [str(len(demand))]
        for index, need in enumerate(demand):
            args += [*self._spec(index, need[2]), _num(need[0] + need[1])]
        try:
            out = self._run("peek", args)
        except self._down_errors:
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
            return max(now + _RETRY_FIRST, now + self._retry_at - time.monotonic())
        when = now
        for seconds, _, _ in waits:
            if seconds == -2:
                return math.inf
            if seconds == -1:
                self._waiting_release = True
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
    def _peek(self, specs: list[list[str]]) -> list[tuple[float, float, float]]:
        args = [str(len(specs))]
        for spec in specs:
            args += [*spec, "0"]
        out = self._run("peek", args)
        return [
            (float(out[1 + 4 * i]), float(out[2 + 4 * i]), float(out[3 + 4 * i]))
            for i in range(len(specs))
        ]

    def quota(self, resource: str, partition: Hashable = None) -> float:
        index = self._index(resource)
        key = partition if self._resources[index].partition is not None else None
        known = self._quotas.get((index, key))
        if known is None:
            try:
                known = self._peek([self._spec(index, key)])[0][2]
            except self._down_errors:
                known = float(self._resources[index].quota_for(key))
            self._quotas[(index, key)] = known
        return known

    def set_quota(self, resource: str, quota: float, partition: Hashable = None) -> None:
        """Enforce ``quota`` on the shared meter from now on (every process sees it)."""
        index = self._index(resource)
        key = partition if self._resources[index].partition is not None else None
        self._quotas[(index, key)] = float(quota)
        self._tell("set_quota", [*self._spec(index, key), _num(quota)])

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
        held, corrected = admission.held[index]
        charge = sum(admission.demand[index][:2])
        if refused:
            admission.reconciled = True
        args = [
            *spec,
            str(admission.numbers[index]),
            _num(remaining),
            _num(precision),
            "1" if refused else "0",
            _num(charge),
            _num(held),
            _num(corrected),
        ]
        self._tell("reconcile", args)
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
            states = self._peek([self._spec(i, key) for i, key in keys]) if keys else []
        except self._down_errors:
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
            states = self._peek([self._spec(i, key) for i, key in keys]) if keys else []
        except self._down_errors:
            return {}
        return {(self.names[i], key): state for (i, key), state in zip(keys, states, strict=True)}
