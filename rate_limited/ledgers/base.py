"""The ledger interface: what the engine, the feedback from providers' headers and the
displays may ask of a quota ledger, whichever keeps the books.

A ledger knows, per resource (and per partition key of a partitioned resource), what has
been used, what admitted calls hold, and when room frees. The engine drives it through
one cycle per attempt:

* ``try_reserve(demand, now)`` admits a call or refuses without changing anything
  (``per_call()``: it and ``settle`` as the engine calls them once per call);
  ``next_free_time`` / ``binding`` / ``shortfall`` / ``blocked_by`` / ``meter_ids`` say
  why and until when;
* ``begin`` bills a deferred admission when its thread really starts the call;
* then exactly one of ``settle`` (it returned: bill the actual results usage by each
  resource's settle rule), ``keep`` (it failed in a way that may have been billed),
  ``release`` (it proved it was not billed) or ``refused`` (HTTP 429);
* ``bill`` charges a late result that no reservation holds any more.

Before a run, ``charge_earlier`` takes the usage an earlier process was billed recently
(what the store records of the calls it finished, and when): a fresh process resuming a
run must not believe the provider's buckets full while the process before drained them
seconds ago (``rate_limited._checkpoint`` says which records count, and why).

What a provider reports goes in through ``set_quota`` (a limit read from headers),
``reconcile`` (the room it said was left: "report remaining") and ``expect_reports``;
displays read ``snapshot`` and ``partitions``.

Everything takes the time explicitly (``now``, the engine's loop time) and runs on the
engine's loop thread. ``InMemoryLedger`` (``rate_limited.ledgers.memory``) implements it
for one process; a shared ledger (Redis) implements the same methods so that the engine
does not care which it has. A ``Reservation`` is opaque to everyone but the ledger that
made it: others only pass it back (and read the ``demand`` it was made for).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

__all__ = ["Demand", "Earlier", "Ledger", "PerCall", "Reservation", "Settle", "resource_index"]

#: What the provider bills for a call (see ``Resource(settle=...)``).
Settle = Literal["actual", "reserved"]
#: One call's needs, per resource: (arguments usage, results estimate, partition key).
Demand = Sequence[tuple[float, float, Hashable]]
#: An earlier process's call: (its demand, its usage billed by resource name, loop time).
Earlier = tuple[Demand, Mapping[str, float], float]


class Reservation(Protocol):
    """What one admitted attempt holds; only its ledger looks inside.

    ``first_token`` is the attempt's, not the ledger's: seconds from sending to the first
    chunk of a streamed response, which a preset reports on the attempt's admission (the
    only per-attempt object it is handed) and the engine puts on the call.
    """

    first_token: float | None

    @property
    def demand(self) -> Demand: ...


R = TypeVar("R", bound=Reservation)


class PerCall(NamedTuple):
    """``try_reserve`` (not deferred) and ``settle`` as the engine calls them once per
    call: the ledger's methods, or code that does exactly what they do, faster, for the
    ledger's configuration (``Ledger.per_call``). Untyped reservations: a generic
    NamedTuple needs Python 3.11."""

    try_reserve: Callable[[Demand, float], Any]
    settle: Callable[[Any, Sequence[float], float], list[float]]


@runtime_checkable
class Ledger(Protocol[R]):
    """A quota ledger: admission, settlement, the provider's reports, displays."""

    @property
    def names(self) -> Sequence[str]:
        """The resources' names, in the order of a demand."""
        ...

    @property
    def partitioned(self) -> bool:
        """Whether some resource has one meter per partition key."""
        ...

    # -- admission ---------------------------------------------------------------------------
    def try_reserve(self, demand: Demand, now: float, *, defer: bool = False) -> R | None:
        """Admit a call needing ``demand``, or return None without changing anything.
        ``defer``: hold what admission bills until ``begin`` (a sync call's thread)."""
        ...

    def begin(self, reservation: R, now: float) -> None:
        """The call of a deferred admission started at ``now``: bill what it held."""
        ...

    def next_free_time(self, demand: Demand, now: float) -> float:
        """Earliest time at which ``demand`` fits, ``inf`` if it waits on a release."""
        ...

    def binding(self, demand: Demand, now: float) -> str | None:
        """Name of the resource that keeps ``demand`` from fitting now (for messages)."""
        ...

    def shortfall(self, demand: Demand, now: float) -> tuple[str, float, float] | None:
        """``(resource, needed, quota)`` of the first resource ``demand`` exceeds."""
        ...

    def blocked_by(self, demand: Demand, now: float) -> set[int]:
        """Identities of the meters ``demand`` does not fit on now."""
        ...

    def meter_ids(self, demand: Demand) -> set[int]:
        """Identities of the meters ``demand`` is charged on."""
        ...

    def per_call(self) -> PerCall:
        """``try_reserve`` and ``settle`` for the engine's per-call path, asked once per
        run: the bound methods, or functions that behave exactly as they do (the
        in-memory ledger compiles them for its resources: ``rate_limited.ledgers._compiled``)."""
        ...

    # -- settlement --------------------------------------------------------------------------
    def settle(self, reservation: R, results_usage: Sequence[float], now: float) -> list[float]:
        """The call returned with ``results_usage``: bill it by each resource's rule;
        returns what the attempt was billed per resource in all (its arguments usage and
        its results), as a new list the caller may keep or change."""
        ...

    def keep(self, reservation: R, now: float) -> None:
        """The call failed in a way that may have been billed: its estimate stays used."""
        ...

    def release(self, reservation: R, now: float) -> None:
        """The call proved it was not billed (never sent): undo everything."""
        ...

    def refused(self, reservation: R, now: float) -> None:
        """The provider refused the call (HTTP 429): release it and correct the ledger."""
        ...

    def bill(self, demand: Demand, amounts: Sequence[float], now: float) -> None:
        """Bill ``amounts`` of results usage that no reservation holds (a late result)."""
        ...

    def charge_earlier(self, earlier: Iterable[Earlier], now: float) -> None:
        """Charge usage billed before this ledger kept books (an earlier process's calls,
        as its store recorded them): each ``(demand, usage by resource name, time)``,
        the time in loop time (<= ``now``). What still counts at ``now`` (by each
        resource's window or refill) is charged, on the meter of the call's partition key;
        a name the ledger has no resource for is ignored. A ledger whose state outlives
        processes (Redis) has these calls already and ignores them."""
        ...

    # -- what the provider says --------------------------------------------------------------
    def expect_reports(self) -> None:
        """The provider will report on the calls: keep what ``reconcile`` needs."""
        ...

    def quota(self, resource: str, partition: Hashable = None) -> float:
        """The quota enforced for ``resource`` (``partition``'s, if partitioned)."""
        ...

    def set_quota(self, resource: str, quota: float, partition: Hashable = None) -> None:
        """Enforce ``quota`` for ``resource`` (``partition``'s) from now on."""
        ...

    def reconcile(
        self,
        resource: str,
        remaining: float,
        now: float,
        *,
        partition: Hashable = None,
        admission: R | None = None,
        precision: float = 0.0,
        refused: bool = False,
    ) -> float:
        """The provider says ``remaining`` (± ``precision``) of ``resource`` was left when
        it took the request of ``admission``; bill what the ledger believed above that,
        and return it."""
        ...

    # -- displays ----------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, tuple[float, float, float]]:
        """``{name: (used, reserved, quota)}``; for a partitioned resource, its busiest key."""
        ...

    def partitions(self, now: float) -> dict[tuple[str, Hashable], tuple[float, float, float]]:
        """``{(name, key): (used, reserved, quota)}`` of every partitioned meter."""
        ...


def resource_index(names: list[str], resource: str) -> int:
    """The position of ``resource`` among a ledger's ``names``; a clear error if it has none."""
    from rate_limited.exceptions import UnknownResourceError

    try:
        return names.index(resource)
    except ValueError:
        raise UnknownResourceError(
            f"no resource named {resource!r}; the ledger has {names}"
        ) from None
