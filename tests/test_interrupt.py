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
from collections.abc import Callable
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

    # Calls 0-2 return at once; the later ones wait for the first run() to have returned
    # (the Ctrl-C), so the test interrupts when 3..5 are running, whatever the machine's
    # speed: it watches the log, and no call of the first run can end after 0-2.
    first_run_over = threading.Event()

    async def slow_async(i):
        with lock:
            sent.write(f"{i}\\n")
        while i >= 3 and not first_run_over.is_set():
            await asyncio.sleep(0.005)
        return i * 10

    def slow_sync(i):
        with lock:
            sent.write(f"{i}\\n")
        if i >= 3:
            first_run_over.wait(60)
        return i * 10

    def scenario():
        runner = Runner(slow_async if kind == "async" else slow_sync, [],
                        max_concurrent=3, progress=False)
        for i in range(12):
            runner.schedule(i)
        print("started", flush=True)
        first = runner.run()
        first_run_over.set()
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


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds (a child's progress, seen from outside)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.005)


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
    wait_for(lambda: len(log.read_text().split()) >= 6)  # 0-2 finished, 3-5 are running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    sent = [int(line) for line in log.read_text().split()]
    return report, sent


@pytest.mark.parametrize("where", ["script", "asyncio"])
def test_ctrl_c_returns_partial_results_and_a_rerun_finishes(tmp_path: Path, where: str) -> None:
    report, _ = run_and_interrupt(tmp_path, "async", where)
    assert report["interrupted"] is True
    first = report["first_results"]
    assert first[:3] == [0, 10, 20]  # finished before the interrupt
    assert first[3:] == [None] * 9
    statuses = report["first_status"]
    assert statuses[:3] == ["succeeded"] * 3
    assert statuses[6:] == ["pending"] * 6
    assert report["second_interrupted"] is False
    assert report["second_results"] == [i * 10 for i in range(12)]
    assert report["exceptions"] == [0] * 12


@pytest.mark.parametrize("where", ["script", "asyncio"])
def test_coroutines_already_sent_finish_after_ctrl_c_and_are_never_sent_again(
    tmp_path: Path, where: str
) -> None:
    """As with sync calls: a coroutine that was running at the Ctrl-C was paid for, so it
    is not cancelled; it finishes on the Runner's loop and the rerun waits for it."""
    report, sent = run_and_interrupt(tmp_path, "async", where)
    assert report["interrupted"] is True
    assert report["first_status"][3:6] == ["running"] * 3  # sent: they go on
    assert report["second_results"] == [i * 10 for i in range(12)]
    assert report["attempts"] == [1] * 12
    assert sorted(sent) == list(range(12))  # each sent exactly once


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
            # What a script starts with, even where this process was started with SIGINT
            # ignored (as a shell's background job is, or a child of such a process).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            runner = Runner(lambda i: i, [], progress=False)
            runner.schedule(1)
            assert runner.run().results == [1]
            after = signal.getsignal(signal.SIGINT)
            assert after is signal.default_int_handler, f"after run(): {after!r}"
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
    with proc:  # its pipes closed and the child reaped, whatever the test finds
        assert proc.stdout is not None
        started = proc.stdout.readline().strip()
        if started != "started":  # the child ended early: say why
            proc.kill()
            _, err = proc.communicate(timeout=60)
            pytest.fail(
                f"the child printed {started!r}, not 'started' (SIGINT here: "
                f"{signal.getsignal(signal.SIGINT)!r}):\n{err}"
            )
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "KeyboardInterrupt"


# -- a Ctrl-C at any instant of run() ------------------------------------------------------------
EARLY_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, random, signal, sys, threading, time
    from rate_limited import Runner

    kind, trials, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    started = []

    async def slow_async(i):
        started.append(i)
        await asyncio.sleep(0.05)
        return i

    def slow_sync(i):
        started.append(i)
        time.sleep(0.05)
        return i

    entered = threading.Event()
    original_run = Runner.run

    def run(self):  # the instant run() is entered
        entered.set()
        return original_run(self)

    Runner.run = run
    counts = {"stopped": 0, "lost": 0, "escaped": 0, "before_start": 0}
    for trial in range(trials):
        started.clear()
        entered.clear()
        runner = Runner(slow_async if kind == "async" else slow_sync, [], max_concurrent=2,
                        progress=False)
        for i in range(20):
            runner.schedule(i)  # 0.5 s at least if nothing stops it
        delay = rng.uniform(0, 0.005)

        def signal_soon():
            entered.wait()
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)

        sender = threading.Thread(target=signal_soon)
        sender.start()
        try:
            result = runner.run()
            counts["stopped" if result.interrupted else "lost"] += 1
        except KeyboardInterrupt:
            batch_going = runner._running or bool(started)
            counts["escaped" if batch_going else "before_start"] += 1
        sender.join()
        runner.close()
    print(json.dumps(counts), flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_hundred_ctrl_c_in_the_first_5_ms_of_run_are_never_lost_nor_escape(
    tmp_path: Path, kind: str
) -> None:
    """A SIGINT in the first ~2 ms of run() was lost (the run completed, not interrupted)
    3-8 times in 150, or escaped as KeyboardInterrupt, while the batch went on or before it
    started. Now run() owns SIGINT before it does anything else (before it first lets
    another thread run, so no signal can come first), and a stop that reaches the engine
    before the batch does is kept for it: every one of the 100 stops its run."""
    script = tmp_path / "early.py"
    script.write_text(EARLY_CHILD)
    done = subprocess.run(
        [sys.executable, str(script), kind, "100", "8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts == {"stopped": 100, "lost": 0, "escaped": 0, "before_start": 0}


# -- a second Ctrl-C abandons the calls still running ----------------------------------------------
ABANDON_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time, warnings
    from rate_limited import Runner

    kind = sys.argv[1]
    release = threading.Event()

    import rate_limited._loop_thread as loop_thread

    waiting_idle = loop_thread.wait_idle

    def wait_idle(engine, timeout):  # close() waits (its Ctrl-C handler is in place)
        say("waiting")
        return waiting_idle(engine, timeout)

    loop_thread.wait_idle = wait_idle

    printing = threading.Lock()  # one line per call, also from threads at once

    def say(text):
        with printing:
            print(text, flush=True)

    async def stuck_async(i):
        say("call")
        while not release.is_set():
            await asyncio.sleep(0.01)
        return i

    def stuck_sync(i):
        say("call")
        release.wait(60)
        return i

    runner = Runner(stuck_async if kind == "async" else stuck_sync, [], max_concurrent=3,
                    progress=False)
    for i in range(6):
        runner.schedule(i)
    print("started", flush=True)
    result = runner.run()  # first Ctrl-C: returns at once, 3 calls still running
    print(json.dumps([o.status.value for o in result.outcomes]), flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.close(timeout=60)  # second Ctrl-C: stop waiting for them
    print(json.dumps({
        "status": [c.status.value for c in result.calls],
        "warnings": [str(w.message) for w in caught],
    }), flush=True)
    release.set()
    """
)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_second_ctrl_c_abandons_the_calls_still_running_and_says_how_many(
    tmp_path: Path, kind: str
) -> None:
    script = tmp_path / "abandon.py"
    script.write_text(ABANDON_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        assert [proc.stdout.readline().strip() for _ in range(3)] == ["call"] * 3
        proc.send_signal(signal.SIGINT)  # the first 3 calls are running
        first = json.loads(proc.stdout.readline())
        assert first == ["running"] * 3 + ["pending"] * 3
        assert proc.stdout.readline().strip() == "waiting"
        proc.send_signal(signal.SIGINT)  # close() is waiting for them
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["status"] == ["cancelled"] * 3 + ["pending"] * 3
    assert len(report["warnings"]) == 1 and "abandoned 3 call(s)" in report["warnings"][0]
