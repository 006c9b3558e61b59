"""RedisReservation: what one admission of the Redis ledger holds, for the ledger only.

The engine passes it back (``settle``, ``keep``, ``release``, ``refused``) and reads its
``demand`` and ``first_token`` (``rate_limited.ledgers.base.Reservation``); the ledger
keeps in it what the operations on its lease need without asking Redis again.
"""

from __future__ import annotations

from rate_limited.ledgers._reservation import Admission
from rate_limited.ledgers.base import Demand, Settle

__all__ = ["RedisReservation"]


class RedisReservation(Admission):
    """An admission held in Redis under ``lease`` (the lease id)."""

    __slots__ = ("entries", "lease", "numbers", "quotas")

    def __init__(
        self,
        lease: str,
        entries: list[list[str]],
        demand: Demand,
        held: list[float],
        quotas: list[float],
        numbers: list[int],
        at: float,
        rules: tuple[Settle, ...],
        deferred: bool,
    ) -> None:
        Admission.__init__(self, demand, held, at, rules, deferred)
        self.lease = lease
        #: Per resource: meter key, kind, quota, window, delay, rule, arguments, estimate.
        self.entries = entries
        self.quotas = quotas
        #: Per resource, the admission's number on its meter (see ``reconcile``).
        self.numbers = numbers
