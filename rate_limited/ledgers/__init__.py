"""Quota ledgers: the interface (``Ledger``), its in-memory implementation and the shared one.

``rate_limited.ledgers.base`` says what a ledger does and who asks what of it;
``rate_limited.ledgers.memory`` keeps the books of one process (``InMemoryLedger``);
``rate_limited.ledgers.redis`` keeps them in Redis, shared by every process and machine
given the same URL and name (``RedisLedger``). The engine holds a ``Ledger`` and does not
care which. ``open_ledger`` turns the Runner's ``ledger=`` argument into one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.ledgers.base import Demand, Ledger, Reservation, Settle
from rate_limited.ledgers.memory import InMemoryLedger

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["Demand", "InMemoryLedger", "Ledger", "Reservation", "Settle", "open_ledger"]


def open_ledger(spec: str | None, resources: Sequence[Resource], owner: str = "") -> Ledger[Any]:
    """The ledger for ``Runner(ledger=spec)``: None -> ``InMemoryLedger`` (this process);
    a ``redis://`` URL -> a ``RedisLedger`` shared under the URL's ``?name=``."""
    if spec is None:
        return InMemoryLedger(resources)
    from rate_limited.ledgers.redis import RedisLedger

    return RedisLedger(spec, resources, owner=owner)  # its URL's checks: ``parse_url``
