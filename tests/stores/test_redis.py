"""RedisStore: a server that is down, namespaces, key expiry, and tampered records."""

from __future__ import annotations

import pickle
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rate_limited.stores import (
    RedisStore,
    StoreCorruptedError,
    StoredOutcome,
    StoreIntegrityError,
    StoreUnavailableError,
    StoreVersionError,
    open_store,
)
from rate_limited.stores._codec import SECRET_ENV

from .conftest import SECRET, FakeClock, _free_port
from .test_sqlite import Evil

if TYPE_CHECKING:
    from redis import Redis

redis = pytest.importorskip("redis")


def outcome(key: str, result: object = "value", finished_at: float = 1.0) -> StoredOutcome:
    return StoredOutcome(key=key, status="succeeded", result=result, finished_at=finished_at)


@pytest.fixture
def raw(redis_url: str) -> Iterator[Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    return uuid.uuid4().hex


def test_a_server_that_is_down_raises_unavailable_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    with pytest.raises(StoreUnavailableError, match="redis-server") as caught:
        RedisStore(url, secret=SECRET)
    assert url in str(caught.value)
    with pytest.raises(StoreUnavailableError):
        open_store(url, secret=SECRET)


def test_the_password_never_shows_in_messages() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{_free_port()}/0"
    with pytest.raises(StoreUnavailableError) as caught:
        RedisStore(url, secret=SECRET)
    assert "hunter2" not in str(caught.value)
    assert "user:***@127.0.0.1" in str(caught.value)


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'rate_limited\[redis\]'"):
        RedisStore("redis://127.0.0.1:6379/0", secret=SECRET)


def test_namespaces_keep_stores_apart(redis_url: str, namespace: str) -> None:
    with (
        RedisStore(redis_url, namespace=namespace, secret=SECRET) as one,
        open_store(f"{redis_url}?prefix={namespace}-2", secret=SECRET) as two,
    ):
        assert isinstance(two, RedisStore) and two.namespace == f"{namespace}-2"
        one.put(outcome("k", 1))
        two.put(outcome("k", 2))
        one.flush()
        two.flush()
        assert one.get("k") == outcome("k", 1)
        assert two.get("k") == outcome("k", 2)
        one.clear()
        assert one.count() == 0
        assert two.count() == 1


def test_glob_characters_in_a_namespace_are_literal(redis_url: str, namespace: str) -> None:
    with (
        RedisStore(redis_url, namespace=f"{namespace}*", secret=SECRET) as star,
        RedisStore(redis_url, namespace=f"{namespace}x", secret=SECRET) as plain,
    ):
        plain.put(outcome("k"))
        plain.flush()
        assert star.count() == 0
        star.clear()
        assert plain.count() == 1


def test_ttl_becomes_redis_key_expiry(
    redis_url: str, namespace: str, raw: Redis, clock: FakeClock
) -> None:
    with RedisStore(redis_url, namespace=namespace, ttl=60, secret=SECRET, clock=clock) as store:
        store.put(outcome("k", finished_at=clock()))
        store.put(
            StoredOutcome(
                key="own", status="succeeded", finished_at=clock(), expires_at=clock() + 5
            )
        )
        store.put(outcome("stale", finished_at=clock() - 120))  # expired already
        store.flush()
        name = f"rate_limited:store:{namespace}:"
        assert 59_000 < raw.pttl(name + "k") <= 60_000
        assert 4_000 < raw.pttl(name + "own") <= 5_000
        assert raw.exists(name + "stale") == 0
    with RedisStore(redis_url, namespace=namespace, secret=SECRET) as store:
        store.put(outcome("forever"))
        store.flush()
        assert raw.pttl(f"rate_limited:store:{namespace}:forever") == -1


def test_the_fields_are_readable_without_unpickling(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    with RedisStore(redis_url, namespace=namespace, secret=SECRET) as store:
        store.put(
            StoredOutcome(
                key="k", status="failed", error="ValueError: x", attempts=2, finished_at=5.0
            )
        )
    value = raw.get(f"rate_limited:store:{namespace}:k")
    assert isinstance(value, bytes)
    first_lines = value.split(b"\n")
    assert first_lines[0] == b"rl1"
    assert b'"attempts":2' in first_lines[1] and b'"status":"failed"' in first_lines[1]


def test_a_replaced_pickle_is_never_unpickled(
    redis_url: str, namespace: str, raw: Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    with RedisStore(redis_url, namespace=namespace, secret=SECRET) as store:
        store.put(outcome("k"))
        store.put(outcome("good"))
        store.flush()
        name = f"rate_limited:store:{namespace}:k"
        value = raw.get(name)
        assert isinstance(value, bytes)
        head = value[: value.index(b"\n", 4) + 1 + 32]
        raw.set(name, head + b"p" + pickle.dumps(Evil(marker)))
        with pytest.raises(StoreIntegrityError, match="'k'"):
            store.get_many(["good", "k"])
        with pytest.raises(StoreIntegrityError):
            list(store.iter_records())
        assert store.get("good") == outcome("good")
    assert not marker.exists()


def test_records_written_with_another_secret_do_not_verify(redis_url: str, namespace: str) -> None:
    with RedisStore(redis_url, namespace=namespace, secret=b"one") as store:
        store.put(outcome("k"))
    with (
        RedisStore(redis_url, namespace=namespace, secret=b"two") as store,
        pytest.raises(StoreIntegrityError, match="another secret"),
    ):
        store.get("k")


def test_a_record_copied_to_another_prefix_does_not_verify(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    """The signature binds the full Redis key: a record copied from ``?prefix=a`` to
    ``?prefix=b`` (or renamed) would otherwise be trusted there."""
    with RedisStore(f"{redis_url}?prefix={namespace}-a", secret=SECRET) as store:
        store.put(outcome("k", "answer for a"))
    value = raw.get(f"rate_limited:store:{namespace}-a:k")
    assert isinstance(value, bytes)
    raw.set(f"rate_limited:store:{namespace}-b:k", value)
    with (
        RedisStore(f"{redis_url}?prefix={namespace}-b", secret=SECRET) as store,
        pytest.raises(StoreIntegrityError, match="'k'"),
    ):
        store.get("k")
    with RedisStore(f"{redis_url}?prefix={namespace}-a", secret=SECRET) as store:
        assert store.get("k") == outcome("k", "answer for a")  # still good where written
    raw.delete(f"rate_limited:store:{namespace}-a:k", f"rate_limited:store:{namespace}-b:k")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(b"hello", StoreCorruptedError, id="foreign"),
        pytest.param(b"rl1\n{}", StoreCorruptedError, id="truncated"),
        pytest.param(b"rl9\n{}\n" + b"\0" * 40, StoreVersionError, id="other-version"),
    ],
)
def test_values_that_are_not_records_raise_specific_errors(
    redis_url: str, namespace: str, raw: Redis, value: bytes, error: type[Exception]
) -> None:
    raw.set(f"rate_limited:store:{namespace}:k", value)
    with (
        RedisStore(redis_url, namespace=namespace, secret=SECRET) as store,
        pytest.raises(error, match="'k'"),
    ):
        store.get("k")


def test_without_a_secret_one_is_created_in_the_user_config_dir(
    redis_url: str, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with RedisStore(redis_url, namespace=namespace) as store:
        store.put(outcome("k"))
    secret_file = tmp_path / "config" / "rate_limited" / "secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    with RedisStore(redis_url, namespace=namespace) as store:
        assert store.get("k") == outcome("k")
    monkeypatch.setenv(SECRET_ENV, secret_file.read_text().strip())
    with RedisStore(redis_url, namespace=namespace) as store:
        assert store.get("k") == outcome("k")


def test_namespace_and_prefix_must_agree(redis_url: str) -> None:
    with pytest.raises(ValueError, match="disagree"):
        RedisStore(f"{redis_url}?prefix=a", namespace="b", secret=SECRET)
