"""The Runner's loop thread and closing it: ``close()`` during a background run stops the
run, lets the calls already running finish, and leaves a handle that returns."""

from __future__ import annotations

import threading

import pytest

from rate_limited import Runner, RunnerClosedError, Status


def test_close_during_a_background_run_returns_the_partial_result() -> None:
    gate = threading.Event()
    arrivals = threading.Semaphore(0)

    def wait(i: int) -> int:
        arrivals.release()
        gate.wait(10)
        return i

    runner = Runner(wait, [], max_concurrent=2, progress=False)
    for i in range(6):
        runner.schedule(i)
    handle = runner.start()
    for _ in range(2):
        assert arrivals.acquire(timeout=10), "a call never started"

    def open_gate_once_the_run_has_stopped() -> None:
        handle.result(timeout=10)
        gate.set()  # close() waits for the 2 running calls: now they finish

    opener = threading.Thread(target=open_gate_once_the_run_has_stopped)
    opener.start()
    runner.close()
    opener.join(10)
    result = handle.result(timeout=10)  # returns: no hang on a loop that is gone
    assert result.interrupted
    assert [o.status for o in result.outcomes].count(Status.PENDING) == 4
    assert [(c.status, c.result) for c in result.calls[:2]] == [
        (Status.SUCCEEDED, 0),
        (Status.SUCCEEDED, 1),
    ]  # close() kept them
    with pytest.raises(RunnerClosedError):
        runner.run()
