"""Fixtures for the store tests: a real redis-server on 127.0.0.1, stores of every backend,
and a fake wall clock so TTL tests take no real time."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rate_limited.stores import MemoryStore, RedisStore, SqliteStore, Store

SECRET = b"test-secret"


class FakeClock:
    """Wall-clock epoch seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis_server() -> tuple[subprocess.Popen[bytes], int]:
    """A new redis-server (no persistence) on a free port of 127.0.0.1, answering pings;
    skips the test if redis-server is not installed (fails it in CI)."""
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not installed but CI is set: the Redis store tests "
                "must run in CI (apt-get install -y redis-server)"
            )
        pytest.skip(
            "redis-server is not installed (apt-get install -y redis-server); "
            "in CI (CI set) this is a failure instead"
        )
    for _ in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        process = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline and not _ping(port):
            time.sleep(0.02)
        if process.poll() is None and _ping(port):
            return process, port
        process.kill()
        process.wait()
    pytest.fail("could not start redis-server on a free port of 127.0.0.1")


def stop_redis_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a throwaway redis-server (no persistence), killed after the session.

    ``RATE_LIMITED_TEST_REDIS_URL`` (set by .ci/run, which starts one) is used instead.
    """
    given = os.environ.get("RATE_LIMITED_TEST_REDIS_URL")
    if given:
        yield given
        return
    process, port = start_redis_server()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis_server(process)


@dataclasses.dataclass
class Backend:
    """Opens stores of one kind; every store it opens on one test shares one location."""

    name: str
    opener: Callable[..., Store]
    durable: bool
    #: What open_store takes to reach the same store (from another process too).
    spec: str = "memory://"
    opened: list[Store] = dataclasses.field(default_factory=list)

    def open(self, **options: Any) -> Store:
        options.setdefault("secret", SECRET)
        store = self.opener(**options)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()


def _make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if name == "memory":

        def memory(**options: Any) -> Store:
            allowed = {k: v for k, v in options.items() if k in ("ttl", "clock")}
            return MemoryStore(**allowed)

        return Backend(name, memory, durable=False)
    if name == "sqlite":
        path = tmp_path / "runs.db"
        return Backend(
            name, lambda **options: SqliteStore(path, **options), durable=True, spec=str(path)
        )
    url = request.getfixturevalue("redis_url")
    namespace = uuid.uuid4().hex
    return Backend(
        name,
        lambda **options: RedisStore(url, namespace=namespace, **options),
        durable=True,
        spec=f"{url}?prefix={namespace}",
    )


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis"),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend in turn."""
    made = _make_backend(request.param, request, tmp_path)
    yield made
    made.close_all()


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), pytest.param("redis", id="redis")])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backends that keep records beyond their process: SQLite and Redis."""
    made = _make_backend(request.param, request, tmp_path)
    yield made
    made.close_all()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
