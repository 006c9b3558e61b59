"""``Price``: validated, frozen rates, and the cost formula at them (user prices; the
table's are checked against genai-prices in test_cost.py)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rate_limited import ConfigurationError, Price
from rate_limited.cost import TokenUsage
from tests.pricing import MY_PRICE, PROPERTY, plus, usages


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"input_per_mtok": -1.0}, "input_per_mtok", id="negative"),
        pytest.param({"output_per_mtok": float("nan")}, "output_per_mtok", id="nan"),
        pytest.param({"output_per_mtok": float("inf")}, "output_per_mtok", id="inf"),
        pytest.param({"input_per_mtok": True}, "input_per_mtok", id="bool"),
        pytest.param({"input_per_mtok": "0.15"}, "input_per_mtok", id="string"),
        pytest.param({"input_per_mtok": None}, "input_per_mtok", id="required-none"),
        pytest.param({"cached_input_per_mtok": -0.1}, "cached_input_per_mtok", id="cached"),
        pytest.param({"cache_write_per_mtok": float("nan")}, "cache_write_per_mtok", id="write"),
        pytest.param({"cache_write_1h_per_mtok": "x"}, "cache_write_1h_per_mtok", id="write-1h"),
        pytest.param({"batch": 0.5}, "batch", id="batch-not-a-price"),
        pytest.param({"batch": Price(1, 1, batch=Price(1, 1))}, "batch", id="batch-of-batch"),
        pytest.param({"tiers": 5}, "tiers", id="tiers-not-pairs"),
        pytest.param({"tiers": ((-1, Price(1, 1)),)}, "threshold", id="tier-negative"),
        pytest.param({"tiers": ((10, 2.0),)}, "tier", id="tier-not-a-price"),
        pytest.param({"tiers": ((10, Price(1, 1)), (5, Price(2, 2)))}, "increase", id="tier-order"),
        pytest.param({"tiers": ((10, Price(1, 1, batch=Price(1, 1))),)}, "tier", id="tier-batch"),
    ],
)
def test_price_refuses_what_is_not_a_price(kwargs: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"input_per_mtok": 1.0, "output_per_mtok": 2.0, **kwargs}
    with pytest.raises(ConfigurationError, match=field):
        Price(**values)


def test_price_is_a_frozen_value() -> None:
    price_ = Price(1, Decimal("2.5"), cached_input_per_mtok=0.5)
    assert price_ == Price(1.0, 2.5, cached_input_per_mtok=0.5)
    assert hash(price_) == hash(Price(1.0, 2.5, cached_input_per_mtok=0.5))
    assert isinstance(price_.output_per_mtok, float)
    with pytest.raises(FrozenInstanceError):
        price_.input_per_mtok = 3.0  # type: ignore[misc]
    assert (
        repr(price_) == "Price(input_per_mtok=1.0, output_per_mtok=2.5, cached_input_per_mtok=0.5)"
    )


def test_scaled_halves_every_rate() -> None:
    half = MY_PRICE.scaled(0.5)
    assert half.input_per_mtok == 1.0 and half.cache_write_1h_per_mtok == 2.0
    assert half.tiers[0][1].output_per_mtok == 8.0
    assert half.batch == Price(0.5, 2.0)
    with pytest.raises(ConfigurationError, match="factor"):
        MY_PRICE.scaled(-1)


@PROPERTY
@given(
    rates=st.lists(st.floats(0, 100, allow_nan=False), min_size=5, max_size=5),
    raise_by=st.lists(st.floats(1, 3, allow_nan=False), min_size=5, max_size=5),
    threshold=st.integers(0, 200_000),
    usage=usages(),
    more=usages(max_input=50_000, max_output=5_000),
)
def test_property_user_prices_are_monotone_and_bounded(
    rates: list[float], raise_by: list[float], threshold: int, usage: TokenUsage, more: TokenUsage
) -> None:
    def make(values: list[float]) -> Price:
        return Price(
            values[0],
            values[1],
            cached_input_per_mtok=values[2],
            cache_write_per_mtok=values[3],
            cache_write_1h_per_mtok=values[4],
        )

    tier = make([rate * factor for rate, factor in zip(rates, raise_by, strict=True)])
    user_price = Price(
        rates[0],
        rates[1],
        cached_input_per_mtok=rates[2],
        cache_write_per_mtok=rates[3],
        cache_write_1h_per_mtok=rates[4],
        tiers=((threshold, tier),),
    )
    larger = plus(usage, more)
    assert user_price.cost(larger) >= user_price.cost(usage) * (1 - 1e-12)
    bound = user_price.max_cost(larger.input_tokens, larger.output_tokens)
    assert user_price.cost(usage) <= bound * (1 + 1e-12)
    assert user_price.cost(larger) <= bound * (1 + 1e-12)
