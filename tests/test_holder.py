"""Holders of claims: parsed back from the store, and proven ended only by their life lock
(never by a pid: it is reused), in real processes killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rate_limited._holder import (
    HOST,
    Holder,
    _lock_directory,
    _sweep,
    has_ended,
    new_holder,
    process_token,
)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "0123456789abcdef0123456789abcdef"

#: A process that takes its life lock, says its holder, and waits (for stdin to close).
_HOLDING = (
    "import sys\n"
    "from rate_limited._holder import new_holder\n"
    "print(new_holder(), flush=True)\n"
    "sys.stdin.read()\n"
)
#: Another process probing the holder given as its argument: prints True if it has ended.
PROBE = (
    "import sys\n"
    "from rate_limited._holder import Holder, has_ended\n"
    "print(has_ended(Holder.parse(sys.argv[1])))\n"
)


def spawn_holder() -> tuple[subprocess.Popen[str], str]:
    """A live process holding its life lock, and its holder string."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDING],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdout is not None
    holder = proc.stdout.readline().strip()
    assert holder, f"the holder process ended early ({proc.wait()})"
    return proc, holder


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def holders() -> Iterator[Callable[[], tuple[subprocess.Popen[str], str]]]:
    """Starts holder processes; any left alive is killed after the test."""
    started: list[tuple[subprocess.Popen[str], str]] = []

    def start() -> tuple[subprocess.Popen[str], str]:
        proc, holder = spawn_holder()
        started.append((proc, holder))
        return proc, holder

    yield start
    directory = _lock_directory()
    for proc, text in started:
        if proc.poll() is None:
            kill(proc)
        token = Holder.parse(text).token
        if directory is not None and token is not None:  # a killed process leaves its file
            (directory / token).unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"host-a:42:deadbeef:{TOKEN}",
            Holder(f"host-a:42:deadbeef:{TOKEN}", "host-a", 42, TOKEN),
            id="this-version",
        ),
        pytest.param(
            "host-a:42:deadbeef", Holder("host-a:42:deadbeef", "host-a", 42), id="older-version"
        ),
        pytest.param(
            f"a:b:42:deadbeef:{TOKEN}",
            Holder(f"a:b:42:deadbeef:{TOKEN}", "a:b", 42, TOKEN),
            id="colon-in-host",
        ),
        pytest.param("worker-7", Holder("worker-7"), id="not-ours"),
        pytest.param(
            f"h:42:deadbeef:{TOKEN[:-1]}/", Holder(f"h:42:deadbeef:{TOKEN[:-1]}/"), id="bad"
        ),
    ],
)
def test_holders_parse(text: str, expected: Holder) -> None:
    assert Holder.parse(text) == expected


def test_a_new_holder_is_this_process() -> None:
    holder = Holder.parse(new_holder())
    assert (holder.host, holder.pid, holder.token) == (HOST, os.getpid(), process_token())
    assert holder.here
    assert not has_ended(holder)
    assert holder.describe() == f"pid {os.getpid()} on {HOST}"
    assert new_holder() != new_holder()  # one per Runner, one token per process


def test_a_live_holder_has_not_ended_and_a_killed_one_has(
    holders: Callable[[], tuple[subprocess.Popen[str], str]],
) -> None:
    proc, text = holders()
    holder = Holder.parse(text)
    assert holder.pid == proc.pid
    assert not has_ended(holder)
    assert not has_ended(holder)  # a probe leaves a live holder's lock as it was
    kill(proc)
    assert has_ended(holder)
    # the file stays: every other prober (another Runner, another process) proves it too
    assert has_ended(holder)
    assert subprocess.run(
        [sys.executable, "-c", PROBE, text],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    ).stdout.split() == ["True"]


def test_lock_files_of_processes_ended_long_ago_are_swept(
    holders: Callable[[], tuple[subprocess.Popen[str], str]],
) -> None:
    """A lock file over a day old whose process ended goes when a process makes its lock;
    a live one's, however old, and a recent ended one's stay."""
    directory = _lock_directory()
    assert directory is not None
    (old_dead, old_dead_text), (_live, live_text) = holders(), holders()
    recent, recent_text = holders()
    kill(old_dead)
    kill(recent)
    day_ago = time.time() - 2 * 86_400
    paths = {
        t: directory / str(Holder.parse(t).token) for t in (old_dead_text, live_text, recent_text)
    }
    for text in (old_dead_text, live_text):
        os.utime(paths[text], (day_ago, day_ago))
    _sweep(directory)
    assert not paths[old_dead_text].exists()
    assert paths[live_text].exists() and paths[recent_text].exists()
    assert not has_ended(Holder.parse(live_text))


def test_a_reused_pid_does_not_keep_an_ended_holder_alive(
    holders: Callable[[], tuple[subprocess.Popen[str], str]],
) -> None:
    """The pid of an ended holder now names a live process (here: this one): it has
    ended all the same; and a live holder with any pid is alive."""
    dead, dead_text = holders()
    _live, live_text = holders()
    kill(dead)
    dead_token = Holder.parse(dead_text).token
    live_token = Holder.parse(live_text).token
    assert has_ended(Holder.parse(f"{HOST}:{os.getpid()}:deadbeef:{dead_token}"))
    assert not has_ended(Holder.parse(f"{HOST}:{dead.pid}:deadbeef:{live_token}"))


def test_what_cannot_be_proven_ended_is_alive(
    holders: Callable[[], tuple[subprocess.Popen[str], str]],
) -> None:
    proc, text = holders()
    kill(proc)
    token = Holder.parse(text).token
    # another machine of the same token (its file is not there): never probed here
    assert not has_ended(Holder.parse(f"other-host:{proc.pid}:deadbeef:{token}"))
    # an older version's holder of this host whose pid is gone: it has no lock to probe
    assert not has_ended(Holder.parse(f"{HOST}:{proc.pid}:deadbeef"))
    # a token with no lock file here (another machine of the same name, another user)
    assert not has_ended(Holder.parse(f"{HOST}:{proc.pid}:deadbeef:{TOKEN}"))
    assert has_ended(Holder.parse(text))  # while this one has


def test_a_forked_child_has_its_own_token() -> None:
    token = process_token()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, process_token().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_token = pipe.read()
    os.waitpid(pid, 0)
    assert child_token and child_token != token
    assert process_token() == token
    # the child ended, and with it its lock; this process's lock is untouched by that
    assert has_ended(Holder.parse(f"{HOST}:{pid}:deadbeef:{child_token}"))
    assert not has_ended(Holder.parse(new_holder()))
