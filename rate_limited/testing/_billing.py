"""What the MockProvider's answers would have cost at the providers' list prices.

The mock's own arithmetic over its own request log: each answered request (HTTP 200) is
billed its prompt tokens at the model's input rate and its completion tokens at the
output rate, as OpenAI and Anthropic bill the usage a response reports; a request that
got no answer (a 429, a 5xx, a dropped connection) reports no usage and is not billed.
It never uses the package's price table or cost code, so a test can hold the package's
reported cost against it.

Rates in USD per million tokens, from the providers' pricing pages (standard tier,
December 2026): openai.com/api/pricing, anthropic.com/pricing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._stats import RequestLogEntry

__all__ = ["LIST_PRICES", "billed_usd"]

#: model -> (input, output) USD per million tokens.
LIST_PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "text-embedding-3-small": (0.02, 0.0),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-sonnet-4-5": (3.00, 15.00),
}


def billed_usd(
    log: Iterable[RequestLogEntry], prices: Mapping[str, tuple[float, float]] | None = None
) -> float:
    """USD the answered requests of ``log`` cost at ``prices`` (default: ``LIST_PRICES``).

    Raises KeyError naming a model that has no price.
    """
    rates = LIST_PRICES if prices is None else prices
    total = 0.0
    for entry in log:
        if entry.status != 200:
            continue
        if entry.model not in rates:
            raise KeyError(f"the MockProvider has no list price for model {entry.model!r}")
        input_rate, output_rate = rates[entry.model]
        total += entry.prompt_tokens * input_rate + entry.completion_tokens * output_rate
    return total / 1_000_000
