"""RedisReservation: what one admission of the Redis ledger holds, for the ledger only.

The engine passes it back (``settle``, ``keep``, ``release``, ``refused``) and reads its
``demand`` and ``first_token`` (``rate_limited.ledgers.base.Reservation``); the ledger
keeps in it what the operations on its lease need without asking Redis again.
"""

from __future__ import annotations

from rate_limited.ledgers.base import Demand, Settle

__all__ = ["RedisReservation"]


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
