"""Spend control against the MockProvider, with the real ``openai`` client.

The provider's side of every figure is the MockProvider's own: its request log (its own
token counts) priced at the list prices it carries (``MockProvider.billed_usd``), never
the package's price table or cost code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

from rate_limited import Budget, BudgetWarning, Runner
from rate_limited.apis.openai import ChatCompletions
from rate_limited.testing import MockProvider
from tests.conftest import MakeProvider

CONCURRENCY = [pytest.param(1, id="max_concurrent=1"), pytest.param(64, id="max_concurrent=64")]
LIMITS = {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000}


@pytest.fixture
def provider(make_provider: MakeProvider) -> MockProvider:
    # Answers of varied length (median 40 tokens, capped at max_tokens), no limit in sight.
    return make_provider(
        rpm=1_000_000, tpm=100_000_000, output_tokens=None, median_output_tokens=40
    )


def chat_runner(provider: MockProvider, **options: Any) -> tuple[Runner, openai.OpenAI]:
    client = openai.OpenAI(base_url=provider.base_url, api_key="test", timeout=10.0)
    chat = ChatCompletions(client, **LIMITS)
    options.setdefault("progress", False)
    return chat.runner(**options), client


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}: what is {i} times {i + 1}?"}]


def max_cost_of(runner: Runner) -> float:
    """The largest maximum cost the budget reserves for one of the scheduled calls."""
    maxima = [c._extras.spend.max_cost for c in runner.scheduled_calls]  # type: ignore[union-attr]
    assert all(m is not None for m in maxima)
    return max(maxima)  # type: ignore[type-var]


@pytest.mark.parametrize("max_concurrent", CONCURRENCY)
def test_a_six_tenths_of_a_cent_budget_holds_at_the_provider(
    provider: MockProvider, max_concurrent: int
) -> None:
    runner, client = chat_runner(provider, budget=Budget(usd=0.006), max_concurrent=max_concurrent)
    for i in range(600):
        runner.schedule(model="gpt-4o-mini", messages=question(i), max_tokens=100)
    one_call = max_cost_of(runner)
    with pytest.warns(BudgetWarning, match="Budget reached"):
        result = runner.run()
    billed = provider.billed_usd()
    assert billed <= 0.006
    assert billed >= 0.006 - 2 * one_call
    assert result.cost == pytest.approx(billed, rel=0.02)
    assert result.budget is not None and result.budget.not_started > 0
    counts = result.counts()
    assert counts["succeeded"] == provider.stats().requests  # nothing failed, none lost
    assert counts["pending"] == 600 - counts["succeeded"]
    runner.close()
    client.close()


SECOND_PROCESS = textwrap.dedent(
    """
    import json, sys, warnings
    import openai
    from rate_limited import Budget
    from rate_limited.apis.openai import ChatCompletions

    base_url, store = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=10.0)
    chat = ChatCompletions(client, requests_per_minute=1_000_000,
                           tokens_per_minute=100_000_000)
    runner = chat.runner(budget=Budget(usd=0.006, per="day"), store=store, progress=False)
    for i in range(1000, 1100):
        runner.schedule(model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"question {i}: go on"}],
                        max_tokens=100)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = runner.run()
    print(json.dumps({"counts": result.counts(), "spent": result.budget and result.budget.spent}))
    """
)


@pytest.mark.slow
def test_a_second_process_on_the_same_store_adds_at_most_one_call(
    provider: MockProvider, tmp_path: Path
) -> None:
    store = str(tmp_path / "runs.db")
    runner, client = chat_runner(provider, budget=Budget(usd=0.006, per="day"), store=store)
    for i in range(600):
        runner.schedule(model="gpt-4o-mini", messages=question(i), max_tokens=100)
    one_call = max_cost_of(runner)
    with pytest.warns(BudgetWarning, match="Budget reached"):
        runner.run()
    runner.close()
    client.close()
    before = provider.billed_usd()
    assert 0.006 - 2 * one_call <= before <= 0.006
    done = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, provider.base_url, store],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    added = provider.billed_usd() - before
    assert added <= one_call
    assert report["counts"].get("pending", 0) >= 99  # it saw what the first had spent
    assert report["spent"] >= before * 0.98


def test_the_estimate_bounds_what_a_run_costs(provider: MockProvider) -> None:
    runner, client = chat_runner(provider)
    for i in range(60):
        runner.schedule(model="gpt-4o-mini", messages=question(i), max_tokens=80)
    estimate = runner.estimate()
    assert estimate.calls == 60
    assert estimate.max_output_tokens == 60 * 80
    assert estimate.prompt_tokens is not None and estimate.prompt_tokens > 60 * 10
    assert estimate.cost_min is not None and estimate.cost_max is not None
    result = runner.run()
    assert result.cost is not None
    assert estimate.cost_min <= result.cost <= estimate.cost_max
    assert estimate.cost_min <= provider.billed_usd() <= estimate.cost_max
    runner.close()
    client.close()


def test_escalation_answers_on_the_stronger_model_at_its_price(
    provider: MockProvider,
) -> None:
    def valid(response: Any) -> bool:
        """The cheap model's answers to odd questions fail validation."""
        number = int(response.choices[0].message.content.split()[1].rstrip(":"))
        return response.model != "gpt-4o-mini" or number % 2 == 0

    runner, client = chat_runner(
        provider,
        validation=valid,
        escalate=[{"model": "gpt-4o-mini"}, {"model": "gpt-4o"}],
    )
    for i in range(20):
        runner.schedule(model="gpt-4o-mini", messages=question(i), max_tokens=50)
    result = runner.run()
    assert result.counts() == {"succeeded": 20}
    frame = result.to_pandas()
    assert list(frame["model"]) == ["gpt-4o-mini", "gpt-4o"] * 10
    assert list(frame["attempts"]) == [1, 2] * 10
    # Every attempt at its own model's price: the provider billed the same in total.
    assert result.cost == pytest.approx(provider.billed_usd(), rel=1e-9)
    log = provider.request_log
    assert [e.model for e in log].count("gpt-4o") == 10
    assert frame["cost_usd"].iloc[1] > 10 * frame["cost_usd"].iloc[0] / 2
    # ... and to its own model's quota
    partitions = runner._ledger.partitions(0.0)
    assert {key for (_, key) in partitions} == {"gpt-4o-mini", "gpt-4o"}
    runner.close()
    client.close()


@pytest.mark.parametrize("max_concurrent", CONCURRENCY)
def test_an_anthropic_budget_holds_at_the_provider(
    provider: MockProvider, max_concurrent: int
) -> None:
    import anthropic

    from rate_limited.apis.anthropic import Messages

    client = anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="test", timeout=10.0)
    messages = Messages(
        client,
        requests_per_minute=1_000_000,
        input_tokens_per_minute=100_000_000,
        output_tokens_per_minute=100_000_000,
    )
    runner = messages.runner(budget=Budget(usd=0.02), max_concurrent=max_concurrent, progress=False)
    for i in range(300):
        runner.schedule(model="claude-haiku-4-5", messages=question(i), max_tokens=100)
    one_call = max_cost_of(runner)
    with pytest.warns(BudgetWarning, match="Budget reached"):
        result = runner.run()
    billed = provider.billed_usd()
    assert 0.02 - 2 * one_call <= billed <= 0.02
    assert result.cost == pytest.approx(billed, rel=0.02)
    runner.close()
    client.close()
