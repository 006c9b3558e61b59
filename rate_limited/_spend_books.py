"""Spend books: where a ``Budget`` keeps what was spent and what running calls hold.

One interface, three places:

* ``MemoryBook``: this process (a Runner without a store; ``memory://`` stores share one
  per store and budget name);
* ``SqliteBook``: a table ``budget_spend`` in the SQLite store's file, each operation one
  ``BEGIN IMMEDIATE`` transaction, so processes on the same file are serialised;
* ``RedisBook``: keys under the Redis store's prefix, each operation one Lua script.

``reserve`` is the one place the limit is checked: spent (within the window) plus held
plus the new amount must stay within it, checked and held in one atomic step, so spent
plus reserved never exceeds the limit whatever the concurrency, in one process or many.
Times are wall-clock epoch seconds (the engine's loop time plus its offset), so that a
rolling window means the same in every process. A reservation is a lease: one left
behind by a process that died expires after ``lease`` seconds and then counts as spent at
its reserved amount, since its call may have been billed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import sqlite3
import threading
import uuid
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from rate_limited.exceptions import StoreUnavailableError

if TYPE_CHECKING:
    from rate_limited.stores.base import Store

__all__ = ["MemoryBook", "RedisBook", "SpendBook", "SqliteBook", "book_for"]

#: Rounding slack on the limit: sums of floats drift by a few ulps.
_SLACK = 1e-9


def _fits(spent: float, held: float, amount: float, limit: float) -> bool:
    return spent + held + amount <= limit * (1 + _SLACK) + 1e-15


class SpendBook(Protocol):
    """What a Budget needs from the place its spend is kept."""

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        """Hold ``amount`` if spent + held + amount <= limit; a token, else None."""

    def settle(self, token: str, amount: float, now: float) -> None:
        """The reservation is spent, ``amount`` of it (the rest is freed)."""

    def release(self, token: str) -> None:
        """The reservation is freed: nothing was spent."""

    def bill(self, amount: float, now: float) -> None:
        """``amount`` was spent without a reservation (a late result)."""

    def state(self, window: float, now: float) -> tuple[float, float]:
        """``(spent within the window, held)``."""

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        """When ``amount`` fits, as far as the window's expiry can tell (``inf``: never,
        unless a reservation is released)."""


def _frees_at(
    entries: list[tuple[float, float]],
    spent: float,
    held: float,
    amount: float,
    limit: float,
    window: float,
    now: float,
) -> float:
    """From the spend ``entries`` (time, amount) inside the window, oldest first."""
    if _fits(spent, held, amount, limit):
        return now
    if math.isinf(window):
        return math.inf
    for at, value in entries:
        spent -= value
        if _fits(spent, held, amount, limit):
            return at + window
    return math.inf


class MemoryBook:
    """A spend book in this process (thread-safe)."""

    def __init__(self, lease: float = math.inf) -> None:
        self._lock = threading.Lock()
        self._spent: deque[tuple[float, float]] = deque()  # (time, amount), time order
        self._held: dict[str, float] = {}
        self._count = itertools.count()

    def _spent_in(self, window: float, now: float) -> tuple[float, list[tuple[float, float]]]:
        floor = now - window
        entries = [e for e in self._spent if e[0] > floor]
        return sum(e[1] for e in entries), entries

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        with self._lock:
            spent, _ = self._spent_in(window, now)
            if not _fits(spent, sum(self._held.values()), amount, limit):
                return None
            token = str(next(self._count))
            self._held[token] = amount
            return token

    def settle(self, token: str, amount: float, now: float) -> None:
        with self._lock:
            self._held.pop(token, None)
            self._add(amount, now)

    def _add(self, amount: float, now: float) -> None:
        if amount > 0:
            if self._spent and self._spent[-1][0] > now:  # clocks of two runners
                times = [e[0] for e in self._spent]
                self._spent.insert(bisect.bisect_right(times, now), (now, amount))
            else:
                self._spent.append((now, amount))

    def release(self, token: str) -> None:
        with self._lock:
            self._held.pop(token, None)

    def bill(self, amount: float, now: float) -> None:
        with self._lock:
            self._add(amount, now)

    def state(self, window: float, now: float) -> tuple[float, float]:
        with self._lock:
            return self._spent_in(window, now)[0], sum(self._held.values())

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        with self._lock:
            spent, entries = self._spent_in(window, now)
            return _frees_at(entries, spent, sum(self._held.values()), amount, limit, window, now)

    def __repr__(self) -> str:
        return f"<MemoryBook {len(self._spent)} spends, {len(self._held)} held>"


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (
    budget TEXT NOT NULL,
    token TEXT,
    at REAL NOT NULL,
    amount REAL NOT NULL,
    expires REAL
)"""
_SQLITE_INDEX = "CREATE INDEX IF NOT EXISTS budget_spend_at ON budget_spend (budget, at)"


class SqliteBook:
    """A spend book in a SQLite file (the store's), shared by every process using it.

    Spends are rows with ``expires`` NULL; reservations are rows with a token and the
    time their lease ends. Its own connection, so it never waits on the store's buffer.
    """

    def __init__(self, path: str, budget: str, lease: float) -> None:
        self._name = budget
        self._lease = lease
        self._where = f"the budget {budget!r} in SQLite store {path}"
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(_SQLITE_SCHEMA)
            self._conn.execute(_SQLITE_INDEX)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"can't keep {self._where}: {exc}") from exc
        weakref.finalize(self, self._conn.close)

    def _run(self, work: Any) -> Any:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"can't update {self._where}: {exc}") from exc
            return result

    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        # A lease that ran out: its process died; its call may have been billed.
        conn.execute(
            "UPDATE budget_spend SET expires = NULL "
            "WHERE budget = ? AND expires IS NOT NULL AND expires <= ?",
            (self._name, now),
        )

    def _totals(self, conn: sqlite3.Connection, window: float, now: float) -> tuple[float, float]:
        floor = -1e300 if math.isinf(window) else now - window
        spent, held = conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN expires IS NULL AND at > ? THEN amount END), 0), "
            "COALESCE(SUM(CASE WHEN expires IS NOT NULL THEN amount END), 0) "
            "FROM budget_spend WHERE budget = ?",
            (floor, self._name),
        ).fetchone()
        return float(spent), float(held)

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            self._expire(conn, now)
            spent, held = self._totals(conn, window, now)
            if not _fits(spent, held, amount, limit):
                return None
            token = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO budget_spend (budget, token, at, amount, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (self._name, token, now, amount, now + self._lease),
            )
            return token

        token: str | None = self._run(work)
        return token

    def settle(self, token: str, amount: float, now: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            # A lease that ran out was counted at its reserved amount: the actual replaces it.
            updated = conn.execute(
                "UPDATE budget_spend SET expires = NULL, at = ?, amount = ? "
                "WHERE budget = ? AND token = ?",
                (now, amount, self._name, token),
            ).rowcount
            if not updated and amount > 0:
                conn.execute(
                    "INSERT INTO budget_spend (budget, token, at, amount, expires) "
                    "VALUES (?, ?, ?, ?, NULL)",
                    (self._name, token, now, amount),
                )

        self._run(work)

    def release(self, token: str) -> None:
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM budget_spend WHERE budget = ? AND token = ? AND expires IS NOT NULL",
                (self._name, token),
            )
        )

    def bill(self, amount: float, now: float) -> None:
        if amount > 0:
            self._run(
                lambda conn: conn.execute(
                    "INSERT INTO budget_spend (budget, token, at, amount, expires) "
                    "VALUES (?, NULL, ?, ?, NULL)",
                    (self._name, now, amount),
                )
            )

    def state(self, window: float, now: float) -> tuple[float, float]:
        def work(conn: sqlite3.Connection) -> tuple[float, float]:
            self._expire(conn, now)
            return self._totals(conn, window, now)

        result: tuple[float, float] = self._run(work)
        return result

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        def work(conn: sqlite3.Connection) -> float:
            spent, held = self._totals(conn, window, now)
            floor = -1e300 if math.isinf(window) else now - window
            entries = conn.execute(
                "SELECT at, amount FROM budget_spend WHERE budget = ? AND expires IS NULL "
                "AND at > ? ORDER BY at",
                (self._name, floor),
            ).fetchall()
            return _frees_at(entries, spent, held, amount, limit, window, now)

        result: float = self._run(work)
        return result


# Redis: a sorted set of spends (member "token:amount", score its time) with their sum,
# and a hash of reservations (token -> "amount:lease end"). Each script is atomic.
_REDIS_PRELUDE = """
local spends, total, held = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local function expire()
  local all = redis.call('HGETALL', held)
  for i = 1, #all, 2 do
    local amount, ends = string.match(all[i + 1], '([^:]+):([^:]+)')
    if tonumber(ends) <= now then
      redis.call('HDEL', held, all[i])
      redis.call('ZADD', spends, now, all[i] .. ':' .. amount)
      redis.call('INCRBYFLOAT', total, amount)
    end
  end
end
local function trim(window)
  if window == 'inf' then return end
  local floor = now - tonumber(window)
  local old = redis.call('ZRANGEBYSCORE', spends, '-inf', floor)
  for _, member in ipairs(old) do
    local amount = string.match(member, ':([^:]+)$')
    redis.call('INCRBYFLOAT', total, -tonumber(amount))
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', spends, '-inf', floor) end
end
local function held_sum()
  local sum = 0
  for _, value in ipairs(redis.call('HVALS', held)) do
    sum = sum + tonumber(string.match(value, '^([^:]+)'))
  end
  return sum
end
local function spent()
  return tonumber(redis.call('GET', total) or '0')
end
"""
_REDIS_RESERVE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, window, limit, amount, token, lease end
expire()
trim(ARGV[2])
local amount = tonumber(ARGV[4])
if spent() + held_sum() + amount > tonumber(ARGV[3]) * (1 + 1e-9) + 1e-15 then
  return 0
end
redis.call('HSET', held, ARGV[5], ARGV[4] .. ':' .. ARGV[6])
return 1
"""
)
_REDIS_SETTLE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, token, amount, '1' to bill without a reservation. A token whose lease ran
-- out was counted at its reserved amount already: nothing more is added for it.
local value = redis.call('HGET', held, ARGV[2])
local amount = tonumber(ARGV[3])
if value then
  redis.call('HDEL', held, ARGV[2])
elseif ARGV[4] ~= '1' then
  amount = 0
end
if amount > 0 then
  redis.call('ZADD', spends, now, ARGV[2] .. ':' .. ARGV[3])
  redis.call('INCRBYFLOAT', total, ARGV[3])
end
return 1
"""
)
_REDIS_STATE = (
    _REDIS_PRELUDE
    + """
-- ARGV: now, window
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
        self._keys = [base + "spends", base + "total", base + "held"]
        self._window = "inf" if math.isinf(window) else repr(window)
        self._reserve = client.register_script(_REDIS_RESERVE)
        self._settle = client.register_script(_REDIS_SETTLE)
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
        try:
            self._client.hdel(self._keys[2], token)
        except Exception as exc:
            raise StoreUnavailableError(f"can't update {self._where}: {exc}") from exc

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
        return _frees_at(entries, spent, held, amount, limit, window, now)


#: Books of ``memory://`` stores, per store and budget name: runners sharing the store share it.
_MEMORY_BOOKS: weakref.WeakKeyDictionary[Store, dict[str, MemoryBook]] = weakref.WeakKeyDictionary()


def book_for(store: Store | None, name: str, window: float, lease: float) -> SpendBook:
    """The spend book of budget ``name`` in ``store`` (this process only without one)."""
    if store is None:
        return MemoryBook()
    from rate_limited.stores.memory import MemoryStore
    from rate_limited.stores.sqlite import SqliteStore

    if isinstance(store, SqliteStore) and store.path != ":memory:":
        return SqliteBook(os.fspath(store.path), name, lease)
    try:
        from rate_limited.stores.redis import RedisStore
    except ImportError:  # pragma: no cover - the redis extra is not installed
        RedisStore = None  # type: ignore[assignment,misc]
    if RedisStore is not None and isinstance(store, RedisStore):
        return RedisBook(store._client, store._prefix, name, window, lease)
    if isinstance(store, MemoryStore | SqliteStore):
        books = _MEMORY_BOOKS.setdefault(store, {})
        return books.setdefault(name, MemoryBook())
    return MemoryBook()  # a Store of the user's own: this process only (documented)
