"""The indexes that live with the stores: the same contract for memory, SQLite (numpy and
sqlite-vec searches) and Redis; entries survive a new index object (a restarted kernel)
and are refused when their signature does not verify."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rate_limited.semantic._backends import index_for
from rate_limited.semantic._index import MemoryIndex, SemanticIndex
from rate_limited.semantic._sqlite import SqliteIndex
from rate_limited.stores import RedisStore
from tests.stores.conftest import SECRET, Backend


def unit(*values: float) -> np.ndarray[Any, Any]:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def signer(secret: bytes) -> Callable[..., bytes]:
    def sign(*parts: bytes) -> bytes:
        return hmac.digest(secret, b"\0".join(parts), hashlib.sha256)

    return sign


def fill(index: SemanticIndex) -> None:
    index.add("p", [("k1", "one"), ("k2", "two")], np.stack([unit(1, 0, 0), unit(0, 1, 0)]))
    index.add("q", [("k3", "three")], np.stack([unit(1, 0, 0)]))


def check_contract(index: SemanticIndex) -> None:
    fill(index)
    found = index.search("p", np.stack([unit(1, 0.1, 0), unit(0, 0, 1)]), 2)
    assert [c.key for c in found[0]] == ["k1", "k2"]
    assert found[0][0].text == "one"
    assert found[0][0].similarity == pytest.approx(float(unit(1, 0.1, 0) @ unit(1, 0, 0)))
    assert all(c.similarity == pytest.approx(0.0, abs=1e-6) for c in found[1])
    assert [c.key for c in index.search("q", np.stack([unit(0, 1, 0)]), 4)[0]] == ["k3"]
    assert index.search("nowhere", np.stack([unit(1, 0, 0)]), 4) == [[]]
    index.add("p", [("k1", "one")], np.stack([unit(1, 0, 0)]))  # a key already there
    assert len(index.search("p", np.stack([unit(1, 0, 0)]), 10)[0]) == 2


def test_the_index_of_each_store(backend: Backend) -> None:
    store = backend.open()
    index = index_for(store)
    assert index is index_for(store)  # one per store object
    check_contract(index)


def test_entries_outlive_the_index_object(durable: Backend) -> None:
    fill(index_for(durable.open()))
    reopened = index_for(durable.open())  # another store object: as after a restart
    found = reopened.search("p", np.stack([unit(0, 1, 0)]), 1)
    assert [c.key for c in found[0]] == ["k2"]


def test_sqlite_vec_search_agrees_with_numpy(tmp_path: Path) -> None:
    sqlean = pytest.importorskip("sqlean", reason="sqlean-py gives a sqlite3 that loads extensions")
    pytest.importorskip("sqlite_vec")
    sign = signer(b"secret")
    vec = SqliteIndex(str(tmp_path / "a.db"), signer=sign, connect=sqlean.connect)
    assert vec.backend == "sqlite-vec"
    plain = SqliteIndex(
        str(tmp_path / "b.db"), signer=sign, connect=sqlean.connect, use_sqlite_vec=False
    )
    assert plain.backend == "numpy"
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = [(f"k{i}", f"text {i}") for i in range(50)]
    for index in (vec, plain):
        index.add("p", entries[:30], vectors[:30])
        index.add("other", entries[30:], vectors[30:])
    queries = vectors[:5] + 0.1 * rng.normal(size=(5, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    one, two = vec.search("p", queries, 3), plain.search("p", queries, 3)
    assert [[c.key for c in found] for found in one] == [[c.key for c in f] for f in two]
    assert [c.similarity for f in one for c in f] == pytest.approx(
        [c.similarity for f in two for c in f], abs=1e-5
    )
    assert all(c.key in {k for k, _ in entries[:30]} for found in one for c in found)
    vec.close()
    plain.close()


def test_sqlite_vec_indexes_rows_written_without_it(tmp_path: Path) -> None:
    sqlean = pytest.importorskip("sqlean", reason="sqlean-py gives a sqlite3 that loads extensions")
    pytest.importorskip("sqlite_vec")
    path, sign = str(tmp_path / "runs.db"), signer(b"secret")
    without = SqliteIndex(path, signer=sign, connect=sqlean.connect, use_sqlite_vec=False)
    fill(without)
    without.close()
    vec = SqliteIndex(path, signer=sign, connect=sqlean.connect)
    assert [c.key for c in vec.search("p", np.stack([unit(0, 1, 0)]), 1)[0]] == ["k2"]
    vec.close()


def test_a_tampered_sqlite_entry_is_skipped(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    index = SqliteIndex(path, signer=signer(b"secret"), use_sqlite_vec=False)
    fill(index)
    index.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE rate_limited_semantic SET key = 'k9' WHERE key = 'k1'")
    conn.close()
    reopened = SqliteIndex(path, signer=signer(b"secret"), use_sqlite_vec=False)
    found = reopened.search("p", np.stack([unit(1, 0, 0)]), 4)
    assert [c.key for c in found[0]] == ["k2"]
    problems = reopened.take_problems()
    assert len(problems) == 1 and "bad signature" in problems[0] and "k9" in problems[0]
    reopened.close()


def test_a_tampered_redis_entry_is_skipped(redis_url: str) -> None:
    namespace = uuid.uuid4().hex
    with RedisStore(redis_url, namespace=namespace, secret=SECRET) as store:
        fill(index_for(store))
        client = store._client
        name = f"rate_limited:semantic:{namespace}:p"
        client.lset(name, 0, client.lindex(name, 0).replace(b'"k1"', b'"k9"'))
    with RedisStore(redis_url, namespace=namespace, secret=SECRET) as reopened:
        index = index_for(reopened)
        found = index.search("p", np.stack([unit(1, 0, 0)]), 4)
        assert [c.key for c in found[0]] == ["k2"]
        assert "bad signature" in index.take_problems()[0]


def test_a_memory_index_grows() -> None:
    index = MemoryIndex()
    vectors = np.eye(40, dtype=np.float32)
    index.add("p", [(f"k{i}", str(i)) for i in range(40)], vectors)
    assert len(index) == 40
    assert [c.key for c in index.search("p", vectors[[7]], 1)[0]] == ["k7"]
    with pytest.raises(ValueError, match="dimensions"):
        index.search("p", np.ones((1, 3), dtype=np.float32), 1)
