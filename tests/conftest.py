"""Shared fixtures: a rate-limited local server, its clients and rate_limited 0.4's
resource declarations (the scenarios of 0.4's own test suite are ported onto these)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rate_limited.resources import Resource
from rate_limited.testing import MockProvider
from tests.limited_server import LimitedServer

#: Starts a MockProvider with the given options (see the make_provider fixture).
MakeProvider = Callable[..., MockProvider]


@pytest.fixture
def server() -> Iterator[LimitedServer]:
    """A local server allowing 10 requests and 100 points per second (0.4: per 5 s)."""
    with LimitedServer() as running:
        yield running


def dummy_resources(
    num_requests: int = 3,
    num_points: int = 20,
    with_estimation: bool = True,
    time_window_seconds: float = 1,
) -> list[Resource]:
    """The client-side view of the server's limits, as 0.4's tests declare them."""
    estimator = (lambda call: 2 * call.get_argument("how_many")) if with_estimation else None
    return [
        Resource(
            "requests",
            num_requests,
            time_window_seconds=time_window_seconds,
            arguments_usage_extractor=lambda _: 1,
        ),
        Resource(
            name="points",
            quota=num_points,
            time_window_seconds=time_window_seconds,
            results_usage_extractor=lambda _, result: result["used_points"],
            max_results_usage_estimator=estimator,
        ),
    ]


def sync_client(url: str, how_many: int, failure_proba: float = 0.0) -> dict[str, Any]:
    """Calls the server and raises on an HTTP error, like an API client would."""
    response = httpx.get(f"{url}/calculate_things/{how_many}?failure_proba={failure_proba}")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def async_client(url: str, how_many: int, failure_proba: float = 0.0) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{url}/calculate_things/{how_many}?failure_proba={failure_proba}"
        )
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(
    params=[pytest.param(sync_client, id="sync"), pytest.param(async_client, id="async")]
)
def client(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Each test using it runs once with a sync and once with an async client."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_provider() -> Iterator[MakeProvider]:
    """Start MockProviders (fast, fixed-length answers by default); stop them after."""
    started: list[MockProvider] = []

    def make(**options: Any) -> MockProvider:
        options.setdefault("output_tokens", 12)
        provider = MockProvider(**options).start()
        started.append(provider)
        return provider

    yield make
    for provider in started:
        provider.stop()
