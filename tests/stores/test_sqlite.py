"""SqliteStore: refusing files it must not touch, the secret file, and tampered records."""

from __future__ import annotations

import os
import pickle
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from rate_limited.stores import (
    SqliteStore,
    StoreCorruptedError,
    StoredOutcome,
    StoreIntegrityError,
    StoreUnavailableError,
    StoreVersionError,
)
from rate_limited.stores._codec import SECRET_ENV
from rate_limited.stores.sqlite import APPLICATION_ID, SCHEMA_VERSION

SECRET = b"test-secret"


def outcome(key: str, result: object = "value") -> StoredOutcome:
    return StoredOutcome(key=key, status="succeeded", result=result, finished_at=1.0)


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file's bytes (None for a directory) under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


def make_store(path: Path, count: int = 3, secret: bytes | None = SECRET) -> None:
    with SqliteStore(path, secret=secret) as store:
        for i in range(count):
            store.put(outcome(f"k{i}", i))


class Evil:
    """Unpickling this creates a file: proof that a tampered record was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


@pytest.fixture(autouse=True)
def _no_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


def test_a_new_file_is_marked_with_application_id_and_schema_version(tmp_path: Path) -> None:
    make_store(tmp_path / "runs.db")
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT key, status, json_extract(meta, '$.attempts') FROM outcomes")
        assert sorted(rows) == [
            ("k0", "succeeded", 1),
            ("k1", "succeeded", 1),
            ("k2", "succeeded", 1),
        ]
    conn.close()


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param("a-file/runs.db", id="parent-is-a-file"),
        pytest.param("missing-dir/runs.db", id="parent-missing"),
        pytest.param("a-dir", id="path-is-a-directory"),
    ],
)
def test_an_unusable_path_raises_unavailable_naming_it(tmp_path: Path, relative: str) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(StoreUnavailableError, match=re.escape(str(tmp_path))):
        SqliteStore(tmp_path / relative, secret=SECRET)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_a_read_only_directory_raises_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(StoreUnavailableError, match="not writable"):
            SqliteStore(directory / "runs.db", secret=SECRET)
    finally:
        directory.chmod(0o700)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a database\n" * 200, id="text"),
        pytest.param(bytes(range(256)) * 64, id="binary"),
        pytest.param(b"SQLite format 3\x00" + b"\xff" * 4080, id="bad-header"),
    ],
)
def test_a_file_that_is_not_a_database_is_refused_and_left_unchanged(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(content)
    with pytest.raises(StoreCorruptedError, match=re.escape(str(path))) as caught:
        SqliteStore(path)
    assert "move it away" in str(caught.value)
    assert snapshot(tmp_path) == {"runs.db": content}  # no key file, no journal either


def test_a_damaged_database_raises_corrupted_and_is_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    make_store(path, count=400)
    data = bytearray(path.read_bytes())
    page = 4096
    data[page:] = b"\xa5" * (len(data) - page)  # keep the header page, wreck the rest
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with (
        pytest.raises(StoreCorruptedError, match=re.escape(str(path))),
        SqliteStore(path, secret=SECRET) as store,
    ):
        store.get_many([f"k{i}" for i in range(400)])
    assert snapshot(tmp_path) == before


def test_a_database_of_another_application_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('ada')")
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreCorruptedError, match="not a rate_limited store"):
        SqliteStore(path, secret=SECRET)
    assert snapshot(tmp_path) == before


def test_another_schema_version_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    make_store(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreVersionError, match="version 99"):
        SqliteStore(path, secret=SECRET)
    with pytest.raises(StoreVersionError):
        SqliteStore(path)  # without a secret too: the version is checked first
    assert snapshot(tmp_path) == before


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.touch()
    make_store(path)
    with SqliteStore(path, secret=SECRET) as store:
        assert store.count() == 3


def test_the_secret_file_is_created_private_beside_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    make_store(path, secret=None)
    key_file = tmp_path / "runs.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64
    with SqliteStore(path) as store:
        assert store.get("k1") == outcome("k1", 1)
    with SqliteStore(path, secret=key_file.read_text().strip()) as store:
        assert store.get("k1") == outcome("k1", 1)  # the file's text is the secret


def test_a_database_with_records_but_no_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    make_store(path, secret=None)
    secret = (tmp_path / "runs.db.key").read_text().strip()
    (tmp_path / "runs.db.key").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(StoreIntegrityError, match=r"runs\.db\.key"):
        SqliteStore(path)
    assert snapshot(tmp_path) == before
    with SqliteStore(path, secret=secret) as store:
        assert store.count() == 3


def test_the_environment_variable_gives_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    path = tmp_path / "runs.db"
    make_store(path, secret=None)
    assert not (tmp_path / "runs.db.key").exists()
    with SqliteStore(path, secret="from-the-environment") as store:
        assert store.count() == 3


def tamper(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def test_a_replaced_pickle_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    marker = tmp_path / "pwned"
    make_store(path)
    evil = b"p" + pickle.dumps(Evil(marker))
    tamper(path, "UPDATE outcomes SET result = ? WHERE key = 'k1'", evil)
    with SqliteStore(path, secret=SECRET) as store:
        assert store.get("k0") == outcome("k0", 0)
        with pytest.raises(StoreIntegrityError, match="'k1'"):
            store.get_many(["k0", "k1"])
        with pytest.raises(StoreIntegrityError):
            list(store.iter_records())
        store.delete(["k1"])
        assert store.count() == 2
    assert not marker.exists()


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(
            "UPDATE outcomes SET meta = replace(meta, '\"attempts\":1', '\"attempts\":9')",
            id="meta",
        ),
        pytest.param("UPDATE outcomes SET mac = zeroblob(32)", id="mac"),
        pytest.param(
            "UPDATE outcomes SET result = (SELECT result FROM outcomes WHERE key = 'k2')",
            id="result-of-another-key",
        ),
        pytest.param("UPDATE outcomes SET meta = 'not json'", id="meta-not-json"),
    ],
)
def test_tampered_records_raise_integrity_errors(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "runs.db"
    make_store(path)
    tamper(path, sql)
    with SqliteStore(path, secret=SECRET) as store, pytest.raises(StoreIntegrityError):
        store.get_many(["k0", "k1"])


def test_records_written_with_another_secret_do_not_verify(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    make_store(path, secret=b"one")
    with SqliteStore(path, secret=b"two") as store:
        with pytest.raises(StoreIntegrityError, match="another secret"):
            store.get("k0")
        assert store.count() == 3  # counting reads no pickle


def test_in_memory_database(tmp_path: Path) -> None:
    with SqliteStore(":memory:") as store:
        store.put(outcome("k"))
        store.flush()
        assert store.get("k") == outcome("k")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_a_path_nobody_can_create_raises_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match=r"/proc/rate_limited_test\.db"):
        SqliteStore("/proc/rate_limited_test.db", secret=SECRET)


def wreck_a_middle_page(path: Path) -> None:
    """Overwrite one page in the middle of the file: the header and the schema still read
    well, so only a check of the whole file finds it."""
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


def test_a_damaged_middle_page_is_found_when_the_store_is_opened(tmp_path: Path) -> None:
    """It used to be accepted by ``Runner(...)`` and fail only half-way through ``run()``."""
    from rate_limited import Runner

    path = tmp_path / "runs.db"
    make_store(path, count=2000)
    wreck_a_middle_page(path)
    before = snapshot(tmp_path)
    with pytest.raises(StoreCorruptedError, match="damaged") as caught:
        SqliteStore(path, secret=SECRET)
    assert str(path) in str(caught.value)
    with pytest.raises(StoreCorruptedError, match="damaged"):
        Runner(lambda x: x, [], store=str(path))
    assert snapshot(tmp_path) == before


def test_the_check_at_open_is_bounded_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A very large store is opened unchecked rather than after minutes of checking."""
    from rate_limited.stores import sqlite

    path = tmp_path / "runs.db"
    make_store(path, count=2000)
    wreck_a_middle_page(path)
    monkeypatch.setattr(sqlite, "QUICK_CHECK_SECONDS", 0.0)
    with SqliteStore(path, secret=SECRET) as store:
        assert store.get("k0") == outcome("k0", 0)
