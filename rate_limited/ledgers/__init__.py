"""Quota ledgers: the interface (``Ledger``) and its in-memory implementation.

``rate_limited.ledgers.base`` says what a ledger does and who asks what of it;
``rate_limited.ledgers.memory`` keeps the books of one process (``InMemoryLedger``).
The engine holds a ``Ledger`` and does not care which.
"""

from __future__ import annotations

from rate_limited.ledgers.base import Demand, Ledger, Reservation, Settle
from rate_limited.ledgers.memory import InMemoryLedger

__all__ = ["Demand", "InMemoryLedger", "Ledger", "Reservation", "Settle"]
