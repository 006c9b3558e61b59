"""``runner.estimate()``: calls, tokens, cost bounds and the least time the quotas allow,
before anything is sent; its table in a notebook and in ``rate-limited demo --estimate``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rate_limited import Budget, Resource, Runner
from rate_limited.apis.openai import ChatCompletions
from rate_limited.testing import FakeClock


async def work(i: int) -> int:
    return i


def test_the_least_time_is_set_by_the_slowest_quota() -> None:
    runner = Runner(
        work,
        [
            Resource("rpm", 10, 60),  # window: 35 calls = 4 windows' worth, 3 waited
            Resource("tokens", 1_000, 60, arguments_usage_extractor=lambda c: 50, refill="bucket"),
        ],
        clock=FakeClock(),
    )
    for i in range(35):
        runner.schedule(i)
    estimate = runner.estimate()
    assert estimate.calls == 35
    # tokens: 1,750 against a bucket of 1,000 refilled 1,000 a minute -> 45 s; rpm: 180 s
    assert estimate.min_seconds == pytest.approx(180.0)
    assert estimate.binding == "rpm"
    assert estimate.prompt_tokens is None and estimate.cost_max is None  # not a preset
    assert "least time" in str(estimate) and "3 min 00 s (set by rpm)" in str(estimate)


def test_partitions_are_counted_apart() -> None:
    per_model = Resource(
        "rpm", 10, 60, partition=lambda call: call.get_argument("model"), refill="bucket"
    )

    async def call(model: str) -> str:
        return model

    runner = Runner(call, [per_model], clock=FakeClock())
    for _ in range(20):
        runner.schedule("a")
    for _ in range(15):
        runner.schedule("b")
    estimate = runner.estimate()
    assert estimate.min_seconds == pytest.approx(60.0)  # model a: 10 over its bucket
    assert estimate.binding == "rpm[a]"


def test_finished_calls_are_not_counted() -> None:
    runner = Runner(
        work,
        budget=Budget(1.0, cost=lambda c, r: 0.1, max_cost=lambda c: 0.2),
        clock=FakeClock(),
        progress=False,
    )
    for i in range(3):
        runner.schedule(i)
    assert runner.estimate().cost_max == pytest.approx(0.6)
    runner.run()
    runner.schedule(4)
    estimate = runner.estimate()
    assert estimate.calls == 1 and estimate.cost_max == pytest.approx(0.2)
    assert estimate.budget_usd == 1.0
    assert estimate.budget_left == pytest.approx(0.7)


def test_a_preset_estimates_tokens_and_costs_without_sending() -> None:
    class NoClient:
        class chat:
            class completions:
                @staticmethod
                def create(**params: Any) -> Any:
                    raise AssertionError("estimate() must not send anything")

    chat = ChatCompletions(NoClient(), requests_per_minute=500, tokens_per_minute=10_000)
    runner = chat.runner(progress=False)
    for i in range(10):
        runner.schedule(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=200
        )
    estimate = runner.estimate()
    assert estimate.max_output_tokens == 2_000
    assert estimate.prompt_tokens is not None and 10 <= estimate.prompt_tokens < 200
    assert estimate.cost_min == pytest.approx(estimate.prompt_tokens * 0.15 / 1e6)
    assert estimate.cost_max == pytest.approx((estimate.prompt_tokens * 0.15 + 2_000 * 0.6) / 1e6)
    # 10 x (prompt + 200) against 10,000 tokens a minute: the bucket holds them all
    assert estimate.min_seconds == 0.0 and estimate.binding is None
    html = estimate._repr_html_()
    assert "<table>" in html and "max output tokens" in html and "2,000" in html


def test_unknown_prices_make_the_cost_unknown() -> None:
    class NoClient:
        class chat:
            class completions:
                create = None

    chat = ChatCompletions(NoClient(), requests_per_minute=500, tokens_per_minute=10_000)
    runner = chat.runner(progress=False)
    runner.schedule(model="made-up-model", messages=[{"role": "user", "content": "x"}])
    with pytest.warns(Warning, match="No price is known for model 'made-up-model'"):
        estimate = runner.estimate()
    assert estimate.cost_max is None and estimate.cost_min is None
    assert "cost max    unknown" in str(estimate) or "unknown" in str(estimate)


@pytest.mark.slow
def test_the_demo_prints_its_estimate_and_sends_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rate_limited", "demo", "--requests", "50", "--estimate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "calls              50" in done.stdout
    assert "max output tokens  7,500" in done.stdout  # max_tokens=150 each
    assert "cost max" in done.stdout and "least time" in done.stdout
    assert "Done after" not in done.stdout
