"""``rate_limited._scheduling``: a call's demand, computed once at ``schedule()``, and shared
by the calls that need the same."""

from __future__ import annotations

from typing import Any

import pytest

from rate_limited import QuotaExceededError, Resource, Runner


def echo(prompt: str, tokens: int = 10, model: Any = "small") -> str:
    return prompt


def resources(partition: bool = False) -> list[Resource]:
    return [
        Resource("requests", 100, time_window_seconds=60, arguments_usage_extractor=lambda c: 1),
        Resource(
            "tokens",
            10_000,
            time_window_seconds=60,
            max_results_usage_estimator=lambda c: c.get_argument("tokens"),
            results_usage_extractor=lambda c, result: len(result),
            partition=(lambda c: c.get_argument("model")) if partition else None,
        ),
    ]


def test_calls_that_need_the_same_share_one_demand() -> None:
    runner = Runner(echo, resources(), progress=False)
    a, b, c = runner.schedule("a"), runner.schedule("b"), runner.schedule("c", tokens=20)
    assert a.demand == ((1.0, 0.0, None), (0.0, 10.0, None))
    assert a.demand is b.demand
    assert c.demand == ((1.0, 0.0, None), (0.0, 20.0, None))
    assert c.demand[0] is a.demand[0]  # the requests entry is shared all the same
    runner.close()


def test_a_partition_key_that_is_not_a_string_is_kept_as_given() -> None:
    """Equal keys of other types (1 and 1.0 and True) are not merged into one object."""
    runner = Runner(echo, resources(partition=True), progress=False)
    one, true = runner.schedule("a", model=1), runner.schedule("b", model=True)
    assert one.demand[1][2] == 1 and type(one.demand[1][2]) is int
    assert type(true.demand[1][2]) is bool
    named = runner.schedule("c", model="large"), runner.schedule("d", model="large")
    assert named[0].demand is named[1].demand
    runner.close()


def test_a_call_larger_than_its_quota_is_refused_at_schedule() -> None:
    runner = Runner(echo, resources(), progress=False)
    with pytest.raises(QuotaExceededError, match="tokens"):
        runner.schedule("a", tokens=20_000)
    runner.close()
