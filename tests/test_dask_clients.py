"""rate_limited.dask.per_process: one SDK client per worker process, shared by the partitions
(and threads) it runs, instead of one per partition. On a real LocalCluster of worker
processes: tests/test_readme.py runs the README's Dask block as a notebook would, and counts
one client per worker process."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from rate_limited import _per_process
from rate_limited.dask import PerProcess, per_process
from rate_limited.exceptions import ConfigurationError
from tests.stores.conftest import redis_url  # noqa: F401 - the session's redis-server


class Thing:
    """What a factory makes: counts how many were made, knows whether it was closed."""

    made = 0

    def __init__(self, name: str = "thing") -> None:
        Thing.made += 1
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def things() -> Any:
    """``per_process(Thing)``, closed (and forgotten) at the end of the test."""
    Thing.made = 0
    shared = per_process(Thing, "a thing")
    yield shared
    shared.close()


def test_one_object_per_process_made_on_first_use(things: PerProcess[Thing]) -> None:
    assert Thing.made == 0  # nothing made before it is used
    first = things()
    assert things() is first and first.name == "a thing" and Thing.made == 1


def test_threads_share_the_one_object(things: PerProcess[Thing]) -> None:
    """A worker's threads call it at once: the factory runs once, all get its object."""
    start = threading.Barrier(8)
    got: list[Thing] = []

    def call() -> None:
        start.wait(timeout=30)
        got.append(things())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 8 and all(each is got[0] for each in got)
    assert Thing.made == 1


def test_copies_find_the_same_object_and_two_declarations_never_share(
    things: PerProcess[Thing],
) -> None:
    """What Dask does to it: pickled into each task and unpickled on the worker. Every
    copy finds the one object; another ``per_process`` of the same factory is another."""
    import cloudpickle

    first = things()
    assert pickle.loads(pickle.dumps(things))() is first
    assert cloudpickle.loads(cloudpickle.dumps(things))() is first
    other = per_process(Thing, "a thing")
    try:
        assert other() is not first
    finally:
        other.close()


def test_close_closes_and_the_next_call_makes_a_new_one(things: PerProcess[Thing]) -> None:
    first = things()
    things.close()
    assert first.closed
    second = things()
    assert second is not first and not second.closed and Thing.made == 2
    things.close()
    things.close()  # nothing made here: nothing to do


def test_a_failing_factory_keeps_nothing() -> None:
    calls = []

    def flaky() -> Thing:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no network yet")
        return Thing()

    shared = per_process(flaky)
    with pytest.raises(OSError, match="no network yet"):
        shared()
    try:
        assert isinstance(shared(), Thing) and len(calls) == 2
    finally:
        shared.close()


def test_a_forked_child_starts_with_none(things: PerProcess[Thing]) -> None:
    """After ``fork`` the child makes its own (a client's sockets are the parent's):
    the hook ``os.register_at_fork`` runs in the child, called here."""
    first = things()
    saved = dict(_per_process._objects)
    try:
        _per_process._forget_in_child()
        assert things() is not first
        things.close()
    finally:
        _per_process._objects.update(saved)


def test_an_async_client_is_refused_and_closed() -> None:
    """An AsyncOpenAI serves one event loop; each Runner runs its own."""
    openai = pytest.importorskip("openai")
    made: list[Any] = []

    def async_client() -> Any:
        made.append(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-x"))
        return made[-1]

    shared = per_process(async_client)
    with pytest.raises(ConfigurationError, match=r"async client \(AsyncOpenAI\).*openai\.OpenAI"):
        shared()
    assert made[0].is_closed()
    assert shared.key not in _per_process._objects


def test_bad_factory_and_repr_without_arguments() -> None:
    with pytest.raises(ConfigurationError, match=r"per_process\(openai.OpenAI\)") as bad:
        per_process("sk-a-key-passed-by-mistake")  # type: ignore[arg-type]
    assert "sk-a-key" not in str(bad.value)  # a key passed by mistake is not echoed
    shared = per_process(Thing, "sk-secret-key")
    assert repr(shared) == "per_process(tests.test_dask_clients.Thing, ...)"
    assert "sk-secret" not in repr(shared)


def test_what_is_left_is_closed_when_the_process_exits(tmp_path: Path) -> None:
    code = (
        "from rate_limited.dask import per_process\n"
        "class Client:\n"
        "    def close(self):\n"
        "        print('closed', flush=True)\n"
        "per_process(Client)()\n"
        "print('made', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["made", "closed"]
