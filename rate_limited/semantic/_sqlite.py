"""The semantic index of a SQLite store: two tables in the store's own file.

``rate_limited_semantic`` holds the entries (partition, call key, redacted prompt, vector
as little-endian float32, signature). When this Python's ``sqlite3`` can load extensions
and sqlite-vec is installed, a ``vec0`` table per vector size (partitioned by the
partition column, cosine distance) does the nearest-neighbour search inside SQLite, and
the candidates' similarities are recomputed from their signed vectors; otherwise (CPython
built without loadable extensions, as pyenv builds by default, or no sqlite-vec) each
partition is read once into numpy and caught up with new rows at every search. Both
answer the same, exact, nearest neighbours.

The index has its own connection to the file (WAL mode lets it read while the store
writes), from the same sqlite3 library: two copies of SQLite in one process must never
open one file, since their POSIX locks would not see each other.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import StoreCorruptedError, StoreUnavailableError
from rate_limited.semantic._embed import numpy_module
from rate_limited.semantic._index import (
    Candidate,
    Partition,
    SemanticIndex,
    Signer,
    sign_entry,
    similarity,
)

if TYPE_CHECKING:
    import numpy

__all__ = ["SqliteIndex"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_limited_semantic (
    id INTEGER PRIMARY KEY,
    partition TEXT NOT NULL,
    key TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    mac BLOB NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (partition, key)
)"""
_BUSY_TIMEOUT = 5.0


def _load_sqlite_vec(conn: Any) -> bool:
    """Load sqlite-vec into ``conn`` if this sqlite3 and the installed packages allow it."""
    if not hasattr(conn, "enable_load_extension"):
        return False  # CPython built without --enable-loadable-sqlite-extensions
    try:
        import sqlite_vec
    except ImportError:
        return False
    try:
        conn.enable_load_extension(True)
        try:
            sqlite_vec.load(conn)
        finally:
            conn.enable_load_extension(False)
    except Exception:
        return False
    return True


class SqliteIndex(SemanticIndex):
    """Entries in the SQLite file ``path`` (a store's), searched with sqlite-vec or numpy.

    ``connect`` opens the connection (``sqlite3.connect`` by default); ``use_sqlite_vec``
    False forces the numpy search.
    """

    def __init__(
        self,
        path: str,
        *,
        signer: Signer,
        connect: Callable[..., Any] = sqlite3.connect,
        use_sqlite_vec: bool = True,
    ) -> None:
        super().__init__()
        self.path = path
        self._sign = signer
        self._lock = threading.Lock()
        try:
            self._conn = connect(
                path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"can't open {path} for the semantic index: {exc}") from exc
        try:
            self._conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreCorruptedError(f"can't create the semantic index in {path}: {exc}") from exc
        self._vec = use_sqlite_vec and _load_sqlite_vec(self._conn)
        self.backend = "sqlite-vec" if self._vec else "numpy"
        self._vec_tables: set[int] = set()
        # numpy search: each partition's rows read so far, and the last row id read.
        self._partitions: dict[str, tuple[Partition, int]] = {}

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def add(
        self,
        partition: str,
        entries: Sequence[tuple[str, str]],
        vectors: numpy.ndarray[Any, Any],
    ) -> None:
        np = numpy_module()
        now = time.time()
        with self._lock, self._transaction() as conn:
            for (key, text), vector in zip(entries, vectors, strict=True):
                blob = np.asarray(vector, dtype="<f4").tobytes()
                mac = sign_entry(self._sign, partition, key, text, blob)
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO rate_limited_semantic "
                    "(partition, key, text, vector, mac, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (partition, key, text, blob, mac, now),
                )
                if self._vec and cursor.rowcount == 1:
                    table = self._vec_table(len(vector))
                    conn.execute(
                        f"INSERT INTO {table} (rowid, partition, embedding) VALUES (?, ?, ?)",
                        (cursor.lastrowid, partition, blob),
                    )

    def search(
        self, partition: str, vectors: numpy.ndarray[Any, Any], k: int
    ) -> list[list[Candidate]]:
        with self._lock:
            if self._vec:
                return self._search_vec(partition, vectors, k)
            return self._catch_up(partition).search(vectors, k)

    # -- numpy -----------------------------------------------------------------------------
    def _catch_up(self, partition: str) -> Partition:
        """The partition's rows, with those written since the last search (any process)."""
        held, last = self._partitions.get(partition, (None, 0))
        target = held if held is not None else Partition()
        rows = self._conn.execute(
            "SELECT id, key, text, vector, mac FROM rate_limited_semantic "
            "WHERE partition = ? AND id > ? ORDER BY id",
            (partition, last),
        ).fetchall()
        for row in rows:
            vector = self._verified(partition, *row[1:])
            if vector is not None:
                target.add(row[1], row[2], vector)
            last = max(last, row[0])
        self._partitions[partition] = (target, last)
        return target

    def _verified(
        self, partition: str, key: str, text: str, blob: bytes, mac: bytes
    ) -> numpy.ndarray[Any, Any] | None:
        if sign_entry(self._sign, partition, key, text, blob) != mac:
            self.problems.append(
                f"semantic index entry for call {key} in {self.path} has a bad signature "
                "(written with another secret, or changed outside rate_limited); skipped"
            )
            return None
        vector: numpy.ndarray[Any, Any] = numpy_module().frombuffer(blob, dtype="<f4")
        return vector

    # -- sqlite-vec ---------------------------------------------------------------------------
    def _vec_table(self, dimensions: int) -> str:
        table = f"rate_limited_semantic_vec{int(dimensions)}"
        if dimensions not in self._vec_tables:
            self._conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
                f"partition text partition key, embedding float[{int(dimensions)}] "
                "distance_metric=cosine)"
            )
            self._vec_tables.add(dimensions)
        return table

    def _search_vec(
        self, partition: str, vectors: numpy.ndarray[Any, Any], k: int
    ) -> list[list[Candidate]]:
        np = numpy_module()
        dimensions = vectors.shape[1]
        with self._transaction() as conn:
            table = self._vec_table(dimensions)
            # Rows added by a process that could not load sqlite-vec are indexed now.
            conn.execute(
                f"INSERT INTO {table} (rowid, partition, embedding) "
                "SELECT e.id, e.partition, e.vector FROM rate_limited_semantic AS e "
                f"WHERE e.partition = ? AND length(e.vector) = ? AND NOT EXISTS "
                f"(SELECT 1 FROM {table} AS v WHERE v.rowid = e.id)",
                (partition, 4 * dimensions),
            )
        found: list[list[Candidate]] = []
        for query in vectors:
            blob = np.asarray(query, dtype="<f4").tobytes()
            ids = [
                row[0]
                for row in self._conn.execute(
                    f"SELECT rowid FROM {table} WHERE embedding MATCH ? AND k = ? "
                    "AND partition = ? ORDER BY distance",
                    (blob, k, partition),
                )
            ]
            candidates = []
            if ids:
                marks = ",".join("?" * len(ids))
                rows = self._conn.execute(
                    "SELECT key, text, vector, mac FROM rate_limited_semantic "
                    f"WHERE id IN ({marks}) AND partition = ?",
                    (*ids, partition),
                ).fetchall()
                for key, text, stored, mac in rows:
                    vector = self._verified(partition, key, text, stored, mac)
                    if vector is not None:  # the similarity of the signed vector, not vec0's
                        candidates.append(Candidate(key, text, similarity(vector @ query)))
            candidates.sort(key=lambda c: -c.similarity)
            found.append(candidates)
        return found

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __len__(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM rate_limited_semantic").fetchone()
            return int(row[0])
