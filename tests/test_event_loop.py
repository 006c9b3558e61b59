"""``event_loop="current"``: async clients bound to the caller's (a notebook's) loop.

Some async clients belong to the loop they were created on (an aiohttp session refuses to
work elsewhere: "Timeout context manager should be used inside a task"). By default the
engine runs on the Runner's own loop; with ``event_loop="current"`` it runs on the loop
that calls ``run()``, made re-entrant by nest_asyncio.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rate_limited import ConfigurationError, Resource, Runner


class LoopBoundClient:
    """Works only on the loop it was created on, as an aiohttp ClientSession does."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def ask(self, i: int) -> int:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("Timeout context manager should be used inside a task")
        await asyncio.sleep(0.001)
        return i * 10


def test_by_default_a_loop_bound_client_fails_and_current_loop_fixes_it() -> None:
    async def notebook_cell() -> tuple[list[object], list[object]]:
        client = LoopBoundClient()
        own = Runner(client.ask, [], progress=False, max_retries=0)
        current = Runner(client.ask, [], progress=False, max_retries=0, event_loop="current")
        for runner in (own, current):
            for i in range(3):
                runner.schedule(i)
        failed, worked = own.run(), current.run()  # blocking, inside the running loop
        own.close()
        current.close()
        return failed.results, worked.results

    failed, worked = asyncio.run(notebook_cell())
    assert failed == [None] * 3
    assert worked == [0, 10, 20]


def test_start_runs_as_a_task_on_the_current_loop() -> None:
    async def notebook() -> list[object]:
        client = LoopBoundClient()
        runner = Runner(client.ask, [], progress=False, event_loop="current")
        for i in range(5):
            runner.schedule(i)
        handle = runner.start()
        await asyncio.sleep(0.1)  # between cells the loop is idle: the run goes on
        assert handle.done()
        return (await handle).results

    assert asyncio.run(notebook()) == [0, 10, 20, 30, 40]


def test_as_completed_in_a_cell_runs_on_the_current_loop() -> None:
    async def notebook_cell() -> list[int]:
        client = LoopBoundClient()
        runner = Runner(client.ask, [], progress=False, event_loop="current")
        for i in range(5):
            runner.schedule(i)
        values = [outcome.result for outcome in runner.as_completed()]  # a blocking loop
        runner.close()
        return values

    assert sorted(asyncio.run(notebook_cell())) == [0, 10, 20, 30, 40]


def test_without_a_running_loop_it_uses_its_own() -> None:
    async def double(i: int) -> int:
        return 2 * i

    runner = Runner(double, [], progress=False, event_loop="current")
    runner.schedule(4)
    assert runner.run().results == [8]
    runner.close()


def test_event_loop_must_be_own_or_current() -> None:
    with pytest.raises(ConfigurationError, match="event_loop"):
        Runner(print, [], event_loop="notebook")  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_on_the_current_loop_returns_partial_results(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, json
            from rate_limited import Runner

            async def main():
                first_run_over = False

                async def slow(i):  # 0 and 1 end at once; the others after the Ctrl-C
                    print(f"call {i}", flush=True)
                    while i >= 2 and not first_run_over:
                        await asyncio.sleep(0.005)
                    return i
                runner = Runner(slow, [], max_concurrent=2, progress=False,
                                event_loop="current")
                for i in range(8):
                    runner.schedule(i)
                print("started", flush=True)
                first = runner.run()
                first_run_over = True
                second = runner.run()
                print(json.dumps([first.interrupted, first.results, second.results]))

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    calls = [proc.stdout.readline().strip() for _ in range(4)]
    assert sorted(calls) == ["call 0", "call 1", "call 2", "call 3"]  # 2 and 3 are running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    interrupted, first, second = json.loads(out.strip().splitlines()[-1])
    assert interrupted is True
    assert first[:2] == [0, 1] and None in first
    assert second == list(range(8))


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
