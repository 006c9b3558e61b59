"""What one admitted attempt holds: the part every ledger keeps, and the in-memory one's.

A reservation is made per attempt (a million calls make a million of them), lives while
its call is in flight and is dropped when it settles, so it is kept small: ``__slots__``,
flat lists of floats where a list of tuples would allocate one object per resource, and
the lists a ledger shares between reservations (its meters, its rules) shared, not
copied. ``Admission`` holds what any ledger needs to settle an attempt and to compare a
provider's report with what it believed at the admission; a ledger's reservation adds
where it billed the attempt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rate_limited._meters import Meter
    from rate_limited._reconcile import Mark
    from rate_limited.ledgers.base import Demand, Settle

__all__ = ["Admission", "Reservation"]


class Admission:
    """An admitted attempt, as every ledger keeps it (``Reservation`` in the interface)."""

    __slots__ = ("at", "deferred", "demand", "first_token", "held", "reconciled", "rules")

    def __init__(
        self,
        demand: Demand,
        held: list[float],
        at: float,
        rules: tuple[Settle, ...],
        deferred: bool,
    ) -> None:
        self.demand = demand
        #: Per resource, usage + reservations right after admission and the corrections
        #: made so far, flat: ``[held_0, corrected_0, held_1, corrected_1, ...]``.
        self.held = held
        #: Admission time (the engine's), and each resource's settle rule then.
        self.at = at
        self.rules = rules
        #: Admitted but not started yet (a sync call waiting for its thread): what it
        #: bills at admission is held instead, until ``Ledger.begin`` bills it at the
        #: moment the function starts, so that a window counts from the real start.
        self.deferred = deferred
        #: True once a refusal of this attempt was reconciled from its headers.
        self.reconciled = False
        #: Seconds from sending to the first chunk of a streamed response (the presets
        #: report it here; the engine puts it on the call).
        self.first_token: float | None = None

    def held_at(self, index: int) -> tuple[float, float]:
        """Resource ``index``'s (usage + reservations, corrections) right after admission."""
        held = self.held
        return held[2 * index], held[2 * index + 1]


class Reservation(Admission):
    """An admission on the in-memory ledger: the meters it was charged on, and what they
    gave back for the usage billed at admission (what ``release`` refunds)."""

    __slots__ = ("billed", "marks", "meters")

    def __init__(
        self,
        meters: list[Meter],
        demand: Demand,
        billed: list[object],
        held: list[float],
        marks: list[Mark | None] | None,
        at: float,
        rules: tuple[Settle, ...],
        deferred: bool = False,
    ) -> None:
        # Admission's fields, set here rather than through ``Admission.__init__``: a
        # reservation is made per call, and the call to the base's ``__init__`` was a
        # fifth of its cost.
        self.demand = demand
        self.held = held
        self.at = at
        self.rules = rules
        self.deferred = deferred
        self.reconciled = False
        self.first_token: float | None = None
        #: The meter each resource was charged on (its partition's, if partitioned);
        #: the ledger's own list when no resource is partitioned.
        self.meters = meters
        #: Per meter, the token of what was billed at admission (for ``release``).
        self.billed = billed
        #: Per meter the provider reports on, what ``reconcile`` needs (else None).
        self.marks = marks

    def mark(self, index: int) -> Mark | None:
        return None if self.marks is None else self.marks[index]
