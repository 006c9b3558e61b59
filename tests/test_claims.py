"""Work sharing: Runners on one store send each call once, whoever claims it first; a dead
worker's claims are taken over. Stores' claims, then Runners in threads and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rate_limited import RateLimitedWarning, Runner, StoreWarning
from rate_limited._holder import HOST, Holder, _lock_directory
from rate_limited.stores import RedisStore, SqliteStore, Store, StoredOutcome, open_store
from rate_limited.stores.base import ClaimState
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


def test_a_taken_claim_says_who_holds_it_and_until_when(
    shared_store: Callable[..., Store],
) -> None:
    one, other = shared_store(claim_ttl=100), shared_store(claim_ttl=100)
    assert one.claim(["a"], "one") == {"a": "ours"}
    state = other.claim_states(["a", "b"], "other")
    assert state["b"] == ClaimState("ours")
    assert (state["a"].answer, state["a"].holder) == ("taken", "one")
    assert state["a"].expires_at is not None
    assert 50 < state["a"].expires_at - time.time() <= 100


def test_only_the_claims_of_ended_holders_are_taken_over(
    shared_store: Callable[..., Store],
) -> None:
    one, other = shared_store(claim_ttl=100), shared_store(claim_ttl=100)
    assert one.claim(["a"], "ended") == {"a": "ours"}
    assert one.claim(["b"], "alive") == {"b": "ours"}
    states = other.claim_states(["a", "b"], "me", take_over={"ended"})
    assert (states["a"].answer, states["a"].holder) == ("ours", "ended")  # replaced its claim
    assert (states["b"].answer, states["b"].holder) == ("taken", "alive")
    assert one.claim(["a"], "ended") == {"a": "taken"}  # it is mine now
    # a holder can't take over its own claims from itself, nor lose them by it
    assert other.claim(["a"], "me", take_over={"me"}) == {"a": "ours"}


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

    runners = [
        Runner(call, store=shared_store(), progress=False, long_wait_warning_seconds=None)
        for _ in range(3)
    ]
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

    first, second = (
        Runner(fail, store=shared_store(), long_wait_warning_seconds=None) for _ in range(2)
    )
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


class Outage:
    """Makes a store's reads and claims fail (``StoreUnavailableError``) while ``down``,
    or for the next ``count`` reads; counts the failures."""

    def __init__(self, store: Store) -> None:
        self.down = False
        self.count = 0
        self.failures = 0
        for name in ("get", "get_many", "claim", "claim_states"):
            setattr(store, name, self._failing(getattr(store, name)))

    def _failing(self, method: Callable[..., object]) -> Callable[..., object]:
        from rate_limited.exceptions import StoreUnavailableError

        def failing(*args: object, **kwargs: object) -> object:
            if self.down or self.count > 0:
                self.count = max(0, self.count - 1)
                self.failures += 1
                raise StoreUnavailableError("connection refused")
            return method(*args, **kwargs)

        return failing


def held_and_waited_for(
    shared_store: Callable[..., Store], waiter_ttl: float
) -> tuple[Runner, Runner, Outage, threading.Event, Counter[int]]:
    """A Runner sending call 1 (until ``gate`` is set) and another one waiting on its
    claim, whose store an Outage can break."""
    sent: Counter[int] = Counter()
    lock = threading.Lock()
    gate = threading.Event()

    def call(i: int) -> int:
        with lock:
            sent[i] += 1
            first = sent[i] == 1
        if first:
            gate.wait(60)
        return i * 10

    holder = Runner(call, store=shared_store(claim_ttl=60), progress=False)
    waiter_store = shared_store(claim_ttl=waiter_ttl)
    outage = Outage(waiter_store)
    waiter = Runner(call, store=waiter_store, progress=False, long_wait_warning_seconds=None)
    holder.schedule(1)
    waiter.schedule(1)
    return holder, waiter, outage, gate, sent


def is_waiting(runner: Runner) -> bool:
    engine = runner._active_engine
    return engine is not None and engine.claims is not None and bool(engine.claims._waiting)


def test_calls_waiting_on_a_store_lost_for_claim_ttl_are_sent_here(
    shared_store: Callable[..., Store],
) -> None:
    """The store can't be read while a call waits on another worker's claim: after the
    waiter's claim_ttl of failures it is sent here, and a StoreWarning says so (a possible
    duplicate, not a hang)."""
    holder, waiter, outage, gate, sent = held_and_waited_for(shared_store, waiter_ttl=0.5)
    held = holder.start()
    wait_for(lambda: sent[1] == 1)
    waiting = waiter.start()
    wait_for(lambda: is_waiting(waiter))
    outage.down = True
    with pytest.warns(StoreWarning, match="for claim_ttl=0.5 s .*may have been sent twice"):
        result = waiting.result(60)
    assert result.results == [10]
    assert not result.outcomes[0].from_store
    assert sent[1] == 2  # sent here, while the holder still sends it
    assert outage.failures >= 2  # it kept trying, then gave up
    gate.set()
    assert held.result(60).results == [10]
    holder.close()
    waiter.close()


def test_calls_waiting_through_a_short_outage_take_the_holders_outcome(
    shared_store: Callable[..., Store],
) -> None:
    """Three failed reads, well within claim_ttl: the waiting call goes on waiting and
    takes the holder's outcome; nothing is sent twice, nothing warned."""
    holder, waiter, outage, gate, sent = held_and_waited_for(shared_store, waiter_ttl=60)
    held = holder.start()
    wait_for(lambda: sent[1] == 1)
    waiting = waiter.start()
    wait_for(lambda: is_waiting(waiter))
    outage.count = 3
    wait_for(lambda: outage.failures == 3)
    gate.set()
    assert held.result(60).results == [10]
    result = waiting.result(60)  # no warning: they are errors here
    assert result.results == [10]
    assert result.outcomes[0].from_store
    assert sent[1] == 1
    holder.close()
    waiter.close()


def test_an_error_of_the_claims_own_ends_the_run_instead_of_waiting_for_ever(
    shared_store: Callable[..., Store],
) -> None:
    """A call waits on another worker's claim, and the look at the store that would end
    its wait fails with an error that is not the store's (a bug): run() raises it. The
    look runs on a timer of the loop, where an escaped error would only be logged, the
    next look never armed, and the call left waiting for ever."""
    holder, waiter, _, gate, sent = held_and_waited_for(shared_store, waiter_ttl=60)
    held = holder.start()
    wait_for(lambda: sent[1] == 1)
    waiting = waiter.start()
    wait_for(lambda: is_waiting(waiter))
    engine = waiter._active_engine
    assert engine is not None and engine.claims is not None

    def broken(keys: object) -> object:
        raise RuntimeError("a bug in the look at the store")

    engine.claims._store.get_many = broken  # type: ignore[method-assign, assignment]
    with pytest.raises(RuntimeError, match="a bug in the look"):
        waiting.result(60)
    gate.set()
    assert held.result(60).results == [10]
    assert sent[1] == 1  # the waiting call was not sent: the run ended
    holder.close()
    waiter.close()


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


# -- holders that ended, and holders that did not -------------------------------------------------

#: A process holding claims: its Runner sends ``count`` calls, each of which blocks (prints
#: ``started i`` first) until a line arrives on stdin; then it finishes and says ``done``.
_HOLDING = textwrap.dedent(
    """
    import sys, threading
    from rate_limited import Runner
    from rate_limited.stores import open_store

    url, count = sys.argv[1], int(sys.argv[2])
    gate, say = threading.Event(), threading.Lock()

    def call(i):
        with say:  # one whole line at a time (print writes the text and its newline apart)
            print(f"started {i}", flush=True)
        gate.wait()
        return i * 10

    runner = Runner(
        call, store=open_store(url, claim_ttl=3600), max_concurrent=count, progress=False,
        long_wait_warning_seconds=None,
    )
    for i in range(count):
        runner.schedule(i)
    handle = runner.start()
    sys.stdin.readline()
    gate.set()
    handle.result()
    runner.close()
    print("done", flush=True)
    """
)


@pytest.fixture
def holding(store_url: str) -> Iterator[Callable[[int], subprocess.Popen[str]]]:
    """Starts a process whose Runner holds the claims of calls 0..count-1 on the store,
    once all of them have started. Killed after the test if still alive."""
    procs: list[subprocess.Popen[str]] = []

    def start(count: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDING, store_url, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
        )
        procs.append(proc)
        assert proc.stdout is not None
        started = {proc.stdout.readline().strip() for _ in range(count)}
        assert started == {f"started {i}" for i in range(count)}, proc.communicate()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


class WaitRecorder:
    """A progress display that keeps what it is told about waits."""

    def __init__(self) -> None:
        self.waits: list[tuple[float, str | None]] = []

    def start(self, stats: object) -> None:
        pass

    def update(self, stats: object) -> None:
        pass

    def waiting(self, stats: object, seconds: float, resource: str | None) -> None:
        self.waits.append((seconds, resource))

    def finish(self, stats: object, interrupted: bool) -> None:
        pass


def counting_runner(
    store_url: str, sent: Counter[int], **options: object
) -> Runner:  # a Runner of the same function as _HOLDING's (same keys), counting its sends
    lock = threading.Lock()

    def call(i: int) -> int:
        with lock:
            sent[i] += 1
        return i * 10

    call.__qualname__ = call.__name__ = "call"
    call.__module__ = "__main__"
    options.setdefault("progress", False)
    return Runner(call, store=open_store(store_url, claim_ttl=3600), **options)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_killed_processes_claims_are_taken_over_at_once(
    store_url: str, holding: Callable[[int], subprocess.Popen[str]]
) -> None:
    """kill -9 of a process sending 4 calls, then a rerun of the job on the same store:
    it takes them over at once. Claims last an hour: waiting for them would time out."""
    proc = holding(4)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    sent: Counter[int] = Counter()
    runner = counting_runner(store_url, sent)
    for i in range(8):
        runner.schedule(i)
    result = runner.run()  # no warning either: nothing waited (warnings are errors here)
    assert result.results == [i * 10 for i in range(8)]
    assert sent == Counter(range(8))  # each sent once, the killed process's 4 included
    assert not any(o.from_store for o in result.outcomes)
    assert runner._active_engine is not None
    assert runner._active_engine.claims is not None
    assert runner._active_engine.claims.taken_over == 4
    runner.close()


@pytest.mark.slow
def test_a_live_processes_claims_are_waited_for_and_said_once(
    store_url: str, holding: Callable[[int], subprocess.Popen[str]]
) -> None:
    proc = holding(4)
    sent: Counter[int] = Counter()
    shown = WaitRecorder()
    runner = counting_runner(store_url, sent, progress=shown, long_wait_warning_seconds=0)
    for i in range(8):
        runner.schedule(i)
    handle = runner.start()
    wait_for(lambda: bool(shown.waits))  # told, after its holder was probed: alive
    engine = runner._active_engine
    assert engine is not None and engine.claims is not None
    assert engine.claims.taken_over == 0
    wait_for(lambda: sent == Counter(range(4, 8)))  # its own; none of the other's
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    with pytest.warns(RateLimitedWarning) as caught:
        result = handle.result(60)
    out, _ = proc.communicate()
    assert out.strip() == "done"
    assert result.results == [i * 10 for i in range(8)]
    assert sent == Counter(range(4, 8))  # the other's 4 were never taken over
    assert [o.from_store for o in result.outcomes] == [True] * 4 + [False] * 4
    assert engine.claims.taken_over == 0
    [warning] = [w for w in caught if issubclass(w.category, RateLimitedWarning)]  # once
    text = str(warning.message)
    assert text.startswith("4 calls are waiting for other workers on the store")
    assert f"4 held by pid {proc.pid} on {HOST} until " in text
    assert "a running process of this machine: taken over as soon as it ends" in text
    assert "claim_ttl=3600 s" in text
    [(seconds, what)] = shown.waits  # once
    assert what == f"4 calls claimed by pid {proc.pid} on {HOST}"
    assert 3000 < seconds <= 3600
    runner.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("holder", "fate"),
    [
        pytest.param(
            "other-host:{pid}:deadbeef:{token}",
            "taken over then if its worker stops renewing them",
            id="another-machine",
        ),
        pytest.param(
            HOST + ":{pid}:deadbeef",
            "written by an older rate_limited, whose end can't be seen here",
            id="older-version-here",
        ),
    ],
)
def test_claims_not_proven_ended_are_waited_for(store_url: str, holder: str, fate: str) -> None:
    """A holder of another machine (though a process of this one with its token ended),
    or an older version's (though its pid is gone): its claims hold until they lapse."""
    from tests.test_holder import kill, spawn_holder

    dead, text = spawn_holder()
    kill(dead)
    forged = holder.format(pid=dead.pid, token=Holder.parse(text).token)
    sent: Counter[int] = Counter()
    shown = WaitRecorder()
    runner = counting_runner(store_url, sent, progress=shown, long_wait_warning_seconds=0)
    calls = [runner.schedule(i) for i in range(3)]
    keys = [call.key for call in calls[:2]]
    assert None not in keys
    other = open_store(store_url, claim_ttl=3600)
    assert other.claim(keys, forged) == dict.fromkeys(keys, "ours")  # type: ignore[arg-type]
    handle = runner.start()
    wait_for(lambda: bool(shown.waits))
    assert sent == Counter([2])
    engine = runner._active_engine
    assert engine is not None and engine.claims is not None
    assert engine.claims.taken_over == 0
    for key, value in zip(keys, (0, 10), strict=True):  # its outcomes arrive
        other.put(StoredOutcome(key=key, status="succeeded", result=value))  # type: ignore[arg-type]
    other.flush()
    with pytest.warns(RateLimitedWarning, match=f"2 held by pid {dead.pid} on ") as caught:
        result = handle.result(60)
    assert fate in str(caught[0].message)
    assert result.results == [0, 10, 20]
    assert sent == Counter([2])
    assert engine.claims.taken_over == 0
    other.clear()
    other.close()
    runner.close()
    directory, token = _lock_directory(), Holder.parse(text).token
    if directory is not None:  # a killed process leaves its lock file
        (directory / str(token)).unlink(missing_ok=True)


def test_waiting_on_another_runner_of_this_process_is_said(
    shared_store: Callable[..., Store],
) -> None:
    started, gate = threading.Event(), threading.Event()

    def call(i: int) -> int:
        started.set()
        gate.wait(30)
        return i

    first = Runner(call, store=shared_store(), progress=False, long_wait_warning_seconds=None)
    shown = WaitRecorder()
    second = Runner(call, store=shared_store(), progress=shown, long_wait_warning_seconds=0)
    first.schedule(1)
    second.schedule(1)
    handle = first.start()
    assert started.wait(30)
    waiting = second.start()
    wait_for(lambda: bool(shown.waits))
    gate.set()
    assert handle.result(30).results == [1]
    with pytest.warns(RateLimitedWarning, match="1 call is waiting .* another Runner of this"):
        assert waiting.result(30).results == [1]
    assert second.last_result is not None and second.last_result.outcomes[0].from_store
    first.close()
    second.close()


@pytest.mark.slow
def test_an_ended_holder_is_taken_over_though_its_pid_lives_again(store_url: str) -> None:
    """The claims of a process that ended, its pid now another live process's (here: this
    test's): taken over at once all the same, with claims that last an hour."""
    from tests.test_holder import kill, spawn_holder

    dead, text = spawn_holder()
    kill(dead)
    reused = f"{HOST}:{os.getpid()}:deadbeef:{Holder.parse(text).token}"
    sent: Counter[int] = Counter()
    runner = counting_runner(store_url, sent)
    calls = [runner.schedule(i) for i in range(3)]
    other = open_store(store_url, claim_ttl=3600)
    keys = [call.key for call in calls[:2]]
    assert other.claim(keys, reused) == dict.fromkeys(keys, "ours")  # type: ignore[arg-type]
    assert runner.run().results == [0, 10, 20]
    assert sent == Counter(range(3))
    engine = runner._active_engine
    assert engine is not None and engine.claims is not None
    assert engine.claims.taken_over == 2
    other.clear()
    other.close()
    runner.close()
