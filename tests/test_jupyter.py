"""Interrupting a real Jupyter kernel during ``run()`` returns partial results in the cell.

A kernel is started with jupyter_client, a cell runs ``result = runner.run()``, and the
test presses "interrupt kernel" (``interrupt_kernel()``: SIGINT to the kernel process)
while calls are in flight. The cell must end normally (no KeyboardInterrupt traceback)
with ``result.interrupted`` true, and a rerun in the next cell must finish the rest.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

SETUP = textwrap.dedent(
    """
    import asyncio, json
    from rate_limited import Runner

    sent = []
    go = False  # calls 3 and later wait for it: the test sets it after the interrupt

    async def slow(i):
        sent.append(i)
        with open(LOG, "a") as log:  # the test watches it from outside the kernel
            log.write(f"{i}\\n")
        while i >= 3 and not go:
            await asyncio.sleep(0.005)
        return i * 10

    runner = Runner(slow, [], max_concurrent=3, progress=False)
    for i in range(12):
        runner.schedule(i)
    """
)


@pytest.fixture
def kernel() -> Iterator[Any]:
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client: Any, code: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
    """Run a cell; return its reply content and everything it printed."""
    printed: list[str] = []

    def on_output(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            printed.append("\n".join(msg["content"]["traceback"]))

    reply = client.execute_interactive(code, timeout=timeout, output_hook=on_output)
    return reply["content"], "".join(printed)


def test_interrupt_kernel_returns_partial_results_and_rerun_completes(
    kernel: Any, tmp_path: Path
) -> None:
    manager, client = kernel
    log = tmp_path / "sent.log"
    content, printed = execute(client, f"LOG = {str(log)!r}\n{SETUP}")
    assert content["status"] == "ok", printed

    msg_id = client.execute("result = runner.run()")
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text().split()) < 6:  # 0-2 done, 3-5 in flight
        assert time.monotonic() < deadline, "the calls never started"
        time.sleep(0.005)
    manager.interrupt_kernel()
    reply = client.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "ok", reply["content"]  # no KeyboardInterrupt

    content, printed = execute(
        client,
        "print(json.dumps([result.interrupted, result.results, result.counts()]))",
    )
    interrupted, results, counts = json.loads(printed.strip().splitlines()[-1])
    assert interrupted is True
    assert results[:3] == [0, 10, 20]
    assert counts["succeeded"] < 12

    content, printed = execute(
        client,
        "go = True\nagain = runner.run()\n"
        "print(json.dumps([again.interrupted, again.results, sorted(sent)]))",
    )
    interrupted, results, sent = json.loads(printed.strip().splitlines()[-1])
    assert interrupted is False
    assert results == [i * 10 for i in range(12)]
    # Each call was sent once, except the ones cancelled in flight by the interrupt.
    assert sorted(set(sent)) == list(range(12))
    assert len(sent) - 12 <= 3
