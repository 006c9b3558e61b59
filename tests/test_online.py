"""Online calls (``runner.call`` / ``call_sync``) through the batch's quotas, by priority."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from rate_limited import Resource, Runner
from rate_limited.exceptions import ConfigurationError, RunnerClosedError


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Until ``condition()`` holds (a state of another thread; no timing is asserted)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.002)


def slots(count: int) -> Resource:
    """``count`` calls hold the quota while they run, each handing it back when it
    returns."""
    return Resource(
        "slots",
        count,
        3600,
        arguments_usage_extractor=lambda call: 0,
        max_results_usage_estimator=lambda call: 1,
        results_usage_extractor=lambda call, result: 0,
    )


def one_at_a_time() -> Resource:
    """One call holds the quota while it runs, and hands it back when it returns."""
    return slots(1)


class Recorder:
    """A sync function whose batch calls wait for a gate, recording the order of starts."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gate = threading.Event()

    def __call__(self, name: str) -> str:
        self.started.append(name)
        if name.startswith("batch"):
            assert self.gate.wait(30), "the test never opened the gate"
        return name.upper()


def online_waiting(runner: Runner) -> bool:
    online = runner._online
    return online is not None and any(
        head.priority > 0 for head in runner._priorities._waiting.values()
    )


def test_call_and_call_sync_return_values_and_raise_errors() -> None:
    def half(x: int) -> float:
        if x < 0:
            raise ValueError("negative")
        return x / 2

    with Runner(half, [], max_retries=0, progress=False) as runner:
        assert runner.call_sync(4) == 2
        assert asyncio.run(runner.call(6)) == 3
        assert asyncio.run(runner.acall(8)) == 4
        with pytest.raises(ValueError, match="negative"):
            runner.call_sync(-1)
        assert runner.scheduled_calls == []  # online calls are not part of a batch


def test_online_calls_go_ahead_of_the_waiting_batch() -> None:
    record = Recorder()
    runner = Runner(record, [one_at_a_time()], max_concurrent=8, progress=False)
    for i in range(4):
        runner.schedule(f"batch{i}")
    handle = runner.start()
    wait_for(lambda: record.started == ["batch0"], "the batch's first call starts")
    answer: list[str] = []
    caller = threading.Thread(target=lambda: answer.append(runner.call_sync("online")))
    caller.start()
    wait_for(lambda: online_waiting(runner), "the online call waits for the quota")
    record.gate.set()  # batch0 returns and hands back its slot
    caller.join(30)
    assert answer == ["ONLINE"]
    assert handle.result(timeout=30).results == ["BATCH0", "BATCH1", "BATCH2", "BATCH3"]
    assert record.started == ["batch0", "online", "batch1", "batch2", "batch3"]
    runner.close()


@pytest.mark.parametrize("width", [pytest.param(1, id="one"), pytest.param(4, id="four")])
def test_quota_an_async_batch_hands_back_goes_to_every_waiting_online_call_first(
    width: int,
) -> None:
    """An async function's calls hand quota back as they return, which no timer announces.
    The online calls waiting for it must be woken (they once slept for ever: an outranked
    batch did not take the quota and nobody told the online engine), and take all of it
    before the batch: the batch, woken by the first online admission, must still see the
    next online call as the head that goes first."""
    started: list[str] = []
    gate = threading.Event()

    async def record(name: str) -> str:
        started.append(name)
        if name.startswith("batch") and not gate.is_set():
            await asyncio.to_thread(gate.wait, 30)
        return name

    runner = Runner(record, [slots(width)], max_concurrent=2 * width, progress=False)
    answers: list[str] = []
    callers = [
        threading.Thread(target=lambda i=i: answers.append(runner.call_sync(f"online{i}")))
        for i in range(width)
    ]
    try:
        for i in range(2 * width):
            runner.schedule(f"batch{i}")
        handle = runner.start()
        wait_for(lambda: len(started) == width, "the batch's first calls hold every slot")
        for caller in callers:
            caller.start()
        wait_for(
            lambda: (
                runner._online is not None
                and len(runner._online._unfinished) == width
                and online_waiting(runner)
            ),
            "the online calls wait for the quota",
        )
        gate.set()  # the batch's calls return together, handing back every slot
        wait_for(lambda: len(started) == 3 * width, "every call starts")
        online = [f"online{i}" for i in range(width)]
        assert sorted(started[width : 2 * width]) == online, started
        assert handle.result(timeout=30).counts() == {"succeeded": 2 * width}
    finally:
        gate.set()
        for caller in callers:
            caller.join(30)
        runner.close()
    assert sorted(answers) == online


def test_a_cancelled_caller_withdraws_its_call_and_frees_its_reservation() -> None:
    record = Recorder()
    runner = Runner(record, [one_at_a_time()], progress=False)
    runner.schedule("batch0")
    runner.schedule("batch1")
    handle = runner.start()
    wait_for(lambda: record.started == ["batch0"], "the batch's first call starts")

    async def disconnecting_client() -> None:
        task = asyncio.ensure_future(runner.call("online"))
        await asyncio.to_thread(wait_for, lambda: online_waiting(runner), "online waits")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(disconnecting_client())
    wait_for(lambda: not online_waiting(runner), "the call is withdrawn")
    record.gate.set()
    assert handle.result(timeout=30).results == ["BATCH0", "BATCH1"]
    assert record.started == ["batch0", "batch1"]  # the withdrawn call was never sent
    _used, reserved, _quota = runner._ledger.snapshot(0.0)["slots"]
    assert reserved == 0  # nothing is held for the withdrawn call
    runner.close()


def test_priority_orders_a_batch() -> None:
    order: list[str] = []
    runner = Runner(order.append, [], max_concurrent=1, progress=False)
    runner.schedule("a")
    runner.schedule("b", priority=2)
    runner.schedule("c", priority=-1)
    runner.schedule("d")
    runner.schedule("e", priority=2)
    runner.run()
    assert order == ["b", "e", "a", "d", "c"]


def test_a_function_with_its_own_priority_parameter_keeps_it() -> None:
    def ticket(title: str, priority: str = "low") -> str:
        return f"{title}:{priority}"

    with Runner(ticket, [], progress=False) as runner:
        runner.schedule("x", priority="high")
        assert runner.run().results == ["x:high"]
        assert runner.call_sync("y", priority="urgent") == "y:urgent"


def test_bad_priority_is_refused_early() -> None:
    with Runner(lambda x: x, [], progress=False) as runner:
        with pytest.raises(ConfigurationError, match="priority must be an int"):
            runner.schedule(1, priority="high")
        with pytest.raises(ConfigurationError, match="priority must be an int"):
            runner.call_sync(1, priority=1.5)


def test_close_fails_calls_not_sent() -> None:
    record = Recorder()
    runner = Runner(record, [one_at_a_time()], progress=False)
    runner.schedule("batch0")
    runner.start()
    wait_for(lambda: record.started == ["batch0"], "the batch's first call starts")
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            runner.call_sync("online")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_for(lambda: online_waiting(runner), "the online call waits for the quota")
    # The gate opens once the online call has failed: opened earlier, the batch's call
    # would end and free the quota, and the online call could be sent before close().
    closing = threading.Thread(target=runner.close)
    closing.start()
    thread.join(30)
    record.gate.set()  # close() waits for the batch's call, already sent
    closing.join(30)
    assert not closing.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], RunnerClosedError)
    with pytest.raises(RunnerClosedError):
        runner.call_sync("late")


def test_a_budget_counts_online_calls_and_refuses_past_it() -> None:
    from rate_limited import Budget, BudgetExhaustedError

    sent: list[int] = []

    def work(i: int) -> int:
        sent.append(i)
        return i

    budget = Budget(1.0, cost=lambda call, result: 0.4, max_cost=lambda call: 0.4)
    with Runner(work, [], budget=budget, progress=False) as runner:
        assert runner.call_sync(1) == 1
        assert runner.call_sync(2) == 2  # 0.8 spent: 0.4 more would pass the budget
        with pytest.raises(BudgetExhaustedError, match=r"raise budget\.usd"):
            runner.call_sync(3)
        assert sent == [1, 2]
