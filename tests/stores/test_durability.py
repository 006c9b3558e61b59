"""A process killed with SIGKILL keeps every record it flushed (and loses only its buffer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import SECRET, Backend

CHILD = textwrap.dedent(
    """
    import sys, time
    from rate_limited.stores import StoredOutcome, open_store

    store = open_store(sys.argv[1], secret=sys.argv[2], flush_size=10_000, flush_interval=3600)
    for i in range(50):
        store.put(StoredOutcome(key=f"done{i}", status="succeeded", result=i, finished_at=1.0))
    store.flush()
    for i in range(5):
        store.put(StoredOutcome(key=f"lost{i}", status="succeeded", result=i, finished_at=1.0))
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_after_flush_keeps_the_flushed_records(durable: Backend) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, durable.spec, SECRET.decode()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            child.kill()
            pytest.fail(f"child failed: {line}{child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    store = durable.open()
    found = store.get_many([f"done{i}" for i in range(50)] + [f"lost{i}" for i in range(5)])
    assert sorted(found) == sorted(f"done{i}" for i in range(50))
    assert [found[f"done{i}"].result for i in range(50)] == list(range(50))
