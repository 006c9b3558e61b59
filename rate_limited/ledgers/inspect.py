"""``rate-limited ledger inspect|reset redis://...``: what a shared ledger holds, and who.

``inspect`` prints, for each shared ledger on the server (or the one ``?name=`` names):
each meter (resource and partition) with its level, what is reserved and its quota; each
holder (a Runner's process: host, pid, Runner name) with when its lease runs out and the
reservations it holds; and how many dead holders were reaped. It only reads (a window
meter's expired entries are dropped on the way, as any admission would).

``reset`` deletes one ledger's keys (``?name=`` required): its meters start empty and its
declarations are forgotten (e.g. to change a resource's refill or window).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from rate_limited._redact import redact, redact_url
from rate_limited.exceptions import LedgerUnavailableError
from rate_limited.ledgers import _lua
from rate_limited.ledgers._redis_url import ROOT, literal, meter_parts, parse_url

__all__ = ["inspect", "reset"]


def _connect(url: str) -> tuple[Any, str | None]:
    """A client for ``url``'s server, and the ledger its ``?name=`` names (None: all)."""
    import redis

    client_url, name, _ = parse_url(url)
    named = any(k == "name" for k, _ in parse_qsl(urlsplit(url).query))
    try:
        client = redis.Redis.from_url(client_url, decode_responses=True, socket_timeout=5.0)
        client.ping()
    except (ValueError, redis.RedisError) as exc:
        raise LedgerUnavailableError(
            f"can't reach Redis at {redact_url(client_url)}: {redact(str(exc))}"
        ) from exc
    return client, name if named else None


def _names(client: Any) -> list[str]:
    names = set()
    for key in client.scan_iter(match=f"{ROOT}{{*}}:*", count=1000):
        names.add(key[len(ROOT) + 1 : key.index("}:", len(ROOT))])
    return sorted(names)


def inspect(url: str) -> str:
    """The report ``rate-limited ledger inspect URL`` prints."""
    client, name = _connect(url)
    try:
        names = [name] if name is not None else _names(client)
        if not names:
            return f"No shared ledger on {redact_url(url)}."
        return "\n\n".join(_one(client, n) for n in names)
    finally:
        client.close()


def _one(client: Any, name: str) -> str:
    prefix = f"{ROOT}{{{name}}}:"
    script = client.register_script(_lua.SCRIPT)
    lines = [f"Ledger {name!r}"]
    meters = sorted(client.scan_iter(match=literal(prefix) + "m:*", count=1000))
    resources = client.hkeys(prefix + "meta")  # the resources declared (by name)
    lines.append(
        f"  {'resource':<28} {'partition':<18} {'used':>12} {'reserved':>12} "
        f"{'quota':>12} {'held':>6}"
    )
    for key in meters:
        spec = client.hmget(key, "k", "q", "w", "d")
        if spec[0] is None:
            continue
        out = script(args=[prefix, "", "", "peek", "7", "1", key, *spec, "0"])
        used, reserved, quota = float(out[1]), float(out[2]), float(out[3])
        resource, partition = meter_parts(key[len(prefix) + 2 :], resources)
        lines.append(
            f"  {resource:<28} {partition or '-':<18} {used:>12,.1f} {reserved:>12,.1f} "
            f"{quota:>12,.0f} {(used + reserved) / quota:>6.1%}"
        )
    if not meters:
        lines.append("  (no meters yet)")
    now_s, now_us = client.time()
    now = float(now_s) + float(now_us) / 1e6
    holders = client.zrange(prefix + "holders", 0, -1, withscores=True)
    info = client.hgetall(prefix + "hi")
    by_holder: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw in client.hvals(prefix + "leases"):
        lease = json.loads(raw)
        by_holder[lease["h"]].append(lease)
    lines.append(f"  holders: {len(holders)}")
    for holder, deadline in holders:
        who = json.loads(info.get(holder, "{}"))
        leases = by_holder.get(holder, [])
        held: dict[str, float] = defaultdict(float)
        for lease in leases:
            for entry in lease["e"]:
                resource = meter_parts(entry[0][len(prefix) + 2 :], resources)[0]
                held[resource] += float(entry[6]) + float(entry[7])
        state = (
            f"lease ends in {deadline - now:.1f} s"
            if deadline > now
            else f"lease expired {now - deadline:.1f} s ago (reaped at the next admission)"
        )
        owner = f" runner {who['owner']!r}" if who.get("owner") else ""
        lines.append(
            f"    {holder} (host {who.get('host', '?')}, pid {who.get('pid', '?')}{owner}): "
            f"{state}; {len(leases)} reservation(s)"
            + "".join(f"; {res} {amount:,.1f}" for res, amount in sorted(held.items()))
        )
    stats = client.hgetall(prefix + "stats")
    lines.append(
        f"  reaped: {stats.get('reaped_holders', 0)} dead holder(s), "
        f"{stats.get('reaped_leases', 0)} reservation(s) billed as kept"
    )
    return "\n".join(lines)


def reset(url: str) -> int:
    """Delete the keys of the ledger ``?name=`` names; returns how many."""
    client, name = _connect(url)
    try:
        if name is None:
            raise LedgerUnavailableError(
                "ledger reset needs the ledger's ?name= in the URL (it deletes one ledger)."
            )
        keys = list(client.scan_iter(match=literal(f"{ROOT}{{{name}}}:") + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()
