"""Spend books: where a ``Budget`` keeps what was spent and what running calls hold.

One interface, three places:

* ``MemoryBook``: this process (a Runner without a store; ``memory://`` stores share one
  per store and budget name);
* ``SqliteBook``: tables beside ``outcomes`` in the SQLite store's file, each operation
  one ``BEGIN IMMEDIATE`` transaction, so processes on the same file are serialised;
* ``RedisBook``: keys under the Redis store's prefix, each operation one Lua script.

Each keeps running sums, so an operation costs O(1) (a rolling window: plus the spends
that leave it; see ``benchmarks/RESULTS.md``, "Budget").

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
    """A spend book in this process (thread-safe), for one window: running sums, so that
    each operation costs O(1) (amortised: spends leave a rolling window from the front)."""

    def __init__(self, window: float = math.inf) -> None:
        self._window = window
        self._lock = threading.Lock()
        #: Spends inside the window, (time, amount) in time order; a total keeps none.
        self._spent: deque[tuple[float, float]] = deque()
        self._spent_sum = 0.0
        self._held: dict[str, float] = {}
        self._held_sum = 0.0
        self._count = itertools.count()

    def _trim(self, window: float, now: float) -> float:
        """Spent within ``window`` of ``now``, dropping what left the book's own window."""
        if math.isinf(self._window):
            return self._spent_sum
        spent = self._spent
        floor = now - self._window
        while spent and spent[0][0] <= floor:
            self._spent_sum -= spent.popleft()[1]
        if not spent:
            self._spent_sum = 0.0  # no drift left behind
        if window == self._window:
            return self._spent_sum
        return math.fsum(a for t, a in spent if t > now - window)

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        with self._lock:
            if not _fits(self._trim(window, now), self._held_sum, amount, limit):
                return None
            token = str(next(self._count))
            self._held[token] = amount
            self._held_sum += amount
            return token

    def _unhold(self, token: str) -> None:
        amount = self._held.pop(token, None)
        if amount is not None:
            self._held_sum = self._held_sum - amount if self._held else 0.0

    def settle(self, token: str, amount: float, now: float) -> None:
        with self._lock:
            self._unhold(token)
            self._add(amount, now)

    def _add(self, amount: float, now: float) -> None:
        if amount <= 0:
            return
        self._spent_sum += amount
        if math.isinf(self._window):
            return
        spent = self._spent
        if spent and spent[-1][0] > now:  # times of two engines on one book
            times = [e[0] for e in spent]
            spent.insert(bisect.bisect_right(times, now), (now, amount))
        else:
            spent.append((now, amount))

    def release(self, token: str) -> None:
        with self._lock:
            self._unhold(token)

    def bill(self, amount: float, now: float) -> None:
        with self._lock:
            self._add(amount, now)

    def state(self, window: float, now: float) -> tuple[float, float]:
        with self._lock:
            return self._trim(window, now), self._held_sum

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        with self._lock:
            spent = self._trim(window, now)
            entries = [e for e in self._spent if e[0] > now - window]
            return _frees_at(entries, spent, self._held_sum, amount, limit, window, now)

    def __repr__(self) -> str:
        return (
            f"<MemoryBook spent={self._spent_sum:.6g} held={self._held_sum:.6g} "
            f"({len(self._held)} reservations)>"
        )


_SQLITE_SCHEMA = (
    # Spends, (time, amount) per budget name; a lease that ran out is one too.
    "CREATE TABLE IF NOT EXISTS budget_spend ("
    " budget TEXT NOT NULL, at REAL NOT NULL, amount REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS budget_spend_at ON budget_spend (budget, at)",
    # Every spend ever, per budget name: a total budget reads one row.
    "CREATE TABLE IF NOT EXISTS budget_total ("
    " budget TEXT PRIMARY KEY NOT NULL, spent REAL NOT NULL)",
    # Reservations of calls in flight (in every process), each a lease.
    "CREATE TABLE IF NOT EXISTS budget_held ("
    " budget TEXT NOT NULL, token TEXT PRIMARY KEY NOT NULL, at REAL NOT NULL,"
    " amount REAL NOT NULL, expires REAL NOT NULL)",
)


class SqliteBook:
    """A spend book in a SQLite file (the store's), shared by every process using it.

    Three tables beside the store's ``outcomes``: ``budget_spend`` (the spends, by time),
    ``budget_total`` (their sum per budget) and ``budget_held`` (the leases of calls in
    flight). A total budget reads one row; a rolling one sums its window's spends (an
    index range). Its own connection, so it never waits on the store's write buffer.
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
            # As the store's own connection: a commit survives the process being killed,
            # and is not synced to disk one by one (WAL, set by the store).
            self._conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _SQLITE_SCHEMA:
                self._conn.execute(statement)
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

    def _spend(self, conn: sqlite3.Connection, at: float, amount: float) -> None:
        if amount <= 0:
            return
        conn.execute(
            "INSERT INTO budget_spend (budget, at, amount) VALUES (?, ?, ?)",
            (self._name, at, amount),
        )
        conn.execute(
            "INSERT INTO budget_total (budget, spent) VALUES (?, ?) "
            "ON CONFLICT (budget) DO UPDATE SET spent = spent + excluded.spent",
            (self._name, amount),
        )

    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        # A lease that ran out: its process died; its call may have been billed.
        expired = conn.execute(
            "SELECT token, at, amount FROM budget_held WHERE budget = ? AND expires <= ?",
            (self._name, now),
        ).fetchall()
        for token, at, amount in expired:
            conn.execute("DELETE FROM budget_held WHERE token = ?", (token,))
            self._spend(conn, at, amount)

    def _totals(self, conn: sqlite3.Connection, window: float, now: float) -> tuple[float, float]:
        if math.isinf(window):
            row = conn.execute(
                "SELECT spent FROM budget_total WHERE budget = ?", (self._name,)
            ).fetchone()
            spent = 0.0 if row is None else float(row[0])
        else:
            spent = float(
                conn.execute(
                    "SELECT COALESCE(SUM(amount), 0) FROM budget_spend WHERE budget = ? AND at > ?",
                    (self._name, now - window),
                ).fetchone()[0]
            )
        held = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM budget_held WHERE budget = ?", (self._name,)
        ).fetchone()[0]
        return spent, float(held)

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            self._expire(conn, now)
            spent, held = self._totals(conn, window, now)
            if not _fits(spent, held, amount, limit):
                return None
            token = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO budget_held (budget, token, at, amount, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (self._name, token, now, amount, now + self._lease),
            )
            return token

        token: str | None = self._run(work)
        return token

    def settle(self, token: str, amount: float, now: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            # A lease that ran out was counted at its reserved amount already.
            if conn.execute("DELETE FROM budget_held WHERE token = ?", (token,)).rowcount:
                self._spend(conn, now, amount)

        self._run(work)

    def release(self, token: str) -> None:
        self._run(lambda conn: conn.execute("DELETE FROM budget_held WHERE token = ?", (token,)))

    def bill(self, amount: float, now: float) -> None:
        if amount > 0:
            self._run(lambda conn: self._spend(conn, now, amount))

    def state(self, window: float, now: float) -> tuple[float, float]:
        def work(conn: sqlite3.Connection) -> tuple[float, float]:
            self._expire(conn, now)
            return self._totals(conn, window, now)

        result: tuple[float, float] = self._run(work)
        return result

    def frees_at(self, amount: float, limit: float, window: float, now: float) -> float:
        def work(conn: sqlite3.Connection) -> float:
            spent, held = self._totals(conn, window, now)
            entries = []
            if not math.isinf(window):
                entries = conn.execute(
                    "SELECT at, amount FROM budget_spend WHERE budget = ? AND at > ? ORDER BY at",
                    (self._name, now - window),
                ).fetchall()
            return _frees_at(entries, spent, held, amount, limit, window, now)

        result: float = self._run(work)
        return result


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
        return _frees_at(entries, spent, held, amount, limit, window, now)


#: Books of ``memory://`` stores, per store and budget name: runners sharing the store share it.
_MEMORY_BOOKS: weakref.WeakKeyDictionary[Store, dict[tuple[str, float], MemoryBook]] = (
    weakref.WeakKeyDictionary()
)


def book_for(store: Store | None, name: str, window: float, lease: float) -> SpendBook:
    """The spend book of budget ``name`` in ``store`` (this process only without one)."""
    if store is None:
        return MemoryBook(window)
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
        return books.setdefault((name, window), MemoryBook(window))
    return MemoryBook(window)  # a Store of the user's own: this process only (documented)
