"""``CallSpend``: one call's money, kept in the Call's rare fields (a leaf module: ``calls``
imports it, and ``_spend``, which fills it in, imports ``calls``'s dependents)."""

from __future__ import annotations

from typing import Any

__all__ = ["CallSpend"]


class CallSpend:
    """One call's money: its maximum cost, its budget reservation, what it cost so far."""

    __slots__ = ("base_kwargs", "cost", "max_cost", "rung", "token", "unknown")

    def __init__(self, max_cost: float | None) -> None:
        #: The most one attempt can cost (None: unknown).
        self.max_cost = max_cost
        #: The budget's reservation of the attempt in flight.
        self.token: str | None = None
        #: USD of the attempts so far, and whether one of them could not be priced.
        self.cost = 0.0
        self.unknown = False
        #: Escalation: the rung of the next attempt, and the arguments as scheduled.
        self.rung = 0
        self.base_kwargs: dict[str, Any] | None = None
