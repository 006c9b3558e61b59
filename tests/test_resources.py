"""``Resource``: validated at construction, and 0.4's standalone usage-counter API.

The standalone counter reads ``time.monotonic()`` through ``rate_limited.resources.time``;
the tests replace that module reference with a hand-driven clock, so nothing sleeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

import rate_limited.resources as resources_module
from rate_limited import ConfigurationError, Resource


class HandClock:
    """Stands in for the ``time`` module inside ``rate_limited.resources``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[HandClock]:
    hand = HandClock()
    monkeypatch.setattr(resources_module, "time", hand)
    yield hand


def one(call: Any) -> float:
    return 1


def results(call: Any, result: Any) -> float:
    return 1


# -- validation at construction ----------------------------------------------------------------
GOOD: dict[str, Any] = {"name": "requests", "quota": 10, "time_window_seconds": 60}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"quota": 0}, "quota", id="quota-zero"),
        pytest.param({"quota": -1}, "quota", id="quota-negative"),
        pytest.param({"quota": math.nan}, "quota", id="quota-nan"),
        pytest.param({"quota": math.inf}, "quota", id="quota-inf"),
        pytest.param({"quota": True}, "quota", id="quota-bool"),
        pytest.param({"quota": "10"}, "quota", id="quota-str"),
        pytest.param({"quota": None}, "quota", id="quota-none"),
        pytest.param({"quota": 10**400}, "quota", id="quota-int-too-large-for-a-float"),
        pytest.param({"time_window_seconds": 0}, "time_window_seconds", id="window-zero"),
        pytest.param({"time_window_seconds": -0.5}, "time_window_seconds", id="window-negative"),
        pytest.param({"time_window_seconds": math.nan}, "time_window_seconds", id="window-nan"),
        pytest.param({"time_window_seconds": math.inf}, "time_window_seconds", id="window-inf"),
        pytest.param({"time_window_seconds": False}, "time_window_seconds", id="window-bool"),
        pytest.param({"time_window_seconds": "60"}, "time_window_seconds", id="window-str"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": 5}, "name", id="name-not-a-str"),
        pytest.param(
            {"arguments_usage_extractor": 1},
            "arguments_usage_extractor",
            id="arguments-extractor-not-callable",
        ),
        pytest.param(
            {"results_usage_extractor": "tokens"},
            "results_usage_extractor",
            id="results-extractor-not-callable",
        ),
        pytest.param(
            {"results_usage_extractor": results, "max_results_usage_estimator": 5},
            "max_results_usage_estimator",
            id="estimator-not-callable",
        ),
        pytest.param(
            {"max_results_usage_estimator": one},
            "max_results_usage_estimator",
            id="estimator-without-results-extractor",
        ),
        pytest.param({"refill": "leaky"}, "refill", id="refill-unknown"),
        pytest.param({"refill": None}, "refill", id="refill-none"),
    ],
)
def test_bad_arguments_are_refused_at_construction(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Resource(**{**GOOD, **overrides})
    assert isinstance(caught.value, ValueError)  # 0.4 raised ValueError: still caught
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param(
            {"results_usage_extractor": lambda result: 1},
            "results_usage_extractor(call, result)",
            id="results-extractor-of-one-argument",
        ),
        pytest.param(
            {"arguments_usage_extractor": lambda: 1},
            "arguments_usage_extractor(call)",
            id="arguments-extractor-of-no-argument",
        ),
        pytest.param(
            {"arguments_usage_extractor": lambda call, result: 1},
            "arguments_usage_extractor(call)",
            id="arguments-extractor-of-two-arguments",
        ),
        pytest.param(
            {"results_usage_extractor": results, "max_results_usage_estimator": lambda: 1},
            "max_results_usage_estimator(call)",
            id="estimator-of-no-argument",
        ),
    ],
)
def test_extractor_arity_is_checked_at_construction(overrides: dict[str, Any], named: str) -> None:
    """``results_usage_extractor=lambda result: 1`` was accepted, and every call billed 0."""
    with pytest.raises(ConfigurationError) as caught:
        Resource(**{**GOOD, **overrides})
    assert named in str(caught.value) and "lambda" in str(caught.value)


@pytest.mark.parametrize(
    "extractor",
    [
        pytest.param(lambda *args: 1, id="varargs"),
        pytest.param(lambda call, result, extra=0: 1, id="with-a-default"),
        pytest.param(results, id="function"),
        pytest.param(max, id="builtin"),
    ],
)
def test_extractors_of_a_compatible_arity_are_accepted(extractor: Any) -> None:
    assert Resource("tokens", 10, 60, results_usage_extractor=extractor).results_usage_extractor


def test_a_resource_with_no_extractor_counts_one_per_call() -> None:
    """``Resource("requests_per_minute", quota=5, time_window_seconds=60)`` limited nothing
    (20 calls in 0.01 s); it is a requests quota: one per call."""
    from rate_limited import Runner
    from rate_limited.testing import FakeClock

    async def call(i: int) -> int:
        return i

    rpm = Resource("requests_per_minute", quota=5, time_window_seconds=60)
    runner = Runner(call, [rpm], clock=FakeClock(), progress=False)
    for i in range(20):
        runner.schedule(i)
    starts = [o.started_at for o in runner.run().outcomes]
    assert starts == [60.0 * (i // 5) for i in range(20)]
    # With any extractor given, that one counts (tokens read from the result: no request).
    tokens = Resource("tokens", 5, 60, results_usage_extractor=results)
    assert tokens.arguments_usage_extractor is None


def test_estimator_error_says_what_to_add() -> None:
    with pytest.raises(ConfigurationError, match="results_usage_extractor"):
        Resource("tokens", 100, 60, max_results_usage_estimator=one)


@pytest.mark.parametrize(
    ("quota", "window"),
    [
        pytest.param(1, 0.5, id="int-quota-half-second"),
        pytest.param(2.5, 86400, id="float-quota-one-day"),
        pytest.param(1e-9, 1e-9, id="tiny"),
    ],
)
def test_good_arguments_are_kept(quota: float, window: float) -> None:
    resource = Resource(
        "r",
        quota,
        window,
        arguments_usage_extractor=one,
        results_usage_extractor=results,
        max_results_usage_estimator=one,
        refill="bucket",
    )
    assert resource.quota == quota
    assert resource.time_window_seconds == window
    assert resource.refill == "bucket"
    assert resource.arguments_usage_extractor is one
    assert resource.max_results_usage_estimator is one


def test_int_quota_stays_an_int_and_refill_defaults_to_window() -> None:
    resource = Resource("requests", 10, 60)
    assert resource.quota == 10 and type(resource.quota) is int
    assert resource.refill == "window"
    assert "requests" in repr(resource)


# -- 0.4's standalone counter: window refill ------------------------------------------------
def test_window_counter_uses_and_expires_exactly(clock: HandClock) -> None:
    resource = Resource("requests", 10, 0.5)
    assert resource.get_amount_used() == 0
    assert resource.get_amount_available() == 10
    resource.add_usage(4)
    clock.now += 0.25
    resource.add_usage(3)
    assert resource.get_amount_used() == 7
    assert resource.get_amount_available() == 3
    assert resource.is_available(3)
    assert not resource.is_available(4)
    clock.now += 0.25 - 1e-9  # just before the first usage's window ends
    assert resource.get_amount_used() == 7
    clock.now = 1000.5  # exactly 0.5 s after the first usage (0.4 kept it for a whole second)
    assert resource.get_amount_used() == 3
    clock.now = 1000.75
    assert resource.get_amount_used() == 0
    assert resource.get_amount_available() == 10


def test_window_counter_one_day_window_expires(clock: HandClock) -> None:
    """0.4 compared timedelta.seconds, which wraps at a day: a 1-day window never expired."""
    resource = Resource("daily", 5, 86400)
    resource.add_usage(5)
    clock.now += 86399.5
    assert not resource.is_available(1)
    clock.now += 0.5
    assert resource.get_amount_used() == 0
    assert resource.is_available(5)


def test_reservations_count_against_availability_but_not_usage(clock: HandClock) -> None:
    resource = Resource("tokens", 100, 60)
    resource.add_usage(30)
    resource.reserve_amount(50)
    assert resource.get_amount_used() == 30
    assert resource.get_amount_available() == 20
    assert resource.is_available(20)
    assert not resource.is_available(21)
    resource.remove_reserved(50)
    assert resource.get_amount_available() == 70
    clock.now += 60
    assert resource.get_amount_available() == 100  # the reservation is not on the clock


def test_next_expiration_is_when_the_oldest_usage_expires(clock: HandClock) -> None:
    resource = Resource("requests", 10, 60)
    assert abs(resource.get_next_expiration() - datetime.now()) < timedelta(seconds=1)
    resource.add_usage(1)
    clock.now += 20
    resource.add_usage(1)
    clock.now += 10  # the first usage has 30 s left
    remaining = resource.get_next_expiration() - datetime.now()
    assert timedelta(seconds=29) < remaining <= timedelta(seconds=30)
    clock.now += 30  # the first expired; the second has 20 s left
    remaining = resource.get_next_expiration() - datetime.now()
    assert timedelta(seconds=19) < remaining <= timedelta(seconds=20)


# -- 0.4's standalone counter: bucket refill ------------------------------------------------
def test_bucket_counter_drains_continuously(clock: HandClock) -> None:
    resource = Resource("tokens", 10, 10, refill="bucket")  # drains 1 per second
    resource.add_usage(10)
    assert not resource.is_available(1)
    clock.now += 2.5
    assert resource.get_amount_used() == pytest.approx(7.5)
    assert resource.is_available(2.5)
    assert not resource.is_available(2.6)
    clock.now += 100
    assert resource.get_amount_used() == 0
    assert resource.get_amount_available() == 10


def test_bucket_next_expiration_is_when_the_bucket_is_empty(clock: HandClock) -> None:
    resource = Resource("tokens", 10, 10, refill="bucket")
    resource.add_usage(4)
    remaining = resource.get_next_expiration() - datetime.now()
    assert timedelta(seconds=3) < remaining <= timedelta(seconds=4)


@pytest.mark.parametrize("refill", [pytest.param("window"), pytest.param("bucket")])
@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(-5, id="negative"),
        pytest.param(math.inf, id="inf"),
        pytest.param(math.nan, id="nan"),
    ],
)
def test_negative_or_non_finite_usage_is_refused(
    clock: HandClock, refill: str, amount: float
) -> None:
    resource = Resource("tokens", 10, 10, refill=refill)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount"):
        resource.add_usage(amount)
    assert resource.get_amount_available() == 10


def test_each_resource_counts_on_its_own(clock: HandClock) -> None:
    first, second = Resource("a", 10, 60), Resource("b", 10, 60)
    first.add_usage(10)
    assert second.get_amount_available() == 10
