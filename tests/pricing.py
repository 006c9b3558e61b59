"""What the tests of prices and costs share: a user's Price and Hypothesis strategies."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rate_limited import Price
from rate_limited.cost import TokenUsage

#: Property tests: no deadline (the machine is shared and noisy), enough examples.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: A user's price with every rate, batch rates and a long-context tier.
MY_PRICE = Price(
    2.0,
    8.0,
    cached_input_per_mtok=0.5,
    cache_write_per_mtok=2.5,
    cache_write_1h_per_mtok=4.0,
    batch=Price(1.0, 4.0),
    tiers=((100_000, Price(4.0, 16.0, cached_input_per_mtok=1.0)),),
)


@st.composite
def usages(draw: st.DrawFn, max_input: int = 400_000, max_output: int = 100_000) -> TokenUsage:
    """A valid usage: cache counts within the prompt, one-hour writes within the writes."""
    input_tokens = draw(st.integers(0, max_input))
    cached = draw(st.integers(0, input_tokens))
    written = draw(st.integers(0, input_tokens - cached))
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=draw(st.integers(0, max_output)),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=draw(st.integers(0, written)),
    )


def plus(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    """Both usages' tokens: more of every kind."""
    return TokenUsage(
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        cached_input_tokens=a.cached_input_tokens + b.cached_input_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        cache_write_1h_tokens=a.cache_write_1h_tokens + b.cache_write_1h_tokens,
    )
