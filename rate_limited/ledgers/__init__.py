"""Ledgers: where the quotas' usage is kept.

The in-process ledger (``rate_limited._ledger.Ledger``) is the default; a shared one,
``RedisLedger`` (``ledger="redis://host:6379/0?name=team-key"``), keeps the same meters in
Redis so that every process and machine on one API key admits against one quota.
``open_ledger`` turns the Runner's ``ledger=`` argument into one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._ledger import Ledger
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["open_ledger"]


def open_ledger(spec: Any, resources: Sequence[Resource], owner: str = "") -> Any:
    """The ledger for ``Runner(ledger=spec)``: None -> in this process; a ``redis://`` URL
    -> a ``RedisLedger`` shared under the URL's ``?name=``."""
    if spec is None:
        return Ledger(resources)
    if isinstance(spec, str):
        from rate_limited.ledgers.redis import RedisLedger

        return RedisLedger(spec, resources, owner=owner)
    raise ConfigurationError(
        "ledger= must be None (this process's own ledger) or a 'redis://host:port/db"
        f"?name=...' URL shared by the processes on one API key, got {spec!r}."
    )
