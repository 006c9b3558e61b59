"""Regressions found in review: close() during a background run, one ledger across event
loops, duplicate store keys in one batch, and DataFrame reruns."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

import pytest

from rate_limited import Resource, Runner, RunnerClosedError, Status


def test_close_during_a_background_run_returns_the_partial_result() -> None:
    gate = threading.Event()

    def wait(i: int) -> int:
        gate.wait(5)
        return i

    runner = Runner(wait, [], max_concurrent=2, progress=False)
    for i in range(6):
        runner.schedule(i)
    handle = runner.start()
    time.sleep(0.05)
    threading.Timer(0.1, gate.set).start()
    runner.close()
    result = handle.result(timeout=10)  # returns: no hang on a loop that is gone
    assert result.interrupted
    assert [o.status for o in result.outcomes].count(Status.PENDING) >= 4
    with pytest.raises(RunnerClosedError):
        runner.run()


def test_quota_used_on_one_loop_counts_on_another() -> None:
    """event_loop='current' on two loops, then the Runner's own: one ledger throughout."""

    async def echo(i: int) -> int:
        return i

    window = 1.0
    requests = Resource("requests", 2, window, arguments_usage_extractor=lambda call: 1)
    runner = Runner(echo, [requests], progress=False, event_loop="current")
    starts: list[float] = []

    async def batch(offset: int) -> None:
        for i in range(2):
            runner.schedule(offset + i)
        starts.extend(o.started_at or 0.0 for o in runner.run().outcomes)

    asyncio.run(batch(0))
    asyncio.run(batch(2))  # another loop: must wait for the first batch's usage to expire
    for i in range(2):
        runner.schedule(4 + i)
    starts.extend(o.started_at or 0.0 for o in runner.run().outcomes)  # the Runner's own loop
    runner.close()
    # Loop clocks are all time.monotonic(): each pair starts a window after the previous.
    assert starts[2] - starts[0] >= window - 1e-6
    assert starts[4] - starts[2] >= window - 1e-6


def test_duplicate_calls_in_one_batch_are_sent_once_with_a_store() -> None:
    sent: list[int] = []

    def square(x: int) -> int:
        sent.append(x)
        return x * x

    runner = Runner(square, [], store="memory://", progress=False)
    for x in (1, 2, 1, 1, 3):
        runner.schedule(x)
    result = runner.run()
    assert result.results == [1, 4, 1, 1, 9]
    assert sorted(sent) == [1, 2, 3]
    assert result.counts() == {"succeeded": 5}


def test_a_key_shared_by_different_calls_warns(caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(lambda x: x, [], store="memory://", key=lambda call: "same", progress=False)
    runner.schedule(1)
    runner.schedule(2)
    with caplog.at_level(logging.WARNING, logger="rate_limited"):
        result = runner.run()
    assert result.results == [1, 1]
    assert "same store key but different arguments" in caplog.text


def test_rerunning_a_finished_apply_cell_sends_nothing_and_nan_rows_resume() -> None:
    pd = pytest.importorskip("pandas")
    sent: list[str] = []

    def label(text: str, score: float) -> str:
        sent.append(text)
        return f"{text}:{'none' if math.isnan(score) else score}"

    df = pd.DataFrame({"text": ["a", "b", "c"], "score": [1.0, float("nan"), 3.0]})
    runner = Runner(label, [], progress=False)

    def row(r: object) -> dict[str, object]:
        return {"text": r["text"], "score": r["score"]}  # type: ignore[index]

    first = runner.apply(df, row)
    again = runner.apply(df, row)  # the same cell, rerun: NaN rows compare equal
    assert first["result"].tolist() == again["result"].tolist() == ["a:1.0", "b:none", "c:3.0"]
    assert sorted(sent) == ["a", "b", "c"]
