"""``SqliteBook``: a budget's spend in the SQLite store's file (see ``_spend_books``)."""

from __future__ import annotations

import math
import sqlite3
import threading
import uuid
import weakref
from typing import Any

from rate_limited._spend_books import fits, frees_at
from rate_limited.exceptions import StoreUnavailableError

__all__ = ["SqliteBook"]

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
            if not fits(spent, held, amount, limit):
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
            return frees_at(entries, spent, held, amount, limit, window, now)

        result: float = self._run(work)
        return result
