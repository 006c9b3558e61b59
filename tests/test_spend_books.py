"""Spend books: the atomic check-and-hold of a budget, in memory, SQLite and Redis."""

from __future__ import annotations

import math
import threading
import uuid
from pathlib import Path

import pytest

from rate_limited._spend_books import MemoryBook, SpendBook
from rate_limited._spend_redis import RedisBook
from rate_limited._spend_sqlite import SqliteBook
from tests.stores.conftest import redis_url  # noqa: F401


def make_book(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, window: float, lease: float = 3600.0
) -> SpendBook:
    if kind == "memory":
        return MemoryBook(window)
    if kind == "sqlite":
        return SqliteBook(str(tmp_path / "spend.db"), "b", lease)
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    return RedisBook(client, f"test:{uuid.uuid4().hex}:", "b", window, lease)


KINDS = [pytest.param("memory"), pytest.param("sqlite"), pytest.param("redis")]


@pytest.mark.parametrize("kind", KINDS)
def test_reserve_settle_release(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    book = make_book(kind, tmp_path, request, math.inf)
    first = book.reserve(0.6, 1.0, math.inf, 100.0)
    assert first is not None
    assert book.reserve(0.5, 1.0, math.inf, 100.0) is None  # 0.6 held + 0.5 > 1
    second = book.reserve(0.4, 1.0, math.inf, 100.0)
    assert second is not None
    assert book.state(math.inf, 100.0) == pytest.approx((0.0, 1.0))
    book.settle(first, 0.1, 101.0)
    book.release(second)
    assert book.state(math.inf, 102.0) == pytest.approx((0.1, 0.0))
    book.bill(0.2, 103.0)
    assert book.state(math.inf, 104.0) == pytest.approx((0.3, 0.0))
    assert book.frees_at(0.8, 1.0, math.inf, 104.0) == math.inf  # a total never frees


@pytest.mark.parametrize("kind", KINDS)
def test_a_rolling_window_frees_what_leaves_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    book = make_book(kind, tmp_path, request, 60.0)
    for at in (0.0, 10.0, 20.0):
        token = book.reserve(0.3, 1.0, 60.0, at)
        assert token is not None
        book.settle(token, 0.3, at)
    assert book.reserve(0.3, 1.0, 60.0, 30.0) is None
    assert book.frees_at(0.3, 1.0, 60.0, 30.0) == pytest.approx(60.0)
    assert book.reserve(0.3, 1.0, 60.0, 60.5) is not None
    assert book.state(60.0, 60.5) == pytest.approx((0.6, 0.3))


@pytest.mark.parametrize("kind", [pytest.param("sqlite"), pytest.param("redis")])
def test_a_lease_left_by_a_dead_process_counts_as_spent(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    book = make_book(kind, tmp_path, request, math.inf, lease=10.0)
    assert book.reserve(0.4, 1.0, math.inf, 0.0) is not None  # never settled
    assert book.state(math.inf, 5.0) == pytest.approx((0.0, 0.4))
    assert book.state(math.inf, 11.0) == pytest.approx((0.4, 0.0))


@pytest.mark.parametrize("kind", [pytest.param("sqlite"), pytest.param("redis")])
def test_books_of_several_processes_never_hold_more_than_the_limit(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Eight books on one place (as eight processes would be), racing for the same $1."""
    books = [make_book(kind, tmp_path, request, math.inf) for _ in range(1)]
    if kind == "sqlite":
        books += [make_book(kind, tmp_path, request, math.inf) for _ in range(7)]
    else:
        first = books[0]
        assert isinstance(first, RedisBook)
        books += [
            RedisBook(first._client, first._keys[0].rsplit("budget:", 1)[0], "b", math.inf, 3600.0)
            for _ in range(7)
        ]
    granted: list[str] = []
    lock = threading.Lock()

    def race(book: SpendBook) -> None:
        for _ in range(10):
            token = book.reserve(0.03, 1.0, math.inf, 1.0)
            if token is not None:
                with lock:
                    granted.append(token)

    threads = [threading.Thread(target=race, args=(book,)) for book in books]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 33  # floor(1 / 0.03): never one more
    assert books[0].state(math.inf, 2.0) == pytest.approx((0.0, 0.99))
