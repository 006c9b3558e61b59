"""open_store: choosing the backend from a URL, a path, a store or None."""

from __future__ import annotations

from pathlib import Path

import pytest

from rate_limited.stores import (
    MemoryStore,
    RedisStore,
    SqliteStore,
    Store,
    UnknownStoreError,
    open_store,
)

from .conftest import SECRET


def test_none_and_memory_give_a_memory_store() -> None:
    for spec in (None, "memory://", "MEMORY://"):
        with open_store(spec) as store:
            assert isinstance(store, MemoryStore)


def test_a_store_is_returned_as_it_is() -> None:
    with MemoryStore() as store:
        assert open_store(store) is store
        with pytest.raises(ValueError, match="constructor"):
            open_store(store, ttl=10)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("sqlite:///runs.db", "runs.db", id="sqlite-relative"),
        pytest.param("sqlite:///sub/runs.db", "sub/runs.db", id="sqlite-relative-dir"),
        pytest.param("runs.sqlite", "runs.sqlite", id="plain-path"),
        pytest.param("anything", "anything", id="any-plain-path"),
    ],
)
def test_relative_paths_give_a_sqlite_store(
    spec: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with open_store(spec, secret=SECRET) as store:
        assert isinstance(store, SqliteStore)
        assert store.path == expected
    assert (tmp_path / expected).is_file()


def test_absolute_paths_and_pathlike_give_a_sqlite_store(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db", secret=SECRET) as store:  # 4 slashes
        assert isinstance(store, SqliteStore)
    with open_store(tmp_path / "b.db", secret=SECRET, ttl=5) as store:
        assert isinstance(store, SqliteStore) and store.ttl == 5
    assert (tmp_path / "a.db").is_file() and (tmp_path / "b.db").is_file()


@pytest.mark.parametrize("spec", ["sqlite:///:memory:", "sqlite://", ":memory:"])
def test_in_memory_sqlite(spec: str) -> None:
    with open_store(spec) as store:
        assert isinstance(store, SqliteStore) and store.path == ":memory:"


def test_redis_urls_give_a_redis_store(redis_url: str) -> None:
    with open_store(f"{redis_url}?prefix=job", secret=SECRET) as store:
        assert isinstance(store, RedisStore) and store.namespace == "job"
    with open_store(redis_url, secret=SECRET, namespace="other") as store:
        assert isinstance(store, RedisStore) and store.namespace == "other"


@pytest.mark.parametrize(
    "spec", ["postgres://x", "ftp://host/file", "s3://bucket/key", "file:///x"]
)
def test_an_unknown_scheme_lists_the_supported_ones(spec: str) -> None:
    with pytest.raises(UnknownStoreError) as caught:
        open_store(spec)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert spec in message
    for scheme in ("memory://", "sqlite:///", "redis://", "rediss://", "unix://"):
        assert scheme in message


@pytest.mark.parametrize("spec", ["", "sqlite://runs.db", "memory://x"])
def test_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(UnknownStoreError):
        open_store(spec)


def test_namespace_is_for_redis_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Redis"):
        open_store(tmp_path / "runs.db", namespace="x")
    with pytest.raises(ValueError, match="Redis"):
        open_store(None, namespace="x")
    assert not (tmp_path / "runs.db").exists()


def test_wrong_types_and_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        open_store(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        open_store(None, ttl=0)
    with pytest.raises(ValueError, match="flush_size"):
        open_store(tmp_path / "runs.db", flush_size=0, secret=SECRET)
    with pytest.raises(ValueError, match="secret"):
        open_store(tmp_path / "runs.db", secret=b"")


def test_the_store_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        Store()  # type: ignore[abstract]
