"""Work sharing: Runners on one store send each call once, whoever claims it first; a dead
worker's claims are taken over. Stores' claims, then Runners in threads and processes."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rate_limited import Runner, StoreWarning
from rate_limited.stores import RedisStore, SqliteStore, Store
from rate_limited.testing import MockProvider
from tests.shared import reports, start_workers
from tests.stores.conftest import FakeClock, redis_url  # noqa: F401 - the session's server

SECRET = "claims-test-secret"


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> Iterator[Callable[..., Store]]:
    """Opens stores on one shared place (each call: another 'process' on it)."""
    opened: list[Store] = []
    namespace = f"claims-{uuid.uuid4().hex[:8]}"

    def open_one(**options: object) -> Store:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "runs.db", secret=SECRET, **options)  # type: ignore[arg-type]
        else:
            store = RedisStore(redis_url, namespace=namespace, secret=SECRET, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        if not store.closed:
            store.clear()
            store.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.02)


# -- stores ------------------------------------------------------------------------------------
def test_claims_of_a_shared_store(shared_store: Callable[..., Store]) -> None:
    one, other = shared_store(), shared_store()
    assert one.shares_work
    assert one.claim(["a", "b"], "one") == {"a": "ours", "b": "ours"}
    assert other.claim(["a", "c"], "other") == {"a": "taken", "c": "ours"}
    assert one.claim(["a"], "one") == {"a": "ours"}  # renewed
    one.unclaim(["b"], "one")
    assert other.claim(["b"], "other") == {"b": "ours"}


def test_a_stored_outcome_needs_no_claim(shared_store: Callable[..., Store]) -> None:
    from rate_limited.stores import StoredOutcome

    one, other = shared_store(), shared_store()
    one.put(StoredOutcome(key="a", status="succeeded", result=1))
    assert one.claim(["a"], "one") == {"a": "stored"}  # buffered counts
    one.flush()
    assert other.claim(["a"], "other") == {"a": "stored"}
    assert other.claim(["a"], "other", over_records=True) == {"a": "ours"}


def test_claims_expire(shared_store: Callable[..., Store]) -> None:
    one, other = shared_store(claim_ttl=0.3), shared_store(claim_ttl=0.3)
    assert one.claim(["a"], "one") == {"a": "ours"}
    assert other.claim(["a"], "other") == {"a": "taken"}
    wait_for(lambda: other.claim(["a"], "other") == {"a": "ours"})  # one stopped renewing


def test_a_memory_store_shares_nothing() -> None:
    from rate_limited.stores import MemoryStore

    store = MemoryStore()
    assert not store.shares_work
    assert store.claim(["a"], "one") == store.claim(["a"], "two") == {"a": "ours"}


# -- Runners in one process --------------------------------------------------------------------
def test_runners_in_threads_send_each_call_once(shared_store: Callable[..., Store]) -> None:
    sent: Counter[int] = Counter()
    lock = threading.Lock()

    def call(i: int) -> int:
        with lock:
            sent[i] += 1
        time.sleep(0.001)  # a call takes a moment: the runners overlap
        return i * 10

    runners = [Runner(call, store=shared_store(), progress=False) for _ in range(3)]
    for runner in runners:
        for i in range(200):
            runner.schedule(i)
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda r=r: results.append(r.run().results)) for r in runners
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for runner in runners:
        runner.close()
    assert sent == Counter(range(200))  # each sent once, by one of them
    assert results == [[i * 10 for i in range(200)]] * 3  # every runner has every result
    taken = sum(sum(o.from_store for o in r.last_result.outcomes) for r in runners)  # type: ignore[union-attr]
    assert taken == 2 * 200


def test_a_failure_in_another_worker_is_taken_as_it_is(shared_store: Callable[..., Store]) -> None:
    from rate_limited import PermanentError

    calls: Counter[int] = Counter()
    gate = threading.Event()

    def fail(i: int) -> int:
        calls[i] += 1
        gate.wait(10)
        raise PermanentError("no")

    first, second = Runner(fail, store=shared_store()), Runner(fail, store=shared_store())
    first.schedule(1)
    second.schedule(1)
    handle = first.start()
    wait_for(lambda: calls[1] == 1)
    thread = threading.Thread(target=second.run)
    thread.start()
    # the second waits for the first's outcome (it found the call claimed) before it fails
    wait_for(
        lambda: second._active_engine is not None and bool(second._active_engine.claims._waiting)
    )  # type: ignore[union-attr]
    gate.set()
    handle.result(30)
    thread.join()
    assert calls[1] == 1
    assert "failed in another worker" in str(second.last_result.exceptions[0][-1])  # type: ignore[union-attr]
    first.close()
    second.close()


def test_a_store_that_cannot_claim_sends_and_warns(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "runs.db", secret=SECRET)

    def broken(*args: object, **kwargs: object) -> dict[str, str]:
        from rate_limited.exceptions import StoreUnavailableError

        raise StoreUnavailableError("disk gone")

    store._claim = broken  # type: ignore[method-assign, assignment]
    runner = Runner(lambda i: i, store=store, progress=False)
    runner.schedule(1)
    with pytest.warns(StoreWarning, match="without checking whether another worker"):
        assert runner.run().results == [1]
    runner.close()
    store.close()


# -- Runners in processes ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    monkeypatch.setenv("RATE_LIMITED_STORE_SECRET", SECRET)
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
        return
    base, _, _ = redis_url.rpartition("/")
    yield f"{base}/0?prefix=claims-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_four_processes_share_one_job(store_url: str) -> None:
    count = 300
    with MockProvider(rpm=60_000, tpm=10_000_000, latency=0.05, jitter=0.3) as mp:
        procs = start_workers(
            mp.base_url, count, workers=4, store=store_url, rpm=60_000, tpm=10_000_000,
            max_tokens=50, split=False,
        )  # fmt: skip
        done = reports(procs)
        assert mp.stats().requests == count  # each call sent once, by one of them
    assert [r["succeeded"] for r in done] == [count] * 4
    assert sum(r["attempts"] for r in done) == count
    assert all(r["texts"] == done[0]["texts"] for r in done)  # the same results everywhere


@pytest.mark.slow
def test_a_killed_workers_calls_are_taken_over(store_url: str) -> None:
    count, concurrency = 300, 8
    with MockProvider(rpm=60_000, tpm=10_000_000, latency=0.2, jitter=0.3) as mp:
        procs = start_workers(
            mp.base_url, count, workers=4, store=store_url, rpm=60_000, tpm=10_000_000,
            max_tokens=50, split=False,
            extra=["--claim-ttl=6", f"--max-concurrent={concurrency}"],  # a 6 s stall keeps claims
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while mp.stats().admitted < count // 3:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                for proc in procs:  # no pipe left open for a later test to trip on
                    proc.kill()
                ended = [proc.communicate() for proc in procs]
                raise AssertionError(f"a worker ended (or stalled) before the kill: {ended}")
            time.sleep(0.02)
        victim = procs.pop(0)
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        done = reports(procs)
        # the others finish every call; only those in flight at the kill are sent twice
        assert [r["succeeded"] for r in done] == [count] * 3
        assert count <= mp.stats().requests <= count + concurrency
    assert os.WIFSIGNALED(victim.returncode) or victim.returncode == -signal.SIGKILL
