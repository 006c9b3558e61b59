"""The record codec: a record is unpickled only when its signature verifies."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import pydantic
import pytest

from rate_limited.stores import (
    StoreCorruptedError,
    StoredOutcome,
    StoreIntegrityError,
    StoreSerializationError,
    _codec,
)
from rate_limited.stores._codec import Codec, explicit_secret

from .test_sqlite import Evil


class Movable:
    """A result class that a test removes, as a refactoring would."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Movable)


RECORD = StoredOutcome(
    key="k",
    status="succeeded",
    result={"a": [1, 2.5]},
    attempts=2,
    usage={"tokens": 7.0},
    started_at=1.5,
    finished_at=2.5,
    function="m.f",
    expires_at=None,
    error=None,
)


def test_seal_and_open_round_trip() -> None:
    codec = Codec(b"secret")
    sealed = codec.seal(RECORD)
    assert sealed.meta.isascii() and "\n" not in sealed.meta
    assert codec.open("k", sealed.meta, sealed.result, sealed.mac, "here") == RECORD


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"key": "other"}, id="key"),
        pytest.param({"meta": '{"x":1}'}, id="meta"),
        pytest.param({"result": b"p" + pickle.dumps("other")}, id="result"),
        pytest.param({"mac": b"\0" * 32}, id="mac"),
        pytest.param({"mac": b""}, id="empty-mac"),
        pytest.param({"meta": "é"}, id="non-ascii-meta"),
    ],
)
def test_any_change_fails_verification(change: dict[str, object]) -> None:
    codec = Codec(b"secret")
    parts = {**dataclasses.asdict(codec.seal(RECORD)), **change}
    with pytest.raises(StoreIntegrityError):
        codec.open(parts["key"], parts["meta"], parts["result"], parts["mac"], "here")


def test_another_secret_fails_verification_and_nothing_is_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    forged = Codec(b"attacker").seal(dataclasses.replace(RECORD, result=Evil(marker)))
    with pytest.raises(StoreIntegrityError, match="not unpickled"):
        Codec(b"secret").open("k", forged.meta, forged.result, forged.mac, "here")
    assert not marker.exists()
    _codec._load_result(forged.result)  # the payload is live: it would have run
    assert marker.exists()


def test_a_verified_record_whose_class_is_gone_is_corrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = Codec(b"secret")
    sealed = codec.seal(dataclasses.replace(RECORD, result=Movable()))
    monkeypatch.delitem(globals(), "Movable")
    with pytest.raises(StoreCorruptedError, match="can't be decoded"):
        codec.open("k", sealed.meta, sealed.result, sealed.mac, "here")


def test_unpicklable_results_and_unjsonable_usage_are_refused() -> None:
    codec = Codec(b"secret")
    with pytest.raises(StoreSerializationError, match="pickled"):
        codec.seal(dataclasses.replace(RECORD, result=lambda: 1))
    with pytest.raises(StoreSerializationError, match="usage"):
        codec.seal(dataclasses.replace(RECORD, usage={"tokens": object()}))  # type: ignore[dict-item]


def test_secret_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_codec.SECRET_ENV, "env")
    assert explicit_secret("arg") == b"arg"
    assert explicit_secret(b"\x00raw") == b"\x00raw"
    assert explicit_secret(None) == b"env"
    monkeypatch.delenv(_codec.SECRET_ENV)
    assert explicit_secret(None) is None
    with pytest.raises(ValueError, match="empty"):
        explicit_secret("")


def test_secret_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "secret"
    assert _codec.read_secret_file(path) is None
    created = _codec.create_secret_file(path)
    assert _codec.read_secret_file(path) == created
    assert _codec.create_secret_file(path) == created  # never replaced
    path.write_text("\n")
    with pytest.raises(StoreCorruptedError, match="empty"):
        _codec.read_secret_file(path)


def test_a_secret_file_is_never_seen_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers opening one new store at once: while one writes the secret, another finds
    no file (and makes its own), never an empty one (which it took for a corrupted store:
    a worker died at start-up on CI); the first to link its file wins, the other reads it."""
    path = tmp_path / "runs.db.key"
    fsync = os.fsync
    theirs: list[bytes] = []
    raced: list[bool] = []

    def write_then_look(fd: int) -> None:
        fsync(fd)
        assert _codec.read_secret_file(path) is None  # not there until whole
        if not raced:  # another process gets there first, between our write and link
            raced.append(True)
            theirs.append(_codec.create_secret_file(path))

    monkeypatch.setattr(_codec.os, "fsync", write_then_look)
    mine = _codec.create_secret_file(path)
    assert mine == theirs[0] == _codec.read_secret_file(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db.key"]  # no temporaries


class Reply(pydantic.BaseModel):
    text: str
    score: float = 0.5
    tags: list[str] = []


class Loose(pydantic.BaseModel):
    data: Any = None


class WithPrivate(pydantic.BaseModel):
    text: str
    _request_id: str | None = None


def test_pydantic_models_are_kept_as_json_when_that_round_trips() -> None:
    codec = Codec(b"secret")
    reply = Reply(text="hi", tags=["a"])
    sealed = codec.seal(dataclasses.replace(RECORD, result=reply))
    assert sealed.result.startswith(b"m" + f"{__name__}:Reply".encode() + b"\n")
    back = codec.open("k", sealed.meta, sealed.result, sealed.mac, "here").result
    assert back == reply and back.model_fields_set == {"text", "tags"}


def test_models_that_do_not_round_trip_as_json_are_pickled() -> None:
    codec = Codec(b"secret")
    private = WithPrivate(text="x")
    private._request_id = "req-1"
    loose = Loose(data=(1, 2))  # JSON would give back a list
    for value in (loose, private, [Reply(text="in a list")]):
        sealed = codec.seal(dataclasses.replace(RECORD, result=value))
        assert sealed.result.startswith(b"p")
        assert codec.open("k", sealed.meta, sealed.result, sealed.mac, "here").result == value


def test_an_unknown_result_encoding_is_corrupted() -> None:
    codec = Codec(b"secret")
    sealed = codec.seal(dataclasses.replace(RECORD, result=b"x"))
    bad = Codec(b"secret").seal(RECORD)
    forged = b"z" + sealed.result[1:]
    mac = codec._mac("k", bad.meta.encode(), forged)
    with pytest.raises(StoreCorruptedError, match="encoding"):
        codec.open("k", bad.meta, forged, mac, "here")
