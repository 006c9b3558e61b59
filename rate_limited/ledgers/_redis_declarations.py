"""Joining a shared ledger: what each Runner declares of its resources.

Runners sharing a ledger name must count each resource the same way (refill, window,
settle rule, partitioned or not: ``P meta``), or joining is a ``ConfigurationError``. They
may declare other quotas: the quota a Runner declares is the user's latest intent, set on
the shared meters when it joins (``P quotas`` keeps the declaration last made, and by
whom); a ``LedgerWarning`` names the old and new quota when a Runner still running
declared the old one. A Runner declaring what was declared last changes nothing, so a
limit read from the provider's headers since then stays.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import ConfigurationError, LedgerWarning, warn
from rate_limited.ledgers._redis_link import RedisLink
from rate_limited.ledgers._redis_url import literal, meter_parts, partition_text
from rate_limited.ledgers._redis_wire import num

if TYPE_CHECKING:
    from rate_limited.resources import Resource

__all__ = ["declare"]


def declare(link: RedisLink, resources: Sequence[Resource], name: str) -> None:
    """Check ``resources`` against what ledger ``name`` (on ``link``) has declared: the
    same refill, window and settle rule per resource. Then declare their quotas: the ones
    this Runner declares apply to the shared meters when it joins (``_declare_quota``)."""
    meta = link.prefix + "meta"
    for resource in resources:
        declared = json.dumps(
            {
                "refill": resource.refill,
                "window": float(resource.time_window_seconds),
                "settle": resource.settle,
                "partitioned": resource.partition is not None,
            }
        )
        link.client.hsetnx(meta, resource.name, declared)
        stored: Any = link.client.hget(meta, resource.name)
        if stored != declared:
            raise ConfigurationError(
                f"Resource {resource.name!r} is declared {declared} here but {stored} in "
                f"the shared ledger {name!r} at {link.url}: Runners sharing a ledger "
                "must count a resource the same way. Use another ?name= for a different "
                "quota, or clear this one with `rate-limited ledger reset`."
            )
        _declare_quota(link, resource, name)


def _declare_quota(link: RedisLink, resource: Resource, name: str) -> None:
    """The quota this Runner declares for ``resource`` is the user's latest intent: if it
    differs from the one declared last (by any Runner) on this ledger, it is set on the
    shared meters (each partition's by ``partition_quotas``), with a ``LedgerWarning``
    naming both when another live Runner declared the old one. The same declaration
    changes nothing: a limit read from headers since then stays."""
    client = link.client
    quotas = {
        partition_text(key): float(value)
        for key, value in (resource.partition_quotas or {}).items()
    }
    mine: dict[str, Any] = {"quota": float(resource.quota), "partitions": quotas}
    raw: Any = client.hget(link.prefix + "quotas", resource.name)
    before = json.loads(raw) if raw else None
    client.hset(link.prefix + "quotas", resource.name, json.dumps({**mine, "holder": link.holder}))
    if before is None or {k: before.get(k) for k in mine} == mine:
        return
    meters = link.prefix + f"m:{resource.name}:"
    if resource.partition is None:
        keys: Iterable[str] = [meters] if client.exists(meters) else []
    else:
        names: Any = client.hkeys(link.prefix + "meta")  # str: decode_responses
        keys = [  # not those of a resource named "<this name>:..."
            key
            for key in client.scan_iter(match=literal(meters) + "*", count=1000)
            if meter_parts(key[len(link.prefix) + 2 :], names)[0] == resource.name
        ]
    for key in keys:
        partition = key[len(meters) :]
        quota = quotas.get(partition, mine["quota"])
        spec = [key, resource.refill, num(quota), num(resource.time_window_seconds)]
        link.tell("set_quota", [*spec, num(resource.refill_delay), num(quota)])
    now = float(client.time()[0])
    others = client.zrangebyscore(link.prefix + "holders", now, "+inf")
    if before.get("holder") in others:
        old = before["quota"] if before["quota"] != mine["quota"] else before["partitions"]
        new = mine["quota"] if before["quota"] != mine["quota"] else quotas
        warn(
            f"Resource {resource.name!r}: the shared ledger {name!r} at {link.url} "
            f"had quota {old} (declared by a Runner still running, "
            f"{before['holder']}); this Runner declares {new}, which now applies to every "
            "Runner sharing it. Declare the same quota everywhere, or use another ?name=.",
            LedgerWarning,
        )
