"""rate_limited 0.4's test scenarios, ported: the same public API, a real local server.

The server (tests/limited_server.py) enforces its own limits, so "no 429 and the points it
saw never exceeded the client's quota" checks the Runner's ledger against an independent
referee. These tests take real time (quota windows of a few seconds), as 0.4's did.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest

from rate_limited.exceptions import ValidationError
from rate_limited.runner import Runner
from tests.conftest import async_client, dummy_resources, sync_client
from tests.limited_server import LimitedServer

MAX_CONCURRENT = 10


def points_seen(results: list[dict[str, Any]]) -> list[float]:
    """For each call, the server's points in use just after admitting it."""
    return [r["used_points"] + r["state_before_check"]["points"] for r in results]


@pytest.mark.parametrize("function", [sync_client, async_client], ids=["sync", "async"])
def test_simple(server: LimitedServer, function: Callable[..., Any]) -> None:
    runner = Runner(function, dummy_resources(), max_concurrent=MAX_CONCURRENT)
    for n in (1, 2, 3):
        runner.schedule(server.url, n)
    results, exceptions = runner.run()
    assert [r["output"] for r in results] == ["x", "xx", "xxx"]
    assert max(points_seen(results)) == 2 * (1 + 2 + 3)  # all admitted at once
    assert exceptions == [[]] * 3


@pytest.mark.parametrize("function", [sync_client, async_client], ids=["sync", "async"])
def test_simple_from_a_coroutine(server: LimitedServer, function: Callable[..., Any]) -> None:
    """The blocking run() inside a running event loop: what a Jupyter cell does."""

    async def cell() -> tuple[list[Any], list[list[BaseException]]]:
        runner = Runner(function, dummy_resources(), max_concurrent=MAX_CONCURRENT)
        for n in (1, 2, 3):
            runner.schedule(server.url, n)
        return runner.run()

    results, exceptions = asyncio.run(cell())
    assert [r["output"] for r in results] == ["x", "xx", "xxx"]
    assert exceptions == [[]] * 3


def test_increasing_payloads(server: LimitedServer, client: Callable[..., Any]) -> None:
    """First the requests quota binds, then the points quota."""
    runner = Runner(client, dummy_resources(), max_concurrent=MAX_CONCURRENT)
    for n in range(1, 8):
        runner.schedule(server.url, n)
    results, exceptions = runner.run()
    assert [r["output"] for r in results] == ["x" * n for n in range(1, 8)]
    assert exceptions == [[]] * 7
    assert 429 not in server.statuses()


def test_unreliable_server(server: LimitedServer, client: Callable[..., Any]) -> None:
    """Half of the answers are 500s: every call still ends with its right result."""
    runner = Runner(
        client,
        dummy_resources(num_requests=10, num_points=100),
        max_concurrent=MAX_CONCURRENT,
        max_retries=10,
        backoff=lambda failures, exc: 0.05,
    )
    for n in range(1, 8):
        runner.schedule(server.url, n, failure_proba=0.5)
    result = runner.run()
    results, exceptions = result
    assert [r["output"] for r in results] == ["x" * n for n in range(1, 8)]
    assert any(exceptions), "with a 50% failure rate some attempts must have failed"
    for outcome in result.outcomes:
        assert outcome.attempts == len(outcome.exceptions) + 1
        assert all(isinstance(e, httpx.HTTPStatusError) for e in outcome.exceptions)


def test_refuses_a_call_larger_than_a_quota(client: Callable[..., Any]) -> None:
    runner = Runner(client, dummy_resources(), max_concurrent=MAX_CONCURRENT)
    with pytest.raises(ValueError, match="exceeds resource quota "):
        runner.schedule("http://127.0.0.1:9", 1000)
    assert runner.scheduled_calls == []


def test_without_estimation_the_points_quota_is_overrun(client: Callable[..., Any]) -> None:
    """Usage known only after the call: all 10 start before any bills its points.

    0.4's 5 s window: the 10 requests must reach the server within one window even on a
    busy machine, for it to see all 20 points at once.
    """
    runner = Runner(
        client,
        dummy_resources(
            num_requests=10, num_points=10, with_estimation=False, time_window_seconds=5
        ),
        max_concurrent=MAX_CONCURRENT,
    )
    with LimitedServer(window=5.0) as server:
        for _ in range(10):
            runner.schedule(server.url, 1)
        results, exceptions = runner.run()
    assert exceptions == [[]] * 10
    assert max(points_seen(results)) == 20


def test_estimation_keeps_within_the_points_quota(
    server: LimitedServer, client: Callable[..., Any]
) -> None:
    """With an estimate reserved up front, the server never sees more than the quota."""
    runner = Runner(
        client,
        dummy_resources(num_requests=10, num_points=10, with_estimation=True),
        max_concurrent=MAX_CONCURRENT,
    )
    for _ in range(10):
        runner.schedule(server.url, 1)
    results, exceptions = runner.run()
    assert [r["output"] for r in results] == ["x"] * 10
    assert exceptions == [[]] * 10
    assert max(points_seen(results)) <= 10


@pytest.mark.parametrize("inside_a_loop", [False, True], ids=["script", "event-loop"])
def test_two_runs_to_completion(
    server: LimitedServer, client: Callable[..., Any], inside_a_loop: bool
) -> None:
    def scenario() -> None:
        runner = Runner(
            client,
            dummy_resources(num_requests=2, num_points=100, time_window_seconds=1),
            max_concurrent=MAX_CONCURRENT,
        )
        for _ in range(4):
            runner.schedule(server.url, 1)
        results, exceptions = runner.run()
        assert [r["output"] for r in results] == ["x"] * 4
        assert exceptions == [[]] * 4
        for _ in range(4):
            runner.schedule(server.url, 2)
        results, exceptions = runner.run()
        assert [r["output"] for r in results] == ["xx"] * 4
        assert exceptions == [[]] * 4

    if inside_a_loop:

        async def cell() -> None:
            scenario()

        asyncio.run(cell())
    else:
        scenario()


@pytest.mark.parametrize("two_validators", [False, True], ids=["one", "list"])
def test_result_validation(server: LimitedServer, two_validators: bool) -> None:
    rng = random.Random(42)

    def random_client(url: str, how_many: int = 2, failure_proba: float = 0.2) -> Any:
        return sync_client(url, rng.randint(1, how_many), failure_proba)

    def has_two_x(result: dict[str, Any]) -> bool:
        return bool(result["output"].count("x") == 2)

    def starts_with_x(result: dict[str, Any]) -> bool:
        return bool(result["output"].startswith("x"))

    validation: Any = [has_two_x, starts_with_x] if two_validators else has_two_x
    # 40% of attempts are valid (20% server errors, then half the values are wrong), so
    # give 20 retries: a call then fails 21 times in a row with probability 0.6**21 ~ 2e-5.
    runner = Runner(
        random_client,
        dummy_resources(num_requests=5, num_points=100),
        validation=validation,
        max_concurrent=5,
        max_retries=20,
        backoff=lambda failures, exc: 0.01,
    )
    for _ in range(5):
        runner.schedule(server.url)
    results, exceptions = runner.run()
    assert [r["output"] for r in results] == ["xx"] * 5
    flat = [e for attempts in exceptions for e in attempts]
    assert any(isinstance(e, ValidationError) for e in flat)
    rejected = next(e for e in flat if isinstance(e, ValidationError))
    assert rejected.value["output"] != "xx" and rejected.call is not None


def test_validation_function_is_04s_name_for_one_validator(server: LimitedServer) -> None:
    seen: list[Any] = []
    runner = Runner(
        sync_client, dummy_resources(), validation_function=lambda r: seen.append(r) or True
    )
    runner.schedule(server.url, 1)
    results, _ = runner.run()
    assert seen == results


@pytest.mark.parametrize(
    ("bind", "schedule_args", "schedule_kwargs"),
    [
        pytest.param(lambda c, url: partial(c, failure_proba=0.0), "url", {}, id="kwarg"),
        pytest.param(lambda c, url: partial(c, url), None, {}, id="positional"),
        pytest.param(
            lambda c, url: partial(c, url=url, failure_proba=0.0),
            None,
            {"how_many": 1},
            id="mixed",
        ),
    ],
)
def test_partial_clients(
    server: LimitedServer,
    client: Callable[..., Any],
    bind: Callable[..., Any],
    schedule_args: str | None,
    schedule_kwargs: dict[str, Any],
) -> None:
    runner = Runner(bind(client, server.url), dummy_resources())
    for _ in range(3):
        if schedule_kwargs:
            runner.schedule(**schedule_kwargs)
        elif schedule_args:
            runner.schedule(server.url, 1)
        else:
            runner.schedule(1)
    results, exceptions = runner.run()
    assert [r["output"] for r in results] == ["x"] * 3
    assert exceptions == [[]] * 3


def test_lambda_clients(server: LimitedServer) -> None:
    """A lambda around a sync client, and one returning a coroutine: both work."""
    runner = Runner(lambda how_many: sync_client(server.url, how_many), dummy_resources())
    async_runner = Runner(lambda how_many: async_client(server.url, how_many), dummy_resources())
    for each in (runner, async_runner):
        for _ in range(3):
            each.schedule(1)
        results, exceptions = each.run()
        assert [r["output"] for r in results] == ["x"] * 3
        assert exceptions == [[]] * 3
