"""A Budget over batch runs: reserved per batch at the batch price, settled at the answers'
cost, never reserved twice for one batch; the MockProvider bills batches with its own code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rate_limited import Budget, BudgetWarning
from rate_limited.testing import FakeClock, MockProvider
from tests.batch.test_runner import Interrupt, batch_runner, chat, schedule


def most(runner: object) -> float:
    """The sum of the scheduled calls' maxima at the batch price."""
    preset = runner.preset  # type: ignore[attr-defined]
    calls = runner.scheduled_calls  # type: ignore[attr-defined]
    return math.fsum(preset.call_max_cost(c, required=True, batch=True) for c in calls)


def test_the_mock_bills_batch_answers_at_half_the_online_price(
    provider: MockProvider, clock: FakeClock
) -> None:
    runner = batch_runner(chat(provider), clock)
    schedule(runner, 50)
    batched = runner.run()
    billed = provider.billed_usd()
    assert billed > 0
    assert batched.cost == pytest.approx(billed)  # type: ignore[attr-defined]
    provider.reset_stats()
    online = chat(provider).runner(progress=False)
    schedule(online, 50)
    online.run()
    assert provider.billed_usd() == pytest.approx(2 * billed)


def test_a_budget_smaller_than_the_job_stops_submitting_with_the_rest_pending(
    provider: MockProvider, clock: FakeClock
) -> None:
    budget = Budget(usd=1.0)
    runner = batch_runner(chat(provider), clock, max_requests=40, budget=budget)
    schedule(runner, 100)
    budget.usd = 0.3 * most(runner)
    with pytest.warns(BudgetWarning, match="Budget reached"):
        first = runner.run()
    counts = first.counts()
    assert first.budget is not None
    assert 0 < counts["succeeded"] < 100
    assert counts["pending"] == first.budget.not_started == 100 - counts["succeeded"]
    # The provider's own bill stays within the budget, and matches what the run reports.
    assert provider.billed_usd() <= budget.usd
    assert first.cost == pytest.approx(provider.billed_usd())  # type: ignore[attr-defined]
    # Raising the budget goes on, and nothing is sent twice.
    budget.usd = 1.0
    second = runner.run()
    assert second.counts() == {"succeeded": 100}
    assert second.budget is None
    assert provider.batch_stats().requests_submitted == 100
    assert provider.billed_usd() <= budget.usd
    runner.close()


def test_a_budget_too_small_for_one_request_submits_nothing(
    provider: MockProvider, clock: FakeClock
) -> None:
    budget = Budget(usd=1e-12)
    runner = batch_runner(chat(provider), clock, budget=budget)
    schedule(runner, 10)
    with pytest.warns(BudgetWarning):
        result = runner.run()
    assert result.counts() == {"pending": 10}
    assert result.budget is not None and result.budget.needed > 0
    assert provider.batch_stats().batches_created == {}
    runner.close()


@pytest.mark.parametrize(
    "fresh", [pytest.param(False, id="same-runner"), pytest.param(True, id="new-process")]
)
def test_a_resumed_run_does_not_reserve_its_batches_twice(
    provider: MockProvider, clock: FakeClock, tmp_path: Path, fresh: bool
) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    options = {"store": store, "max_requests": 40}
    runner = batch_runner(
        chat(provider), clock, budget=Budget(usd=1.0), sleep=Interrupt(clock, 2), **options
    )
    schedule(runner, 100)
    assert runner.run().interrupted
    spent, held = runner._budget.state()  # type: ignore[union-attr]
    assert spent == 0 and held == pytest.approx(most(runner))  # three batches held
    if fresh:
        runner.close()
        runner = batch_runner(chat(provider), clock, budget=Budget(usd=1.0), **options)
        schedule(runner, 100)
    else:
        runner.sleep = clock.advance
    result = runner.run()
    assert result.counts() == {"succeeded": 100}
    spent, held = runner._budget.state()  # type: ignore[union-attr]
    assert held == 0  # a second reservation would still be held
    assert spent == pytest.approx(provider.billed_usd())
    assert spent == pytest.approx(result.cost)  # type: ignore[attr-defined]
    runner.close()
