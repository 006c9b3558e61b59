"""``RedisBook``: a budget's spend in Redis, under the store's prefix (see ``_spend_books``)."""

from __future__ import annotations

import math
import uuid
from typing import Any

from rate_limited._spend_books import frees_at
from rate_limited.exceptions import StoreUnavailableError

__all__ = ["RedisBook"]

# Redis: a sorted set of spends (member "token:amount", score its time) with their sum;
# a hash of reservations (token -> amount) with their sum, and their lease ends in a
# sorted set (score: when the lease ends). Each script is atomic; each costs O(log n)
# plus what it expires or trims.
_REDIS_PRELUDE = """
local spends, total, held, heldsum, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local function unhold(token)
  local amount = redis.call('HGET', held, token)
  if not amount then return nil end
  redis.call('HDEL', held, token)
  redis.call('ZREM', leases, token)
  if redis.call('HLEN', held) == 0 then
    redis.call('SET', heldsum, '0')
  else
    redis.call('INCRBYFLOAT', heldsum, -tonumber(amount))
  end
  return amount
end
local function spend(token, amount, at)
  if tonumber(amount) > 0 then
    redis.call('ZADD', spends, at, token .. ':' .. amount)
    redis.call('INCRBYFLOAT', total, amount)
  end
end
local function expire()
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
    local amount = unhold(token)
    if amount then spend(token, amount, now) end
  end
end
local function trim(window)
  if window == 'inf' then return end
  local floor = now - tonumber(window)
  local old = redis.call('ZRANGEBYSCORE', spends, '-inf', floor)
  for _, member in ipairs(old) do
    redis.call('INCRBYFLOAT', total, -tonumber(string.match(member, ':([^:]+)$')))
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', spends, '-inf', floor) end
  if redis.call('ZCARD', spends) == 0 then redis.call('SET', total, '0') end
end
local function spent() return tonumber(redis.call('GET', total) or '0') end
local function held_sum() return tonumber(redis.call('GET', heldsum) or '0') end
"""
_REDIS_RESERVE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, window, limit, amount, token, lease end
expire()
trim(ARGV[2])
if spent() + held_sum() + tonumber(ARGV[4]) > tonumber(ARGV[3]) * (1 + 1e-9) + 1e-15 then
  return 0
end
redis.call('HSET', held, ARGV[5], ARGV[4])
redis.call('ZADD', leases, ARGV[6], ARGV[5])
redis.call('INCRBYFLOAT', heldsum, ARGV[4])
return 1
"""
)
_REDIS_SETTLE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, token, amount, '1' to bill without a reservation. A token whose lease ran
-- out was counted at its reserved amount already: nothing more is added for it.
if unhold(ARGV[2]) or ARGV[4] == '1' then spend(ARGV[2], ARGV[3], now) end
return 1
"""
)
_REDIS_RELEASE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, token
unhold(ARGV[2])
return 1
"""
)
_REDIS_STATE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, window, '1' for the spends too
expire()
trim(ARGV[2])
local entries = {}
if ARGV[3] == '1' then entries = redis.call('ZRANGE', spends, 0, -1, 'WITHSCORES') end
return {tostring(spent()), tostring(held_sum()), entries}
"""
)


class RedisBook:
    """A spend book in Redis (the store's server and prefix), shared by every process.

    Keys are per budget name *and* window (``...:budget:<name>:<window>:...``): the
    running sum of a rolling window drops what leaves it.
    """

    def __init__(self, client: Any, prefix: str, budget: str, window: float, lease: float) -> None:
        self._client = client
        self._lease = lease
        base = f"{prefix}budget:{budget}:{'inf' if math.isinf(window) else repr(window)}:"
        self._keys = [base + name for name in ("spends", "total", "held", "heldsum", "leases")]
        self._window = "inf" if math.isinf(window) else repr(window)
        self._reserve = client.register_script(_REDIS_RESERVE)
        self._settle = client.register_script(_REDIS_SETTLE)
        self._release = client.register_script(_REDIS_RELEASE)
        self._state = client.register_script(_REDIS_STATE)
        self._where = f"the budget {budget!r} in Redis"

    def _call(self, script: Any, *args: Any) -> Any:
        try:
            return script(keys=self._keys, args=list(args))
        except Exception as exc:
            raise StoreUnavailableError(f"can't update {self._where}: {exc}") from exc

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        token = uuid.uuid4().hex
        ok = self._call(
            self._reserve,
            repr(now),
            self._window,
            repr(limit),
            repr(amount),
            token,
            repr(now + self._lease),
        )
        return token if int(ok) else None

    def settle(self, token: str, amount: float, now: float) -> None:
        self._call(self._settle, repr(now), token, repr(max(0.0, amount)), "0")

    def release(self, token: str) -> None:
        self._call(self._release, "0", token)

    def bill(self, amount: float, now: float) -> None:
        if amount > 0:
            self._call(self._settle, repr(now), uuid.uuid4().hex, repr(amount), "1")

    def _read(self, now: float, entries: bool) -> tuple[float, float, list[tuple[float, float]]]:
        spent, held, raw = self._call(self._state, repr(now), self._window, "1" if entries else "0")
        pairs: list[tuple[float, float]] = []
        for member, score in zip(raw[::2], raw[1::2], strict=True):
            text = member.decode() if isinstance(member, bytes) else str(member)
            pairs.append((float(score), float(text.rsplit(":", 1)[1])))
        return float(spent), float(held), pairs

    def state(self, window: float, now: float) -> tuple[float, float]:
        spent, held, _ = self._read(now, entries=False)
        return spent, held

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        spent, held, entries = self._read(now, entries=True)
        return frees_at(entries, spent, held, amount, limit, window, now)
