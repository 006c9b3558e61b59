"""What every store does, run against the memory, SQLite and Redis backends alike."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rate_limited.stores import (
    StoredOutcome,
    StoreError,
    StoreSerializationError,
    StoreUnavailableError,
)

from .conftest import Backend, FakeClock


def outcome(
    key: str, result: Any = "value", *, finished_at: float = 1.0, **fields: Any
) -> StoredOutcome:
    return StoredOutcome(
        key=key,
        status="succeeded",
        result=result,
        finished_at=finished_at,
        function="m.f",
        **fields,
    )


def full_record(clock: FakeClock) -> StoredOutcome:
    return StoredOutcome(
        key="a" * 32,
        status="failed",
        result={"text": "héllo", "numbers": (1, 2.5, -0.0), "raw": b"\x00\xff", "none": None},
        error="RateLimitError: 429 Too Many Requests",
        attempts=3,
        usage={"requests": 1, "tokens": 1234.5},
        started_at=clock() - 2.25,
        finished_at=clock(),
        function="tests.stores.summarize",
        expires_at=clock() + 3600.0,
    )


def test_every_field_round_trips(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(clock=clock)
    record = full_record(clock)
    store.put(record)
    store.flush()
    assert store.get_many([record.key]) == {record.key: record}
    if backend.durable:
        store.close()
        assert backend.open(clock=clock).get(record.key) == record


def test_get_many_returns_only_present_records(backend: Backend) -> None:
    store = backend.open()
    store.put(outcome("k1", 1))
    store.put(outcome("k2", None))  # a None result is still a result
    store.flush()
    found = store.get_many(["k1", "k2", "missing", "k1"])
    assert sorted(found) == ["k1", "k2"]
    assert found["k2"].result is None
    assert store.get_many([]) == {}
    assert store.get("missing") is None


def test_a_later_put_replaces_the_record(backend: Backend) -> None:
    store = backend.open()
    store.put(outcome("k", "first"))
    store.flush()
    store.put(outcome("k", "second", attempts=2))
    assert store.get("k") == outcome("k", "second", attempts=2)
    store.flush()
    assert store.get("k") == outcome("k", "second", attempts=2)
    assert store.count() == 1


def test_buffered_records_are_read_back_before_the_flush(durable: Backend) -> None:
    writer = durable.open(flush_size=1000, flush_interval=3600)
    reader = durable.open()
    writer.put(outcome("k"))
    assert writer.get("k") == outcome("k")
    assert reader.get("k") is None
    writer.flush()
    assert reader.get("k") == outcome("k")


def test_put_flushes_when_the_buffer_is_full(durable: Backend) -> None:
    writer = durable.open(flush_size=3, flush_interval=3600)
    reader = durable.open()
    writer.put(outcome("k1"))
    writer.put(outcome("k2"))
    assert reader.get_many(["k1", "k2"]) == {}
    writer.put(outcome("k3"))
    assert sorted(reader.get_many(["k1", "k2", "k3"])) == ["k1", "k2", "k3"]


def test_put_and_maybe_flush_flush_once_the_interval_passed(
    durable: Backend, clock: FakeClock
) -> None:
    writer = durable.open(flush_size=1000, flush_interval=0.2, clock=clock)
    reader = durable.open(clock=clock)
    writer.put(outcome("k1", finished_at=clock()))
    clock.advance(0.1)
    assert writer.maybe_flush() is False
    writer.put(outcome("k2", finished_at=clock()))
    assert reader.get_many(["k1", "k2"]) == {}
    clock.advance(0.125)
    writer.put(outcome("k3", finished_at=clock()))  # the oldest waited 0.225 s: flush
    assert len(reader.get_many(["k1", "k2", "k3"])) == 3
    writer.put(outcome("k4", finished_at=clock()))
    clock.advance(0.5)
    assert writer.maybe_flush() is True
    assert reader.get("k4") is not None
    assert writer.maybe_flush() is False


def test_a_failing_flush_keeps_the_records_and_backs_off(
    durable: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk made every put retry a growing buffer (1,000 trivial calls: 15.5 s).
    Now put never raises for it, and the next attempt waits 0.05 s, then 0.1, 0.2..."""
    writer = durable.open(flush_size=10, flush_interval=3600, clock=clock)
    attempts = 0
    write = writer._write

    def disk_full(items: list[Any]) -> None:
        nonlocal attempts
        attempts += 1
        raise StoreUnavailableError("database or disk is full")

    monkeypatch.setattr(writer, "_write", disk_full)
    for i in range(1000):
        writer.put(outcome(f"k{i}"))
    assert attempts == 1
    assert isinstance(writer.flush_error, StoreUnavailableError)
    assert writer.retry_in() == pytest.approx(0.05)
    assert writer.try_flush() is False and attempts == 1  # backing off
    clock.advance(0.05)
    assert writer.try_flush() is False and attempts == 2
    assert writer.retry_in() == pytest.approx(0.1)  # doubled
    clock.advance(0.05)
    writer.put(outcome("k-more"))
    assert attempts == 2
    with pytest.raises(StoreUnavailableError):
        writer.flush()  # an explicit flush tries, and raises
    assert len(writer.pending_keys()) == 1001  # nothing was lost
    monkeypatch.setattr(writer, "_write", write)  # the disk has room again
    assert writer.try_flush(force=True) is True
    assert writer.flush_error is None and writer.pending_keys() == []
    assert len(durable.open().get_many([f"k{i}" for i in range(1000)])) == 1000


def test_close_flushes(durable: Backend) -> None:
    writer = durable.open(flush_size=1000, flush_interval=3600)
    writer.put(outcome("k"))
    writer.close()
    assert durable.open().get("k") == outcome("k")


def test_context_manager_closes(backend: Backend) -> None:
    with backend.open() as store:
        store.put(outcome("k"))
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.put(outcome("k2"))
    with pytest.raises(StoreError, match="closed"):
        store.get_many(["k"])
    store.close()  # twice is fine


def test_ttl_hides_old_records(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(ttl=60, clock=clock)
    store.put(outcome("old", finished_at=clock()))
    store.flush()
    clock.advance(30)
    store.put(outcome("young", finished_at=clock()))
    store.flush()
    clock.advance(29)
    assert sorted(store.get_many(["old", "young"])) == ["old", "young"]
    clock.advance(2)
    assert sorted(store.get_many(["old", "young"])) == ["young"]
    assert store.count() == 1
    assert [r.key for r in store.iter_records()] == ["young"]
    clock.advance(30)
    assert store.get_many(["old", "young"]) == {}
    assert len(store) == 0


def test_expires_at_hides_a_record(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(clock=clock)
    store.put(outcome("k", finished_at=clock(), expires_at=clock() + 10))
    assert store.get("k") is not None  # buffered
    store.flush()
    assert store.get("k") is not None
    clock.advance(10)
    assert store.get("k") is None
    assert store.count() == 0


def test_a_shorter_ttl_on_reopen_hides_records_written_under_a_longer_one(
    durable: Backend, clock: FakeClock
) -> None:
    with durable.open(ttl=3600, clock=clock) as store:
        store.put(outcome("k", finished_at=clock()))
    clock.advance(120)
    assert durable.open(ttl=3600, clock=clock).get("k") is not None
    assert durable.open(ttl=60, clock=clock).get("k") is None


def test_delete_clear_count_and_iteration(backend: Backend) -> None:
    store = backend.open(flush_size=1000, flush_interval=3600)
    assert bool(store) and len(store) == 0
    for i in range(5):
        store.put(outcome(f"k{i}", i))
    store.flush()
    store.put(outcome("k5", 5))  # still buffered: counted and listed too
    assert store.count() == 6
    assert sorted(r.result for r in store.iter_records()) == [0, 1, 2, 3, 4, 5]
    store.delete(["k0", "k5", "absent"])
    assert sorted(store.get_many([f"k{i}" for i in range(6)])) == ["k1", "k2", "k3", "k4"]
    store.clear()
    assert store.count() == 0
    assert list(store.iter_records()) == []


def test_iteration_reads_many_pages(backend: Backend) -> None:
    store = backend.open()
    for i in range(1203):
        store.put(outcome(f"k{i:05d}", i))
    store.flush()
    results = [record.result for record in store.iter_records()]
    assert sorted(results) == list(range(1203))


def test_failed_outcome_keeps_the_error_summary(backend: Backend) -> None:
    store = backend.open()
    failed = StoredOutcome(
        key="k",
        status="failed",
        result=None,
        error="ValueError: bad",
        attempts=5,
        finished_at=2.0,
        function="m.f",
    )
    store.put(failed)
    store.flush()
    assert store.get("k") == failed


def test_openai_chat_completion_round_trips_equal(backend: Backend) -> None:
    chat = pytest.importorskip("openai.types.chat")
    completion = chat.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Hello!"},
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    )
    store = backend.open()
    store.put(outcome("k", completion))
    store.flush()
    if backend.durable:
        store.close()
        store = backend.open()
    back = store.get("k")
    assert back is not None
    assert back.result == completion
    assert type(back.result) is chat.ChatCompletion


def test_a_result_that_cannot_be_pickled_is_refused_at_put(durable: Backend) -> None:
    store = durable.open()
    with pytest.raises(StoreSerializationError, match="can't be pickled"):
        store.put(outcome("k", threading.Lock()))
    with pytest.raises(TypeError):  # StoreSerializationError is a TypeError too
        store.put(outcome("k", lambda: None))
    store.put(outcome("ok"))
    store.flush()
    assert store.get("k") is None
    assert store.get("ok") is not None


def test_another_thread_can_read_while_this_one_writes(backend: Backend) -> None:
    store = backend.open(flush_size=10)
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(20):
                seen.append(len(store.get_many([f"k{i}" for i in range(200)])))
                list(store.iter_records())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        store.put(outcome(f"k{i}", i))
    reader.join()
    store.flush()
    assert errors == []
    assert len(store.get_many([f"k{i}" for i in range(200)])) == 200
