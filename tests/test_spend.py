"""Cost everywhere a user looks: ``Outcome.cost``, ``RunResult.cost``, ``cost_usd`` in
``to_pandas()`` and ``apply()``, the tqdm postfix; prices of a preset (``prices=``), and
what happens with a model that has none."""

from __future__ import annotations

import io
import pickle
from typing import Any

import openai
import pandas as pd
import pytest

from rate_limited import Budget, ConfigurationError, Price, PriceWarning, Runner
from rate_limited.apis.openai import ChatCompletions
from rate_limited.testing import FakeClock, MockProvider
from tests.conftest import MakeProvider

LIMITS = {"requests_per_minute": 100_000, "tokens_per_minute": 10_000_000}


@pytest.fixture
def provider(make_provider: MakeProvider) -> MockProvider:
    return make_provider(rpm=100_000, tpm=10_000_000)


@pytest.fixture
def client(provider: MockProvider) -> Any:
    made = openai.OpenAI(base_url=provider.base_url, api_key="test", timeout=10.0)
    yield made
    made.close()


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


def test_every_outcome_says_what_it_cost(provider: MockProvider, client: Any) -> None:
    runner = ChatCompletions(client, **LIMITS).runner(progress=False)
    for i in range(8):
        runner.schedule(model="gpt-4o-mini", messages=ask(i), max_tokens=30)
    result = runner.run()
    costs = [o.cost for o in result.outcomes]
    usage = [r.usage for r in result.results]
    assert costs == [
        pytest.approx((u.prompt_tokens * 0.15 + u.completion_tokens * 0.6) / 1e6) for u in usage
    ]
    assert result.cost == pytest.approx(sum(costs))
    assert result.cost == pytest.approx(provider.billed_usd())
    frame = result.to_pandas()
    assert list(frame["cost_usd"]) == pytest.approx(costs)
    assert set(frame["model"]) == {"gpt-4o-mini"}
    assert "$" in repr(result)
    again = pickle.loads(pickle.dumps(result))
    assert again.cost == pytest.approx(result.cost)


def test_apply_has_a_cost_column(client: Any) -> None:
    runner = ChatCompletions(client, **LIMITS).runner(progress=False)
    frame = pd.DataFrame({"q": ["a", "b", "c"]}, index=["x", "y", "z"])
    out = runner.apply(
        frame,
        lambda row: {"model": "gpt-4o-mini", "messages": ask(row.q), "max_tokens": 20},
    )
    assert list(out.index) == ["x", "y", "z"]
    assert (out["cost_usd"] > 0).all()


def test_prices_given_to_the_preset_come_first(provider: MockProvider, client: Any) -> None:
    chat = ChatCompletions(
        client, **LIMITS, prices={"gpt-4o-mini": Price(input_per_mtok=1, output_per_mtok=2)}
    )
    runner = chat.runner(progress=False)
    runner.schedule(model="gpt-4o-mini", messages=ask(1), max_tokens=10)
    result = runner.run()
    usage = result.results[0].usage
    assert result.cost == pytest.approx((usage.prompt_tokens + 2 * usage.completion_tokens) / 1e6)


def test_a_model_without_a_price_costs_none_with_one_warning(client: Any) -> None:
    runner = ChatCompletions(client, **LIMITS).runner(progress=False)
    for i in range(5):
        runner.schedule(model="house-model-7", messages=ask(i), max_tokens=10)
    with pytest.warns(PriceWarning, match="'house-model-7'") as caught:
        result = runner.run()
    assert len(caught) == 1  # one per model, not one per call
    assert [o.cost for o in result.outcomes] == [None] * 5
    assert result.cost is None
    assert "cost_usd" not in result.to_pandas().columns
    for i in range(3):  # the preset warned already: not again
        runner.schedule(model="house-model-7", messages=ask(i), max_tokens=10)
    runner.run()


def test_a_budget_needs_the_price_at_schedule(client: Any) -> None:
    runner = ChatCompletions(client, **LIMITS).runner(budget=Budget(usd=1), progress=False)
    with pytest.raises(ConfigurationError, match=r"No price is known for model 'house-model-7'"):
        runner.schedule(model="house-model-7", messages=ask(1), max_tokens=10)
    priced = ChatCompletions(
        client, **LIMITS, prices={"house-model-7": Price(input_per_mtok=1, output_per_mtok=1)}
    ).runner(budget=Budget(usd=1), progress=False)
    priced.schedule(model="house-model-7", messages=ask(1), max_tokens=10)
    assert priced.run().cost is not None


def test_the_tqdm_bar_shows_the_cost(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.auto

    buffer = io.StringIO()
    real = tqdm.auto.tqdm

    def to_buffer(*args: Any, **kwargs: Any) -> Any:
        return real(*args, file=buffer, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", to_buffer)
    runner = ChatCompletions(client, **LIMITS).runner(progress=True)
    for i in range(4):
        runner.schedule(model="gpt-4o-mini", messages=ask(i), max_tokens=10)
    result = runner.run()
    assert result.cost is not None
    assert "cost=$" in buffer.getvalue()


async def echo(i: int) -> int:
    return i


def test_a_runner_that_does_not_price_has_no_cost() -> None:
    runner = Runner(echo, clock=FakeClock(), progress=False)
    runner.schedule(1)
    result = runner.run()
    assert result.outcomes[0].cost is None and result.cost is None
    assert "cost_usd" not in result.to_pandas().columns
