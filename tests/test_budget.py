"""``Budget``: a dollar limit that holds at any concurrency, stops a run with the rest
pending, goes on when raised, alerts, and persists in a store.

Every run here is on a ``FakeClock``; calls ``await asyncio.sleep`` (virtual time).
"""

from __future__ import annotations

import asyncio
import math
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rate_limited import Budget, BudgetWarning, ConfigurationError, Resource, Runner, Status
from rate_limited._spend_books import MemoryBook
from rate_limited.calls import Call
from rate_limited.stores import Store
from rate_limited.stores.redis import RedisStore
from rate_limited.stores.sqlite import SqliteStore
from rate_limited.testing import FakeClock
from tests.stores.conftest import redis_url  # noqa: F401

CONCURRENCY = [pytest.param(1, id="max_concurrent=1"), pytest.param(64, id="max_concurrent=64")]


async def work(i: int, seconds: float = 1.0) -> int:
    await asyncio.sleep(seconds)
    return i


def flat(cost: float, maximum: float, **options: Any) -> Budget:
    """A budget for ``work``: each call costs ``cost`` and reserves ``maximum``."""
    return Budget(cost=lambda call, result: cost, max_cost=lambda call: maximum, **options)


def make_runner(budget: Budget, max_concurrent: int = 64, **options: Any) -> Runner:
    options.setdefault("progress", False)
    return Runner(
        work,
        [Resource("requests", 10_000, 60)],
        budget=budget,
        max_concurrent=max_concurrent,
        clock=FakeClock(),
        **options,
    )


def run_expecting_stop(runner: Runner) -> Any:
    with pytest.warns(BudgetWarning, match="Budget reached") as caught:
        result = runner.run()
    assert len([w for w in caught if "Budget reached" in str(w.message)]) == 1
    return result


# -- stopping at the budget -------------------------------------------------------------------
@pytest.mark.parametrize("max_concurrent", CONCURRENCY)
def test_the_budget_stops_the_run_with_the_rest_pending(max_concurrent: int) -> None:
    runner = make_runner(flat(0.05, 0.1, usd=1.0), max_concurrent)
    for i in range(40):
        runner.schedule(i)
    result = run_expecting_stop(runner)
    # A call starts only while spent + reserved + its 0.1 fit in $1: the last one started
    # at $0.90 spent, so 19 ran, whatever the concurrency.
    assert result.counts() == {"succeeded": 19, "pending": 21}
    assert result.cost == pytest.approx(0.95)
    assert not result.interrupted
    stop = result.budget
    assert stop is not None
    assert (stop.spent, stop.limit, stop.needed, stop.not_started) == (
        pytest.approx(0.95),
        1.0,
        0.1,
        21,
    )
    assert stop.frees_in is None  # a total: it never frees
    assert "21 call(s) did not start" in stop.message
    assert all(not e for e in result.exceptions)  # pending, not failed
    assert result.results[19:] == [None] * 21


@pytest.mark.parametrize("max_concurrent", CONCURRENCY)
def test_raising_the_budget_goes_on(max_concurrent: int) -> None:
    runner = make_runner(flat(0.05, 0.1, usd=1.0), max_concurrent)
    for i in range(40):
        runner.schedule(i)
    run_expecting_stop(runner)
    runner.budget.usd = 5.0  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = runner.run()
    assert result.results == list(range(40))
    assert result.budget is None
    assert result.cost == pytest.approx(2.0)
    assert [o.attempts for o in result.outcomes] == [1] * 40  # nothing ran twice
    runner.schedule(40)  # the batch was complete: a new one starts
    assert runner.run().results == [40]


def test_a_budget_that_admits_nothing_sends_nothing() -> None:
    sent: list[int] = []

    async def tracked(i: int) -> int:
        sent.append(i)
        return i

    runner = Runner(tracked, budget=flat(0.01, 0.5, usd=0.4), clock=FakeClock(), progress=False)
    runner.schedule(1)
    result = run_expecting_stop(runner)
    assert sent == []
    assert result.counts() == {"pending": 1}
    assert result.budget is not None and result.budget.spent == 0


def test_running_calls_finish_when_the_budget_stops() -> None:
    """Admitted calls are never cut short: the run ends when the last one settled."""
    runner = make_runner(flat(0.3, 0.3, usd=1.0))
    for i in range(5):
        runner.schedule(i, seconds=float(10 - i))
    result = run_expecting_stop(runner)
    assert [o.status for o in result.outcomes] == [Status.SUCCEEDED] * 3 + [Status.PENDING] * 2
    assert result.elapsed == pytest.approx(10.0)  # it waited for the slowest running call


def test_settled_calls_free_what_they_reserved_above_their_cost() -> None:
    """Calls in flight hold their maximum; when they settle below it, the next start."""
    runner = make_runner(flat(0.01, 0.25, usd=1.0), max_concurrent=64)
    for i in range(50):
        runner.schedule(i)
    result = runner.run()
    assert result.counts() == {"succeeded": 50}
    assert result.cost == pytest.approx(0.5)
    # at most four reservations of $0.25 fit at once: the 50 calls ran in waves
    started = sorted({o.started_at for o in result.outcomes})
    assert len(started) > 1


# -- the property: spent + reserved <= budget at every event ----------------------------------
class CheckedBook(MemoryBook):
    """A MemoryBook that checks the invariant after every operation."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.events = 0
        self.spends: list[float] = []

    def _add(self, amount: float, now: float) -> None:
        super()._add(amount, now)
        if amount > 0:
            self.spends.append(amount)

    def _check(self) -> None:
        self.events += 1
        spent = math.fsum(self.spends)  # counted apart from the book's running sums
        held = math.fsum(self._held.values())
        assert spent + held <= self.limit * (1 + 1e-9) + 1e-12, (spent, held, self.limit)

    def reserve(self, amount: float, limit: float, window: float, now: float) -> str | None:
        token = super().reserve(amount, limit, window, now)
        self._check()
        return token

    def settle(self, token: str, amount: float, now: float) -> None:
        super().settle(token, amount, now)
        self._check()

    def release(self, token: str) -> None:
        super().release(token)
        self._check()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    usd=st.floats(0.05, 5.0),
    concurrency=st.integers(1, 64),
    calls=st.lists(
        st.tuples(st.floats(0.001, 0.2), st.floats(0.0, 1.0), st.floats(0.0, 3.0)),
        min_size=1,
        max_size=120,
    ),
)
def test_property_spent_plus_reserved_never_exceeds_the_budget(
    usd: float, concurrency: int, calls: list[tuple[float, float, float]]
) -> None:
    """Random maxima, random costs up to them, random durations, up to 64 at once."""

    async def job(index: int) -> int:
        await asyncio.sleep(calls[index][2])
        return index

    budget = Budget(
        usd,
        cost=lambda call, result: calls[result][0] * calls[result][1],
        max_cost=lambda call: calls[call.args[0]][0],
    )
    runner = Runner(
        job, budget=budget, max_concurrent=concurrency, clock=FakeClock(), progress=False
    )
    assert runner._money.spend is not None
    book = runner._money.spend.book = CheckedBook(usd)
    for index in range(len(calls)):
        runner.schedule(index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        result = runner.run()
    assert book.events >= 1
    spent = math.fsum(book.spends)
    assert spent == pytest.approx(result.cost or 0.0, abs=1e-12)
    assert spent <= usd * (1 + 1e-9)
    if result.budget is not None:  # stopped: the head call's maximum did not fit
        assert spent + result.budget.needed > usd
        assert result.counts().get("failed", 0) == 0


# -- failures ---------------------------------------------------------------------------------
class Flaky:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def __call__(self, i: int) -> int:
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return i


class RateLimited(Exception):
    status_code = 429


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        pytest.param(TimeoutError("no answer"), 0.5, id="maybe-billed-keeps-the-maximum"),
        pytest.param(RateLimited("429"), 0.0, id="refused-releases"),
    ],
)
def test_failed_attempts_and_the_budget(error: BaseException, kept: float) -> None:
    runner = Runner(
        Flaky(error),
        budget=flat(0.1, 0.5, usd=10.0),
        clock=FakeClock(),
        progress=False,
        backoff=lambda failures, exc: 0.0,
    )
    runner.schedule(1)
    result = runner.run()
    assert result.results == [1]
    assert result.cost == pytest.approx(0.1)  # what the response said
    assert runner._money.spend is not None
    assert runner._money.spend.state(1e12)[0] == pytest.approx(0.1 + kept)


# -- alerts -----------------------------------------------------------------------------------
def test_alerts_warn_and_call_back_once_per_fraction() -> None:
    seen: list[tuple[float, float, float]] = []
    budget = flat(
        0.1,
        0.1,
        usd=1.0,
        alert_at=(0.8, 0.5),
        on_alert=lambda fraction, spent, limit: seen.append((fraction, spent, limit)),
    )
    runner = make_runner(budget, max_concurrent=1)
    for i in range(9):
        runner.schedule(i)
    with pytest.warns(BudgetWarning, match="Budget alert") as caught:
        runner.run()
    alerts = [str(w.message) for w in caught]
    assert len(alerts) == 2
    assert "alert_at=0.5" in alerts[0] and "alert_at=0.8" in alerts[1]
    assert [(f, round(s, 9), lim) for f, s, lim in seen] == [(0.5, 0.5, 1.0), (0.8, 0.8, 1.0)]


def test_an_alert_callback_that_raises_does_not_stop_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(fraction: float, spent: float, limit: float) -> None:
        raise RuntimeError("pager down")

    runner = make_runner(flat(0.1, 0.1, usd=1.0, alert_at=(0.1,), on_alert=broken))
    runner.schedule(1)
    with pytest.warns(BudgetWarning, match="Budget alert"):
        assert runner.run().results == [1]
    assert "on_alert raised" in caplog.text


# -- rolling windows --------------------------------------------------------------------------
def test_a_rolling_budget_waits_for_room_that_comes_back_soon() -> None:
    """$1 per 10 s: the window frees what was spent 10 s ago, so the run goes on."""
    runner = make_runner(flat(0.25, 0.25, usd=1.0, per=10), max_concurrent=8)
    for i in range(12):
        runner.schedule(i, seconds=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = runner.run()
    assert result.counts() == {"succeeded": 12}
    starts = sorted(o.started_at for o in result.outcomes if o.started_at is not None)
    assert starts[4] - starts[0] >= 10.0  # the fifth waited for the first to leave the window


def test_a_daily_budget_stops_and_says_when_it_frees() -> None:
    runner = make_runner(flat(0.25, 0.25, usd=1.0, per="day"), max_concurrent=8)
    for i in range(6):
        runner.schedule(i)
    result = run_expecting_stop(runner)
    assert result.counts() == {"succeeded": 4, "pending": 2}
    stop = result.budget
    assert stop is not None and stop.per == "per rolling day"
    assert stop.frees_in is not None
    assert 86_400 - 5 < stop.frees_in <= 86_400
    assert "frees enough for it in 24 h 00 min" in stop.message


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"usd": -1}, "usd must be a finite number", id="negative"),
        pytest.param({"usd": "5"}, "usd must be a number", id="string"),
        pytest.param({"usd": 1, "per": "week"}, "per must be None", id="per"),
        pytest.param({"usd": 1, "per": 0}, "per must be None", id="per-zero"),
        pytest.param({"usd": 1, "alert_at": (1.5,)}, "alert_at fraction", id="alert"),
        pytest.param({"usd": 1, "cost": lambda c, r: 1}, "give both", id="cost-only"),
        pytest.param({"usd": 1, "on_alert": 3}, "on_alert must be", id="callback"),
    ],
)
def test_bad_budgets_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Budget(**options)


def test_a_function_that_does_not_price_its_calls_needs_cost_functions() -> None:
    with pytest.raises(ConfigurationError, match="does not price its calls"):
        Runner(work, budget=Budget(usd=1))


def test_a_budget_among_the_resources_is_the_runners_budget() -> None:
    budget = flat(0.1, 0.1, usd=1.0)
    runner = Runner(work, [Resource("rpm", 10, 60), budget], clock=FakeClock(), progress=False)
    assert runner.budget is budget
    assert [r.name for r in runner.resources] == ["rpm"]
    with pytest.raises(ConfigurationError, match="one budget"):
        Runner(work, [budget], budget=flat(0.1, 0.1, usd=2.0))


@pytest.mark.parametrize(
    ("max_cost", "match"),
    [
        pytest.param(lambda call: 1 / 0, "max_cost raised ZeroDivisionError", id="raises"),
        pytest.param(lambda call: -1.0, "finite number of USD", id="negative"),
        pytest.param(lambda call: None, "max_cost gave None", id="none"),
    ],
)
def test_a_maximum_that_cannot_be_read_is_an_error_at_schedule(
    max_cost: Callable[[Call], Any], match: str
) -> None:
    runner = Runner(work, budget=Budget(1.0, cost=lambda c, r: 0.0, max_cost=max_cost))
    with pytest.raises(ConfigurationError, match=match):
        runner.schedule(1)


def test_a_cost_that_cannot_be_read_counts_the_maximum() -> None:
    budget = Budget(1.0, cost=lambda call, result: {}["missing"], max_cost=lambda call: 0.3)
    runner = Runner(work, budget=budget, clock=FakeClock(), progress=False)
    runner.schedule(1)
    with pytest.warns(Warning, match="cost could not be read"):
        result = runner.run()
    assert result.results == [1]
    assert result.outcomes[0].cost is None
    assert "cost of the result could not be read" in str(result.outcomes[0].warnings[0])
    assert runner._money.spend is not None
    assert runner._money.spend.state(1e12)[0] == pytest.approx(0.3)


# -- persistence ------------------------------------------------------------------------------
def open_test_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "runs.db", secret=b"test")
    url = request.getfixturevalue("redis_url")
    return RedisStore(url, namespace=f"budget-test-{uuid.uuid4().hex}", secret=b"test")


@pytest.mark.parametrize("kind", [pytest.param("sqlite", id="sqlite"), "redis"])
def test_a_new_runner_on_the_same_store_goes_on_from_what_was_spent(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = open_test_store(kind, tmp_path, request)
    first = make_runner(flat(0.1, 0.1, usd=1.0), store=store)
    for i in range(6):
        first.schedule(i)
    assert first.run().cost == pytest.approx(0.6)
    first.close()
    # A restarted kernel: a new Runner, other calls, the same store and budget.
    store = open_test_store(kind, tmp_path, request) if kind == "sqlite" else store
    second = make_runner(flat(0.1, 0.1, usd=1.0), store=store)
    for i in range(100, 110):
        second.schedule(i)
    result = run_expecting_stop(second)
    assert result.counts() == {"succeeded": 4, "pending": 6}
    assert result.budget is not None and result.budget.spent == pytest.approx(1.0)
    second.close()
    # Another budget name in the same store starts from nothing.
    third = make_runner(flat(0.1, 0.1, usd=1.0, name="other job"), store=store)
    third.schedule(1000)
    assert third.run().results == [1000]
    third.close()
    store.close()


def sync_work(i: int) -> int:
    return i


@pytest.mark.parametrize("max_concurrent", CONCURRENCY)
def test_a_sync_function_stops_at_the_same_call(max_concurrent: int) -> None:
    runner = Runner(
        sync_work,
        budget=flat(0.05, 0.1, usd=1.0),
        max_concurrent=max_concurrent,
        clock=FakeClock(),
        progress=False,
    )
    for i in range(40):
        runner.schedule(i)
    result = run_expecting_stop(runner)
    assert result.counts() == {"succeeded": 19, "pending": 21}
    assert result.cost == pytest.approx(0.95)
