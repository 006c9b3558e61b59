"""What goes on the wire between the shared ledger and Redis, and what comes back: a
script call packed as Redis reads it, numbers as the Lua code reads them, and the error
replies of a Redis refusing calls for a state of its own (which the ledger treats as Redis
away, not as a bug). ``rate_limited.ledgers._redis_link`` sends and receives them."""

from __future__ import annotations

__all__ = ["Refused", "num", "pack", "refusal"]


#: Error codes of a Redis refusing commands for a state of its own, not for what was asked
#: (the reply's first word; redis-py strips it from the message of the errors it maps).
_STATE_CODES = frozenset(
    {
        "OOM",  # maxmemory reached
        "READONLY",  # a replica (after a failover)
        "NOPERM",  # an ACL change
        "LOADING",  # loading its data set
        "BUSY",  # running a long script
        "MASTERDOWN",  # a replica whose master is down
        "MISCONF",  # writes stopped: its last snapshot failed
        "NOREPLICAS",  # min-replicas-to-write not met
        "TRYAGAIN",
        "CLUSTERDOWN",
    }
)


class Refused(Exception):
    """Redis answered, but refused the ledger's call for a state of its own (see
    ``refusal``): the ledger treats it as Redis away."""


def refusal(exc: BaseException) -> Refused | None:
    """``exc`` as a ``Refused`` if it is a Redis server's refusal for a state of its own
    (out of memory, read-only, no permission, loading, busy...), else None (an error of
    what was asked: a bug, to be raised)."""
    import redis

    if not isinstance(exc, redis.ResponseError):
        return None
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    if code not in _STATE_CODES:
        return None
    text = str(exc)
    if not text.startswith(code):
        text = f"{code} {text}"
    return Refused(text)


def num(value: float) -> str:
    """A number as the Lua script reads it."""
    return repr(float(value))


def pack(args: tuple[str, ...]) -> bytes:
    """A command as Redis reads it (RESP), without the client's per-argument checks (a
    call carries ~50 arguments, all text): hiredis's encoder, in one C call, where the
    ``redis`` extra installed it."""
    if _hiredis is not None:
        packed: bytes = _hiredis.pack_command(args)  # type: ignore[arg-type] # its stub: 1-tuple
        return packed
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - the redis extra installs hiredis
    _hiredis = None  # type: ignore[assignment]
