"""Shared fixtures: a rate-limited local server, its clients and rate_limited 0.4's
resource declarations (the scenarios of 0.4's own test suite are ported onto these)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rate_limited.resources import Resource
from rate_limited.testing import MockProvider
from tests.limited_server import LimitedServer
from tests.shared import CLIENTS

#: Starts a MockProvider with the given options (see the make_provider fixture).
MakeProvider = Callable[..., MockProvider]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests (seconds to a minute of real time each: processes, kernels,
    buckets refilling) come first, the rest in file order after them. The xdist workers
    take the next test as they finish one (``--dist load --maxschedchunk 1``), so the
    long tests spread over them at the start and the short ones fill in around them: no
    long test starts last and holds the run while the other workers idle. (Every worker
    collects the same order: the sort is stable and depends on the markers alone.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


#: One TLS context for every AsyncClient the async client makes: building one loads the
#: CA bundle, tens of milliseconds that block the loop (over BLOCKING_SECONDS on a loaded
#: machine, a BlockingCallWarning), and the local server is plain HTTP anyway.
_TLS = ssl.create_default_context()


async def async_client(url: str, how_many: int, failure_proba: float = 0.0) -> dict[str, Any]:
    async with httpx.AsyncClient(verify=_TLS) as client:
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


@pytest.fixture(autouse=True)
def _blocking_threshold(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine warns (BlockingCallWarning, an error here) when one step of an async call
    holds the loop longer than ``BLOCKING_SECONDS`` (0.1 s) of real time. On a loaded
    machine a process descheduled mid-step crosses that with nothing blocking, so the
    suite raises it to 2 s: a wall-clock threshold must not decide a test. The tests of the
    warning itself (marked ``loop_blocking``) keep the real one."""
    if request.node.get_closest_marker("loop_blocking") is None:
        from rate_limited import _loopwatch

        monkeypatch.setattr(_loopwatch, "BLOCKING_SECONDS", 2.0)


class AsyncioWatchdog(logging.Handler):
    """Collects what asyncio reports about errors nobody saw: a task whose exception was
    never retrieved, a task destroyed while pending, a callback that raised."""

    SIGNS = (
        "exception was never retrieved",
        "Task was destroyed but it is pending",
        "Exception in callback",
        "Unhandled error in exception handler",
    )

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(sign in message for sign in self.SIGNS):
            error = record.exc_info[1] if record.exc_info else None
            self.reports.append(f"{message} ({error!r})" if error else message)


#: ``RATE_LIMITED_TEST_GC_EACH=1``: collect after every test, so that a socket, file or
#: loop a test left open (in a reference cycle) is reported by that test, not by whichever
#: later one the collector happens to run in. Slow: for hunting a leak, not for CI.
GC_EACH = os.environ.get("RATE_LIMITED_TEST_GC_EACH") == "1"


def _where_opened(caught: warnings.WarningMessage) -> str:
    """The warning's text and, when tracemalloc traces (``PYTHONTRACEMALLOC=25`` names
    the test's line), where the object left open was made."""
    traceback = tracemalloc.get_object_traceback(caught.source) if caught.source else None
    if traceback is None:
        return str(caught.message)
    return f"{caught.message}, made at:\n" + "\n".join(traceback.format())


def _collect_reporting_leaks(where: str) -> None:
    """Collect garbage; fail naming what was left open (a ResourceWarning) and where."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaks = [_where_opened(w) for w in caught if issubclass(w.category, ResourceWarning)]
    if leaks:
        pytest.fail(
            f"{where} left open (found by a garbage collection):\n  "
            + "\n  ".join(leaks)
            + ("" if GC_EACH else "\nRun with RATE_LIMITED_TEST_GC_EACH=1 to find the test.")
        )


@pytest.fixture(scope="session")
def _asyncio_reports() -> Iterator[AsyncioWatchdog]:
    watchdog = AsyncioWatchdog()
    logger = logging.getLogger("asyncio")
    logger.addHandler(watchdog)
    try:
        yield watchdog
        # The last dead tasks, also those kept in reference cycles.
        _collect_reporting_leaks("Tests of this worker")
    finally:
        logger.removeHandler(watchdog)
    if watchdog.reports:
        pytest.fail("asyncio reported errors nobody retrieved:\n" + "\n".join(watchdog.reports))


@pytest.fixture(autouse=True)
def _close_the_loop_nest_asyncio_leaves() -> Iterator[None]:
    """Once a test ran a Runner with ``event_loop="current"`` (or inside a running loop),
    nest_asyncio's patch makes ``asyncio.run`` run on the thread's current loop, which it
    creates and never closes: close it after each test, or a later test's garbage
    collection reports it (an unraisable ResourceWarning, an error in that test)."""
    yield
    policy = asyncio.get_event_loop_policy()
    loop = getattr(getattr(policy, "_local", None), "_loop", None)
    if loop is not None and not loop.is_running() and not loop.is_closed():
        loop.close()
        policy.set_event_loop(None)
    if GC_EACH:
        _collect_reporting_leaks("This test")


@pytest.fixture(autouse=True)
def _close_registered_clients() -> Iterator[None]:
    """Close the SDK clients the test registered (``tests.shared.closed_after_test``)."""
    yield
    while CLIENTS:
        CLIENTS.pop().close()


@pytest.fixture(autouse=True)
def asyncio_watchdog(_asyncio_reports: AsyncioWatchdog) -> Iterator[AsyncioWatchdog]:
    """Every test fails if asyncio reports an error nobody retrieved (the engine must end
    a call or the run with every error it meets, never drop one in a dead task). A dead
    task reports when it is freed: at once, unless it sits in a reference cycle; those are
    collected, and reported, at the end of the session (collecting after every test would
    push the survivors into the oldest generation, whose automatic collections then stall
    timing-sensitive tests)."""
    yield _asyncio_reports
    reports, _asyncio_reports.reports = _asyncio_reports.reports, []
    if reports:
        pytest.fail("asyncio reported errors nobody retrieved:\n" + "\n".join(reports))
