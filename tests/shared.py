"""Helpers of the shared-quota tests (worker processes against one MockProvider),
waiting on another thread or process, and closing the SDK clients a test made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

WORKER = Path(__file__).with_name("shared_worker.py")
ROOT = Path(__file__).resolve().parent.parent


def start_workers(
    base_url: str,
    count: int,
    *,
    workers: int,
    ledger: str = "none",
    store: str = "none",
    rpm: float,
    tpm: float,
    max_tokens: int = 200,
    split: bool = True,
    extra: Sequence[str] = (),
) -> list[subprocess.Popen[str]]:
    """Start ``workers`` processes; ``split``: each takes its share of the ``count`` calls,
    else every one schedules all of them."""
    procs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for offset in range(workers):
        command = [
            sys.executable,
            str(WORKER),
            f"--base-url={base_url}",
            f"--ledger={ledger}",
            f"--store={store}",
            f"--rpm={rpm}",
            f"--tpm={tpm}",
            f"--count={count}",
            f"--max-tokens={max_tokens}",
            f"--offset={offset if split else 0}",
            f"--step={workers if split else 1}",
            *extra,
        ]
        procs.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    return procs


def reports(procs: Sequence[subprocess.Popen[str]], timeout: float = 600) -> list[dict[str, Any]]:
    """Each worker's JSON report (a worker that failed raises with its stderr)."""
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"worker failed ({proc.returncode}):\n{stderr[-4000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Until ``condition()`` holds (a state of another thread or process; no timing is
    asserted): ``timeout`` only bounds a test that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


#: SDK clients (anything with ``close()``) a test made, closed after it by tests/conftest.py
#: (``_close_registered_clients``). An SDK client sits in a reference cycle (its resources
#: point back at it): left open, only the collector frees it, and whether its ``__del__``
#: closes the pooled connection before the socket's own finalizer reports it unclosed is
#: the collector's order (on 3.13 it sometimes is not: an unclosed-socket ResourceWarning
#: at the session's end, which names no test).
CLIENTS: list[Any] = []


def closed_after_test(client: T) -> T:
    """``client``, registered to be closed when the current test ends."""
    CLIENTS.append(client)
    return client
