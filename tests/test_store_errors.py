"""Bad stores fail at ``Runner(..., store=...)``, clearly, and lose nothing already stored.

Each failing case is tried against a store a first runner has written, and afterwards that
store must still give back every result without a call being made. A result the store
can't serialise is not an error of the run: the call succeeds in memory and one warning
says why it was not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rate_limited import Runner, Status
from rate_limited.exceptions import StoreError, StoreWarning
from rate_limited.stores import (
    StoreCorruptedError,
    StoreIntegrityError,
    StoreUnavailableError,
    StoreVersionError,
    UnknownStoreError,
)
from tests.stores.conftest import redis_url  # noqa: F401

N = 5
calls_made: list[int] = []


def square(i: int) -> int:
    calls_made.append(i)
    return i * i


@pytest.fixture(autouse=True)
def _reset_calls() -> Iterator[None]:
    calls_made.clear()
    yield
    calls_made.clear()


def run_squares(store: str, n: int = N) -> Any:
    with Runner(square, [], progress=False, store=store) as runner:
        for i in range(n):
            runner.schedule(i)
        return runner.run()


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """A SQLite store a first runner has filled with N results (and closed)."""
    db = tmp_path / "runs.db"
    first = run_squares(str(db))
    assert first.results == [i * i for i in range(N)]
    assert sorted(calls_made) == list(range(N))  # each once (threads: in any order)
    calls_made.clear()
    return db


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a directory, by name: what "left untouched" is checked against."""
    return {file.name: file.read_bytes() for file in sorted(directory.iterdir())}


def assert_all_stored(db: Path) -> None:
    """A fresh runner gets every result of the first runner back, making no call."""
    again = run_squares(str(db))
    assert again.results == [i * i for i in range(N)]
    assert all(o.from_store for o in again.outcomes)
    assert calls_made == []


def refused(store: str, error: type[StoreError]) -> StoreError:
    """Constructing a Runner on ``store`` raises ``error``; nothing runs."""
    with pytest.raises(error) as caught:
        Runner(square, [], progress=False, store=store)
    assert calls_made == []
    return caught.value


def set_pragma(db: Path, name: str, value: int) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(f"PRAGMA {name} = {value}")
        conn.commit()
    finally:
        conn.close()


# -- unknown scheme, unwritable path ------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgres://x", id="postgres"),
        pytest.param("sqlite3:///runs.db", id="typo-of-sqlite"),
        pytest.param("http://127.0.0.1:6379/0", id="http"),
    ],
)
def test_unknown_scheme_lists_the_supported_ones(url: str, written: Path) -> None:
    before = snapshot(written.parent)
    error = refused(url, UnknownStoreError)
    assert isinstance(error, ValueError)
    message = str(error)
    assert url in message
    for scheme in ("memory://", "sqlite:///", "redis://"):
        assert scheme in message
    assert snapshot(written.parent) == before
    assert_all_stored(written)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/proc/nope/runs.db", id="missing-directory-in-proc"),
        pytest.param("/proc/version", id="unwritable-file"),
        pytest.param("{tmp}/no/such/dir/runs.db", id="missing-directory"),
        pytest.param("{tmp}", id="a-directory"),
    ],
)
def test_unusable_path_names_the_path(path: str, written: Path) -> None:
    path = path.format(tmp=written.parent)
    before = snapshot(written.parent)
    error = refused(path, StoreUnavailableError)
    assert path in str(error)
    assert snapshot(written.parent) == before
    assert_all_stored(written)


# -- damaged or foreign SQLite files -------------------------------------------------------------
def garble_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:100] = b"\xde\xad\xbe\xef" * 25  # the SQLite header: "not a database"
    db.write_bytes(bytes(data))


def garble_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[4096:] = bytes(range(256)) * ((len(data) - 4096) // 256)  # every page past the first
    db.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        pytest.param(garble_header, StoreCorruptedError, id="garbage-header"),
        pytest.param(garble_pages, StoreCorruptedError, id="garbage-pages"),
        pytest.param(
            lambda db: set_pragma(db, "application_id", 0x1234), StoreCorruptedError, id="foreign"
        ),
        pytest.param(
            lambda db: set_pragma(db, "user_version", 2), StoreVersionError, id="newer-version"
        ),
        pytest.param(
            lambda db: set_pragma(db, "user_version", 0), StoreVersionError, id="version-0"
        ),
    ],
)
def test_damaged_or_foreign_store_is_refused_and_left_byte_for_byte(
    written: Path, damage: Callable[[Path], None], error: type[StoreError]
) -> None:
    original = written.read_bytes()
    damage(written)
    before = snapshot(written.parent)
    assert before[written.name] != original
    message = str(refused(str(written), error))
    assert str(written) in message
    assert "left" in message  # "... was left untouched / as it is"
    assert snapshot(written.parent) == before  # no byte changed, no file added or removed
    refused(str(written), error)  # a second attempt is refused the same way
    assert snapshot(written.parent) == before
    written.write_bytes(original)  # undo the damage: everything is still there
    assert_all_stored(written)


def test_a_file_of_garbage_is_refused_and_left_byte_for_byte(tmp_path: Path) -> None:
    garbage = tmp_path / "runs.db"
    garbage.write_bytes(bytes(range(256)) * 64)
    before = snapshot(tmp_path)
    message = str(refused(str(garbage), StoreCorruptedError))
    assert str(garbage) in message
    assert snapshot(tmp_path) == before


def test_garbage_from_another_program_is_refused_and_left_byte_for_byte(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    assert "not a rate_limited store" in str(refused(str(other), StoreCorruptedError))
    assert snapshot(tmp_path) == before


def test_store_with_records_but_no_secret_file_is_refused_without_making_a_new_one(
    written: Path,
) -> None:
    key_file = written.with_name(written.name + ".key")
    moved = written.with_name("elsewhere.key")
    key_file.rename(moved)
    before = snapshot(written.parent)
    message = str(refused(str(written), StoreIntegrityError))
    assert str(key_file) in message
    assert snapshot(written.parent) == before  # no new secret that would orphan the records
    moved.rename(key_file)
    assert_all_stored(written)


def test_a_wrong_secret_fails_the_run_clearly_and_loses_nothing(
    written: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records signed with another secret are never unpickled; the error names the file."""
    before = snapshot(written.parent)
    monkeypatch.setenv("RATE_LIMITED_STORE_SECRET", "not-the-secret-they-were-written-with")
    with Runner(square, [], progress=False, store=str(written)) as runner:
        for i in range(N):
            runner.schedule(i)
        with pytest.raises(StoreIntegrityError, match="bad signature") as caught:
            runner.run()
    assert str(written) in str(caught.value)
    assert calls_made == []
    assert snapshot(written.parent)[written.name] == before[written.name]
    monkeypatch.delenv("RATE_LIMITED_STORE_SECRET")
    assert_all_stored(written)


# -- Redis ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_redis_that_is_down_is_refused_quickly_naming_the_url(
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RATE_LIMITED_STORE_SECRET", "test-store-errors")
    live = f"{redis_url}?prefix=test_store_errors_{uuid.uuid4().hex}"
    assert run_squares(live).results == [i * i for i in range(N)]
    calls_made.clear()

    down = f"redis://127.0.0.1:{free_port()}/0"
    message = str(refused(down, StoreUnavailableError))  # no retry loop: pytest-timeout guards
    assert down in message
    assert "redis-server" in message

    again = run_squares(live)  # the live store kept everything
    assert all(o.from_store for o in again.outcomes)
    assert calls_made == []


def test_redis_url_password_is_not_shown_in_the_error() -> None:
    down = f"redis://user:hunter2secret@127.0.0.1:{free_port()}/0"
    message = str(refused(down, StoreUnavailableError))
    assert "hunter2secret" not in message
    assert "127.0.0.1" in message


# -- results the store can't keep ----------------------------------------------------------------
def unpicklable(i: int) -> Any:
    calls_made.append(i)
    if i % 3 == 1:
        return threading.Lock()
    if i % 3 == 2:
        return lambda: i  # a local lambda: pickle can't find it by name
    return i * i


def test_unpicklable_result_succeeds_in_memory_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = str(tmp_path / "runs.db")
    with (
        caplog.at_level(logging.WARNING, logger="rate_limited"),
        Runner(unpicklable, [], progress=False, store=db) as runner,
    ):
        for i in range(9):
            runner.schedule(i)
        with pytest.warns(StoreWarning, match=r"^6 finished call\(s\) could not be") as caught:
            result = runner.run()
    assert len(caught) == 1 and "pickle" in str(caught[0].message)
    assert result.store_failures == 6
    assert not result.interrupted
    assert [o.status for o in result.outcomes] == [Status.SUCCEEDED] * 9
    assert result.exceptions == [[] for _ in range(9)]
    assert [result.results[i] for i in (0, 3, 6)] == [0, 9, 36]
    assert all(type(result.results[i]) is type(threading.Lock()) for i in (1, 4, 7))
    assert [result.results[i]() for i in (2, 5, 8)] == [2, 5, 8]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "pickle" in warnings[0].getMessage()

    calls_made.clear()  # the picklable results were stored; the others run again
    with Runner(unpicklable, [], progress=False, store=db) as runner:
        for i in range(9):
            runner.schedule(i)
        with pytest.warns(StoreWarning, match="^6 finished"):
            again = runner.run()
    assert [o.from_store for o in again.outcomes] == [i % 3 == 0 for i in range(9)]
    assert sorted(calls_made) == [1, 2, 4, 5, 7, 8]


# -- a store failing during a run -----------------------------------------------------------------
def test_a_full_disk_is_one_store_warning_with_the_count_and_close_does_not_raise(
    tmp_path: Path,
) -> None:
    """A full disk was one log line on a silent logger, ``run()`` reported success, a later
    process called the API again for those rows, and ``close()`` (so ``with Runner``)
    raised after the run; failed flushes also rewrote a growing buffer on every call."""
    db = tmp_path / "runs.db"
    runner = Runner(square, [], progress=False, store=str(db))
    store: Any = runner.store
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    attempts = 0
    write = store._write

    def counted(items: list[Any]) -> None:
        nonlocal attempts
        attempts += 1
        write(items)

    store._write = counted
    with runner:
        for i in range(1000):
            runner.schedule(i)
        with pytest.warns(StoreWarning, match=r"^1000 finished call\(s\)") as caught:
            result = runner.run()
        assert len(caught) == 1 and "full" in str(caught[0].message)
        assert result.store_failures == 1000
        assert result.results == [i * i for i in range(1000)]
    # The with block closed the runner: no exception, and no second warning (it would be
    # an error here) for records a warning already named.
    assert attempts <= 10


def test_redis_going_down_during_a_run_is_a_store_warning() -> None:
    import redis

    from tests.stores.conftest import start_redis_server, stop_redis_server

    server, port = start_redis_server()  # of its own: this test shuts it down
    try:

        def square_then_kill(i: int) -> int:
            if i == 20:
                with contextlib.suppress(redis.RedisError):
                    redis.Redis(port=port).shutdown(nosave=True)
                server.wait(10)
            return i * i

        with Runner(
            square_then_kill,
            [],
            max_concurrent=1,
            progress=False,
            store=f"redis://127.0.0.1:{port}/0?prefix={uuid.uuid4().hex}",
        ) as runner:
            for i in range(100):
                runner.schedule(i)
            with pytest.warns(StoreWarning, match="Redis") as caught:
                result = runner.run()
        assert len(caught) == 1
        assert result.results == [i * i for i in range(100)]
        assert 80 <= result.store_failures <= 100
    finally:
        if server.poll() is None:
            stop_redis_server(server)


def test_results_of_calls_finishing_after_an_interrupt_that_cant_be_stored_are_reported(
    tmp_path: Path,
) -> None:
    """Calls still running at a Ctrl-C finish after run() returned: if their results can't
    be stored, close() says so (there is no run left to say it)."""
    gate = threading.Event()

    async def late_and_unpicklable(i: int) -> Any:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return threading.Lock()

    runner = Runner(late_and_unpicklable, [], progress=False, store=str(tmp_path / "runs.db"))
    for i in range(3):
        runner.schedule(i)
    handle = runner.start()
    deadline = time.monotonic() + 10
    while runner._engine is None or runner._engine.running_calls < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    partial = handle.stop(timeout=10)
    assert partial.interrupted and partial.store_failures == 0
    gate.set()
    with pytest.warns(StoreWarning, match="^3 finished call"):
        runner.close()
