"""Background runs: ``runner.start()`` returns a RunHandle at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rate_limited import Runner, Status
from rate_limited.testing import FakeClock


class Gate(threading.Event):
    """Closed until the test opens it; ``arrivals`` counts the calls that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals = threading.Semaphore(0)

    def wait_for_arrivals(self, count: int) -> None:
        for _ in range(count):
            assert self.arrivals.acquire(timeout=10), "a call never reached the gate"


def gated_runner(n: int = 10) -> tuple[Runner, Gate]:
    """Sync calls that block until the test opens the gate: the run can't end early."""
    gate = Gate()

    def wait_for_gate(i: int) -> int:
        gate.arrivals.release()
        gate.wait(10)
        return i

    runner = Runner(wait_for_gate, [], max_concurrent=4, progress=False)
    for i in range(n):
        runner.schedule(i)
    return runner, gate


def test_start_returns_at_once_and_result_waits() -> None:
    runner, gate = gated_runner()
    handle = runner.start()
    assert not handle.done()
    snapshot = handle.snapshot()
    assert snapshot.counts().get("succeeded", 0) == 0 and snapshot.interrupted
    gate.set()
    result = handle.result(timeout=10)
    assert result.results == list(range(10)) and not result.interrupted
    assert handle.done() and handle.result() is result


def test_results_grow_while_the_run_goes_on() -> None:
    """Calls 0-4 end at once, 5-9 once the test has seen the first five done."""
    second_half = threading.Event()

    async def step(i: int) -> int:
        while i >= 5 and not second_half.is_set():
            await asyncio.sleep(0.001)
        return i

    runner = Runner(step, [], max_concurrent=10, progress=False)
    for i in range(10):
        runner.schedule(i)
    handle = runner.start()
    seen = []
    deadline = time.monotonic() + 30
    while not handle.done():
        assert time.monotonic() < deadline, seen[-1:]
        seen.append(handle.snapshot().counts().get("succeeded", 0))
        if seen[-1] == 5:
            second_half.set()
        time.sleep(0.001)
    assert seen == sorted(seen)  # never goes back
    assert 5 in seen  # and was seen part-way
    assert handle.result().counts() == {"succeeded": 10}


def test_stop_returns_partial_results_and_run_resumes() -> None:
    runner, gate = gated_runner()
    handle = runner.start()
    gate.wait_for_arrivals(4)  # 4 calls are in threads, waiting at the gate
    partial = handle.stop(timeout=10)
    gate.set()
    assert partial.interrupted
    statuses = [o.status for o in partial.outcomes]
    assert statuses.count(Status.RUNNING) + statuses.count(Status.SUCCEEDED) == 4
    assert statuses.count(Status.PENDING) == 6
    rest = runner.run()
    assert rest.results == list(range(10)) and not rest.interrupted
    assert [o.attempts for o in rest.outcomes] == [1] * 10  # nothing was sent twice


def test_await_a_handle() -> None:
    async def double(i: int) -> int:
        return 2 * i

    runner = Runner(double, [], progress=False)

    async def main() -> list[int]:
        for i in range(5):
            runner.schedule(i)
        result = await runner.start()
        return result.results

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_a_second_start_while_running_is_refused() -> None:
    runner, gate = gated_runner()
    handle = runner.start()
    with pytest.raises(RuntimeError, match="already running"):
        runner.start()
    gate.set()
    handle.result(timeout=10)


def test_calls_scheduled_during_a_background_run_join_it() -> None:
    runner, gate = gated_runner(4)
    handle = runner.start()
    for i in range(4, 8):
        runner.schedule(i)
    gate.set()
    result = handle.result(timeout=10)
    assert result.results == list(range(8))
    assert [o.attempts for o in result.outcomes] == [1] * 8


def test_result_timeout_leaves_the_run_going() -> None:
    runner, gate = gated_runner(2)
    handle = runner.start()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)
    gate.set()
    assert handle.result(timeout=10).results == [0, 1]


def test_results_is_a_deprecated_name_of_snapshot() -> None:
    """``results()`` read too much like the blocking ``result()``; it still works, and
    says so."""
    runner = Runner(lambda x: x, progress=False, clock=FakeClock())
    runner.schedule(1)
    with pytest.warns(DeprecationWarning, match=r"runner.snapshot\(\)"):
        assert runner.results().results == runner.snapshot().results == [None]
    handle = runner.start()
    handle.result()
    with pytest.warns(DeprecationWarning, match=r"handle.snapshot\(\)") as caught:
        assert handle.results().results == handle.snapshot().results
    assert caught[0].filename == __file__  # the user's line, not the package's
    runner.close()


def test_urgent_warnings_reach_the_caller_while_the_run_goes_on() -> None:
    """A shared ledger that lost its server pauses admission: its warning must not wait
    for the end of the run (which may never come while the server is away)."""
    import concurrent.futures

    from rate_limited import LedgerWarning
    from rate_limited.handle import RunHandle

    future: concurrent.futures.Future[tuple[bool, float]] = concurrent.futures.Future()
    emitted_before_end: list[bool] = []
    pending = [(LedgerWarning, "Lost the shared ledger's Redis")]

    def urgent() -> list[tuple[type[Warning], str]]:
        if pending:
            taken = list(pending)
            pending.clear()
            return taken
        emitted_before_end.append(not future.done())  # the warning went out a tick ago
        future.set_result((False, 1.0))
        return []

    handle = RunHandle(
        future,
        [],
        request_stop=lambda: None,
        finish=lambda calls, interrupted, elapsed: None,  # type: ignore[arg-type,return-value]
        snapshot=lambda: None,  # type: ignore[arg-type,return-value]
        urgent=urgent,
    )
    with pytest.warns(LedgerWarning, match="Lost the shared ledger") as caught:
        handle.result(timeout=30)
    assert emitted_before_end == [True]
    assert caught[0].filename == __file__
