"""What the MockProvider's answers would have cost at the providers' list prices.

The mock's own arithmetic over its own request log: each answered request (HTTP 200) is
billed its prompt tokens at the model's input rate and its completion tokens at the
output rate, as OpenAI and Anthropic bill the usage a response reports; a request that
got no answer (a 429, a 5xx, a dropped connection) reports no usage and is not billed.
It never uses the package's price table or cost code, so a test can hold the package's
reported cost against it.

Rates in USD per million tokens, from the providers' pricing pages (standard tier,
December 2026): openai.com/api/pricing, anthropic.com/pricing.

Batch answers are billed at half those rates, as both providers document:

* OpenAI (platform.openai.com/docs/guides/batch): "Lower costs: 50% cost discount
  compared to synchronous APIs";
* Anthropic (docs.anthropic.com/en/docs/build-with-claude/batch-processing, "Pricing"):
  "The Batches API offers significant cost savings. All usage is charged at 50% of the
  standard API prices."

The mock bills a batch's answered requests (HTTP 200) when the batch ends, downloaded or
not, and nothing for the requests that errored or expired (OpenAI's guide, on expired
batches: "You will be charged for tokens consumed from any completed requests"; an
errored request reports no usage).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ._stats import RequestLogEntry

__all__ = ["BATCH_DISCOUNT", "LIST_PRICES", "billed_usd"]

#: The fraction of the list price a batch answer is billed at.
BATCH_DISCOUNT = 0.5

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
    log: Iterable[RequestLogEntry],
    prices: Mapping[str, tuple[float, float]] | None = None,
    batch: Iterable[tuple[str, int, int]] = (),
) -> float:
    """USD the answered requests of ``log`` cost at ``prices`` (default: ``LIST_PRICES``),
    plus the ``batch`` answers ``(model, prompt tokens, completion tokens)`` at
    ``BATCH_DISCOUNT`` of them.

    Raises KeyError naming a model that has no price.
    """
    rates = LIST_PRICES if prices is None else prices

    def cost(model: str, prompt: int, completion: int) -> float:
        if not prompt and not completion:  # no tokens (a file upload, a batch retrieve)
            return 0.0
        if model not in rates:
            raise KeyError(f"the MockProvider has no list price for model {model!r}")
        input_rate, output_rate = rates[model]
        return prompt * input_rate + completion * output_rate

    online = math.fsum(
        cost(e.model, e.prompt_tokens, e.completion_tokens) for e in log if e.status == 200
    )
    batched = math.fsum(cost(*answer) for answer in batch)
    return (online + batched * BATCH_DISCOUNT) / 1_000_000
