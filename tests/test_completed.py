"""``as_completed()``: outcomes in completion order while the run goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest

from rate_limited import Runner, Status
from rate_limited._sigint import SigintGuard
from rate_limited.testing import FakeClock


def gated(n: int) -> tuple[Runner, threading.Event]:
    """Call 0 returns at once; the others wait for the gate the test opens."""
    gate = threading.Event()

    def work(i: int) -> int:
        if i:
            assert gate.wait(30), "the test never opened the gate"
        return i

    runner = Runner(work, [], max_concurrent=n, progress=False)
    for i in range(n):
        runner.schedule(i)
    return runner, gate


def test_the_first_outcome_arrives_while_the_others_still_run() -> None:
    runner, gate = gated(5)
    seen = []
    for outcome in runner.as_completed():
        if not seen:
            # The other calls wait for this very gate: the first outcome came one call's
            # latency after the start, not at the end of the run.
            assert outcome.index == 0 and outcome.status is Status.SUCCEEDED
            gate.set()
        seen.append(outcome.index)
    assert seen[0] == 0 and sorted(seen) == list(range(5))


def test_async_for_yields_in_completion_order_on_a_fake_clock() -> None:
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    delays = [5.0, 1.0, 3.0, 2.0, 4.0]
    runner = Runner(nap, [], clock=FakeClock(), progress=False)
    for delay in delays:
        runner.schedule(delay)

    async def main() -> list[float]:
        iterator = runner.as_completed()
        values = [outcome.result async for outcome in iterator]
        assert iterator.result is not None and iterator.result.results == delays
        return values

    assert asyncio.run(main()) == sorted(delays)


def test_every_call_once_and_the_result_at_the_end() -> None:
    runner = Runner(lambda i: i * i, [], progress=False)
    for i in range(200):
        runner.schedule(i)
    iterator = runner.as_completed()
    indexes = [o.index for o in iterator]
    assert sorted(indexes) == list(range(200))
    assert iterator.result is not None and not iterator.result.interrupted
    assert iterator.result.results == [i * i for i in range(200)]
    assert runner.scheduled_calls == []  # a complete run: the next batch starts empty
    with pytest.raises(RuntimeError, match="iterated once"):
        list(iterator)


def test_failures_are_outcomes_too() -> None:
    def odd_fails(i: int) -> int:
        if i % 2:
            raise ValueError(f"odd {i}")
        return i

    runner = Runner(odd_fails, [], max_retries=0, progress=False)
    for i in range(6):
        runner.schedule(i)
    statuses = {o.index: o.status for o in runner.as_completed()}
    assert statuses == {i: Status.FAILED if i % 2 else Status.SUCCEEDED for i in range(6)}


@pytest.mark.skipif(os.name == "nt", reason="SIGINT to itself is POSIX")
def test_ctrl_c_stops_the_run_and_a_second_iteration_resumes() -> None:
    runner, gate = gated(6)
    first = runner.as_completed()
    seen = []
    for outcome in first:
        seen.append(outcome.index)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the loop's body: the run stops
    assert seen == [0]
    assert first.result is not None and first.result.interrupted
    gate.set()
    second = runner.as_completed()
    again = [o.index for o in second]
    assert again[0] == 0  # finished before the interrupt: it comes first
    assert sorted(again) == list(range(6))
    assert second.result is not None and second.result.results == list(range(6))
    assert [o.attempts for o in second.result.outcomes] == [1] * 6  # nothing sent twice


def test_break_stops_the_run_it_started() -> None:
    runner, gate = gated(4)
    iterator = runner.as_completed()
    for _ in iterator:
        break
    assert iterator.result is not None and iterator.result.interrupted
    gate.set()
    assert runner.run().results == [0, 1, 2, 3]


def test_an_iteration_ending_during_a_later_run_leaves_sigint_to_that_run() -> None:
    found = signal.getsignal(signal.SIGINT)
    runner, gate = gated(3)
    kept = iter(runner.as_completed())
    assert next(kept).index == 0  # its guard is installed, across the yield
    gate.set()
    with SigintGuard() as later:  # what a run() begun meanwhile installs
        kept.close()  # the iteration ends first (say, collected while that run waits)
        assert signal.getsignal(signal.SIGINT) == later._on_sigint  # still the run's
    assert signal.getsignal(signal.SIGINT) is found  # and no ended guard's afterwards
    runner.close()


def test_a_background_run_is_joined_and_left_going() -> None:
    runner, gate = gated(4)
    handle = runner.start()
    for outcome in runner.as_completed():  # joins the run start() started
        assert outcome.index == 0
        break
    assert not handle.done()  # leaving the loop left the background run going
    gate.set()
    rest = [o.index for o in handle.as_completed()]
    assert rest[0] == 0 and sorted(rest) == [0, 1, 2, 3]  # the finished call comes first
    assert handle.result(timeout=30).results == [0, 1, 2, 3]


def test_stored_outcomes_come_first(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    with Runner(lambda i: i + 1, [], store=store, progress=False) as runner:
        for i in range(3):
            runner.schedule(i)
        runner.run()
    with Runner(lambda i: i + 1, [], store=store, progress=False) as runner:
        for i in range(5):
            runner.schedule(i)
        outcomes = list(runner.as_completed())
    assert [o.from_store for o in outcomes[:3]] == [True] * 3
    assert sorted(o.index for o in outcomes[:3]) == [0, 1, 2]
    assert {o.index: o.result for o in outcomes} == {i: i + 1 for i in range(5)}
