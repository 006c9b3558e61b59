"""SqliteStore: outcomes in one SQLite file, so a run resumes after a crash or kernel restart.

One table, ``outcomes``; the file is marked with SQLite's ``application_id`` and the schema
version sits in ``PRAGMA user_version``. A file of another schema version, one that is not
a rate_limited store, or not a database at all is refused with a specific error and left
untouched: nothing is migrated or overwritten. An existing store is checked with
``PRAGMA quick_check`` when opened, so that a damaged page is reported by ``Runner(...)``
rather than half-way through a run; the check stops after ``QUICK_CHECK_SECONDS`` (a very
large file is then opened unchecked). WAL journal with ``synchronous=NORMAL``: a committed
flush survives the process being killed (even with SIGKILL); a power loss can lose the last
flushes. Each row keeps status, timestamps, function and a JSON ``meta`` column readable
with plain SQL; the result is a signed pickle (see ``rate_limited.stores``).

Threads: one connection, opened in ``__init__`` (so a bad path fails at ``open_store``) with
``check_same_thread=False``, and used under the store's lock, so the engine thread and the
caller's thread can both use the store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rate_limited._redact import get_logger
from rate_limited.stores._codec import (
    SECRET_ENV,
    Codec,
    create_secret_file,
    explicit_secret,
    read_secret_file,
)
from rate_limited.stores.base import (
    ClaimState,
    Store,
    StoreCorruptedError,
    StoredOutcome,
    StoreIntegrityError,
    StoreUnavailableError,
    StoreVersionError,
)

__all__ = ["QUICK_CHECK_SECONDS", "SCHEMA_VERSION", "SqliteStore"]

logger = get_logger(__name__)

#: Version of the table layout, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: SQLite ``application_id`` of a rate_limited store ("RLST").
APPLICATION_ID = 0x524C5354
_BUSY_TIMEOUT = 2.0  # seconds to wait for another process's write lock
#: Longest time the integrity check at open may take.
QUICK_CHECK_SECONDS = 2.0
_CHUNK = 500  # keys per SELECT ... IN (...), under every SQLite's variable limit
_PAGE = 500  # records per page of iter_records
_COLUMNS = "key, status, finished_at, expires_at, function, meta, result, mac"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    key TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL,
    finished_at REAL NOT NULL,
    expires_at REAL,
    function TEXT NOT NULL,
    meta TEXT NOT NULL,
    result BLOB NOT NULL,
    mac BLOB NOT NULL
)"""
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
)"""
_LIVE = "(expires_at IS NULL OR expires_at > ?) AND finished_at > ?"
_Row = tuple[str, str, float, float | None, str, str, bytes, bytes]
_OURS, _STORED = ClaimState("ours"), ClaimState("stored")


class SqliteStore(Store):
    """Outcomes in the SQLite file ``path`` (``":memory:"`` for a private in-memory one).

    The secret that signs records is ``secret``, else ``$RATE_LIMITED_STORE_SECRET``, else
    the one kept in ``<path>.key`` (created with mode 0600 beside a new database).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: float | None = None,
        secret: bytes | str | None = None,
        flush_size: int = 256,
        flush_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
        claim_ttl: float = 60.0,
    ) -> None:
        super().__init__(
            ttl=ttl,
            flush_size=flush_size,
            flush_interval=flush_interval,
            clock=clock,
            claim_ttl=claim_ttl,
        )
        self._has_claims = False
        raw = os.fspath(path)
        #: The database file (``":memory:"`` for an in-memory database).
        self.path = raw
        self._where = "the in-memory SQLite store" if raw == ":memory:" else f"SQLite store {raw}"
        self._conn, has_records = _connect(raw, self._where)
        try:
            self._codec = Codec(_secret_for(raw, secret, has_records, self._where))
        except BaseException:
            self._conn.close()
            raise
        # A store dropped unclosed (a Runner never closed: a notebook cell run again)
        # releases its connection when collected, as Python did without a word before 3.13
        # (which warns: ResourceWarning). Its runs flushed their results when they ended.
        weakref.finalize(self, self._conn.close)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn sqlite3 errors into store errors that say what to do."""
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.DatabaseError as exc:
            raise _store_error(exc, self._where) from exc

    def _encode(self, record: StoredOutcome) -> _Row:
        sealed = self._codec.seal(record)
        return (
            sealed.key,
            sealed.status,
            sealed.finished_at,
            self._expiry(record),
            sealed.function,
            sealed.meta,
            sealed.result,
            sealed.mac,
        )

    def _write(self, items: list[Any]) -> None:
        sql = f"INSERT OR REPLACE INTO outcomes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        self._transaction(sql, items)

    def _transaction(self, sql: str, rows: list[Any]) -> None:
        conn = self._conn
        with self._translate():
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    conn.executemany(sql, rows)
                else:
                    conn.execute(sql)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _floor(self, now: float) -> float:
        return -float("inf") if self.ttl is None else now - self.ttl

    def _read(self, keys: list[str], now: float) -> Iterable[StoredOutcome]:
        conn, codec, where, floor = self._conn, self._codec, self._where, self._floor(now)
        found: list[StoredOutcome] = []
        with self._translate():
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, meta, result, mac FROM outcomes WHERE key IN ({marks}) "
                    f"AND {_LIVE}",
                    (*chunk, now, floor),
                ).fetchall()
                found.extend(codec.open(k, meta, res, mac, where) for k, meta, res, mac in rows)
        return found

    # Claims live in their own table, made by the first claim: a file written by a version
    # without claims is still read by it (it ignores the table), so the schema version
    # stays. A holder is an opaque string to the table (``rate_limited._holder`` reads it),
    # so holders written by older versions are compared and expire as ever. Expiry is on
    # this machine's clock, as is every process sharing the file.
    shares_work = True

    def _claim(
        self,
        keys: list[str],
        holder: str,
        over_records: bool,
        take_over: frozenset[str],
        now: float,
    ) -> dict[str, ClaimState]:
        conn, floor = self._conn, self._floor(now)
        found: dict[str, ClaimState] = {}
        with self._translate():
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not self._has_claims:
                    conn.execute(_CLAIMS)
                for key in keys:
                    row = conn.execute(
                        "SELECT holder, expires_at FROM claims WHERE key = ?", (key,)
                    ).fetchone()
                    if (
                        row is not None
                        and row[0] != holder
                        and row[1] > now
                        and row[0] not in take_over
                    ):
                        found[key] = ClaimState("taken", row[0], row[1])
                        continue
                    if (
                        not over_records
                        and conn.execute(
                            f"SELECT 1 FROM outcomes WHERE key = ? AND {_LIVE}", (key, now, floor)
                        ).fetchone()
                    ):
                        found[key] = _STORED
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO claims (key, holder, expires_at) VALUES (?, ?, ?)",
                        (key, holder, now + self.claim_ttl),
                    )
                    ended = row is not None and row[0] in take_over and row[1] > now
                    found[key] = ClaimState("ours", row[0], row[1]) if ended else _OURS
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._has_claims = True
        return found

    def _unclaim(self, keys: list[str], holder: str) -> None:
        if self._has_claims:
            rows = [(key, holder) for key in keys]
            self._transaction("DELETE FROM claims WHERE key = ? AND holder = ?", rows)

    def _delete(self, keys: list[str]) -> None:
        self._transaction("DELETE FROM outcomes WHERE key = ?", [(key,) for key in keys])

    def _clear(self) -> None:
        self._transaction("DELETE FROM outcomes", [])

    def _count(self, now: float) -> int:
        with self._translate():
            row = self._conn.execute(
                f"SELECT count(*) FROM outcomes WHERE {_LIVE}", (now, self._floor(now))
            ).fetchone()
        return int(row[0])

    def _iter(self, now: float) -> Iterator[StoredOutcome]:
        last: str | None = None
        while True:
            with self._lock, self._translate():
                self._check_open()
                after = "" if last is None else "key > ? AND "
                rows = self._conn.execute(
                    f"SELECT key, meta, result, mac FROM outcomes WHERE {after}{_LIVE} "
                    f"ORDER BY key LIMIT {_PAGE}",
                    (*(() if last is None else (last,)), now, self._floor(now)),
                ).fetchall()
                page = [self._codec.open(k, m, r, mac, self._where) for k, m, r, mac in rows]
            yield from page
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def _close(self) -> None:
        self._conn.close()


def _store_error(exc: sqlite3.DatabaseError, where: str) -> Exception:
    message = str(exc)
    damaged = ("not a database", "malformed", "no such table", "no such column", "corrupt")
    if any(word in message for word in damaged) or not isinstance(exc, sqlite3.OperationalError):
        return StoreCorruptedError(
            f"{where} is not a rate_limited SQLite store or is damaged ({message}). It was "
            "left as it is: move it away (or restore a backup) and start a new store"
        )
    return StoreUnavailableError(f"{where} can't be used right now: {message}")


def _connect(path: str, where: str) -> tuple[sqlite3.Connection, bool]:
    """Open (or create) the database, check it is ours and of our version, set it up.

    Returns the connection and whether it already holds records. Nothing is written to a
    file that turns out not to be a store of this version.
    """
    if path != ":memory:":
        _check_path(Path(path))
    try:
        conn = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"can't open {where}: {exc}") from exc
    try:
        return conn, _prepare(conn, where)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _store_error(exc, where) from exc
    except BaseException:
        conn.close()
        raise


def _check_path(file: Path) -> None:
    if file.is_dir():
        raise StoreUnavailableError(
            f"can't use {file} as a SQLite store: it is a directory; give a file path such "
            f"as {file / 'runs.db'}"
        )
    if not file.parent.is_dir():
        raise StoreUnavailableError(
            f"can't create SQLite store {file}: {file.parent} is not an existing directory; "
            "create it first or choose another path"
        )
    if file.exists():
        if not os.access(file, os.R_OK | os.W_OK):
            raise StoreUnavailableError(
                f"can't open SQLite store {file}: this user can't read and write it"
            )
    elif not os.access(file.parent, os.W_OK | os.X_OK):
        raise StoreUnavailableError(
            f"can't create SQLite store {file}: directory {file.parent} is not writable"
        )


def _prepare(conn: sqlite3.Connection, where: str) -> bool:
    def header() -> tuple[int, int, int]:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return int(application_id), int(version), int(tables)

    application_id, version, tables = header()  # only reads: a foreign file stays untouched
    if application_id == 0 and version == 0 and tables == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            application_id, version, tables = header()  # another process may have been first
            if application_id == 0 and version == 0 and tables == 0:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute(_SCHEMA)
                application_id, version = APPLICATION_ID, SCHEMA_VERSION
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if application_id != APPLICATION_ID:
        raise StoreCorruptedError(
            f"{where} is a SQLite database but not a rate_limited store; it was left "
            "untouched: choose another path for the store"
        )
    if version != SCHEMA_VERSION:
        raise StoreVersionError(
            f"{where} has store schema version {version}, and this version of rate_limited "
            f"reads version {SCHEMA_VERSION}; it was left untouched. Open it with the "
            "rate_limited version that wrote it, or choose another path for the store"
        )
    _quick_check(conn, where)  # reads only: a damaged file stays untouched
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM outcomes)").fetchone()[0])


def _quick_check(conn: sqlite3.Connection, where: str) -> None:
    """``PRAGMA quick_check``, stopped after ``QUICK_CHECK_SECONDS`` (then: unchecked)."""
    deadline = time.monotonic() + QUICK_CHECK_SECONDS
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        logger.debug("%s: integrity check skipped after %s s", where, QUICK_CHECK_SECONDS)
        return
    finally:
        conn.set_progress_handler(None, 0)
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    if problems:
        raise StoreCorruptedError(
            f"{where} is damaged (PRAGMA quick_check: {'; '.join(problems[:3])}). It was "
            "left as it is: move it away (or restore a backup) and start a new store"
        )


def _secret_for(path: str, secret: bytes | str | None, has_records: bool, where: str) -> bytes:
    explicit = explicit_secret(secret)
    if explicit is not None:
        return explicit
    if path == ":memory:":
        return os.urandom(32)
    key_file = Path(path + ".key")
    found = read_secret_file(key_file)
    if found is not None:
        return found
    if has_records:
        raise StoreIntegrityError(
            f"{where} holds records but its secret file {key_file} is missing, so they can't "
            f"be verified. Restore {key_file}, or give the secret they were written with "
            f"(secret= or ${SECRET_ENV}), or move the database away and start a new store"
        )
    return create_secret_file(key_file)
