"""Ctrl-C with a real SIGINT: partial results, resume, nothing sent twice.

Each scenario runs in a child process (a script, or a script inside ``asyncio.run``) that
the test interrupts from outside with ``SIGINT`` once some calls have finished, exactly as
a terminal's Ctrl-C would. The child then runs again and prints what happened as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    from rate_limited import Runner, Status

    kind, where, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
    sent = open(log_path, "a", buffering=1)   # one line per time the function really ran
    lock = threading.Lock()

    async def slow_async(i):
        with lock:
            sent.write(f"{i}\\n")
        await asyncio.sleep(0.3)
        return i * 10

    def slow_sync(i):
        with lock:
            sent.write(f"{i}\\n")
        time.sleep(0.3)
        return i * 10

    def scenario():
        runner = Runner(slow_async if kind == "async" else slow_sync, [],
                        max_concurrent=3, progress=False)
        for i in range(12):
            runner.schedule(i)
        print("started", flush=True)
        first = runner.run()
        report = {
            "interrupted": first.interrupted,
            "first_results": first.results,
            "first_status": [o.status.value for o in first.outcomes],
        }
        second = runner.run()
        report.update(
            second_interrupted=second.interrupted,
            second_results=second.results,
            attempts=[o.attempts for o in second.outcomes],
            exceptions=[len(e) for e in second.exceptions],
        )
        print(json.dumps(report), flush=True)

    if where == "asyncio":
        async def main():
            scenario()
        asyncio.run(main())
    else:
        scenario()
    """
)


def run_and_interrupt(tmp_path: Path, kind: str, where: str) -> tuple[dict, list[int]]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "sent.log"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, where, str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.45)  # the first 3 calls finished at 0.3 s, the next 3 are running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    sent = [int(line) for line in log.read_text().split()]
    return report, sent


@pytest.mark.parametrize("where", ["script", "asyncio"])
def test_ctrl_c_returns_partial_results_and_a_rerun_finishes(tmp_path: Path, where: str) -> None:
    report, sent = run_and_interrupt(tmp_path, "async", where)
    assert report["interrupted"] is True
    first = report["first_results"]
    assert first[:3] == [0, 10, 20]  # finished before the interrupt
    assert first[3:] == [None] * 9
    statuses = report["first_status"]
    assert statuses[:3] == ["succeeded"] * 3
    assert statuses[3:6] == ["cancelled"] * 3  # were running: cancelled
    assert statuses[6:] == ["pending"] * 6
    assert report["second_interrupted"] is False
    assert report["second_results"] == [i * 10 for i in range(12)]
    # the cancelled attempts count; nothing failed
    assert report["attempts"] == [1] * 3 + [2] * 3 + [1] * 6
    assert report["exceptions"] == [0] * 12
    assert sorted(sent) == sorted([*range(12), 3, 4, 5])


@pytest.mark.parametrize("where", ["script", "asyncio"])
def test_sync_calls_in_threads_are_never_sent_twice(tmp_path: Path, where: str) -> None:
    report, sent = run_and_interrupt(tmp_path, "sync", where)
    assert report["interrupted"] is True
    assert report["first_status"][:3] == ["succeeded"] * 3
    assert report["first_status"][3:6] == ["running"] * 3  # still in their threads
    assert report["second_results"] == [i * 10 for i in range(12)]
    assert report["attempts"] == [1] * 12
    assert sorted(sent) == list(range(12))  # each sent exactly once


def test_the_previous_sigint_handler_is_back_after_run(tmp_path: Path) -> None:
    """run() borrows SIGINT only while it waits: afterwards Ctrl-C raises as usual."""
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, time
            from rate_limited import Runner
            runner = Runner(lambda i: i, [], progress=False)
            runner.schedule(1)
            assert runner.run().results == [1]
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            try:
                print("started", flush=True)
                time.sleep(30)
                print("not interrupted")
            except KeyboardInterrupt:
                print("KeyboardInterrupt")
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "KeyboardInterrupt"
