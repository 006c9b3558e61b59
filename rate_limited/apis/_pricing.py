"""What a preset's calls cost: the bounds a ``Budget`` reserves, the cost of an answer.

``Priced`` (a base of ``Preset``) is the ``rate_limited._spend.CostSource`` of a preset's
calls: a scheduled call's estimated prompt and most output, priced by its ``model`` (and
``service_tier``) in the preset's ``PriceTable``, and a response's cost from the usage it
reports, at the model the response names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rate_limited._token_usage import TokenUsage
from rate_limited.apis._headers import field
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.cost import PriceTable

__all__ = ["Priced"]


class Priced:
    """The prices of a preset's calls (``Preset`` inherits these methods)."""

    #: What each model costs: the preset's ``prices`` first, then genai-prices' table.
    prices: PriceTable

    def _params(self, call: Call) -> Mapping[str, Any]:
        raise NotImplementedError

    def prompt_tokens(self, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def _reserved_output(self, params: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def call_tokens(self, call: Call) -> tuple[int, float]:
        """``(prompt tokens, most output tokens)`` of a scheduled call, as estimated."""
        params = self._params(call)
        return self.prompt_tokens(params), self._reserved_output(params)

    def call_max_cost(
        self, call: Call, *, required: bool = False, batch: bool = False
    ) -> float | None:
        """The most the call can cost in USD: its prompt estimate at the highest rate a
        prompt token can be billed at, its most output at the output rate (``batch``: at
        the Batch API's rates). None if the model's price is not known (a
        ``PriceWarning``); with ``required`` (a budget), a ``ConfigurationError`` naming
        the model and how to give its price."""
        model, tier = self._priced_model(call, required)
        if model is None:
            return None
        if required:
            self.prices.require(model, batch=batch, tier=tier)
        prompt, output = self.call_tokens(call)
        return self.prices.max_cost(
            model,
            prompt,
            output,
            batch=batch,
            cache_write=self._may_write_cache(call.kwargs),
            tier=tier,
        )

    def call_min_cost(self, call: Call) -> float | None:
        """The least the call can cost in USD: its prompt estimate at the input rate, no
        output (None if the model's price is not known)."""
        model, tier = self._priced_model(call, False)
        price = None if model is None else self.prices.price(model, tier=tier)
        if price is None:
            return None
        return price.cost(TokenUsage(input_tokens=self.call_tokens(call)[0]))

    def call_cost(self, call: Call, result: Any) -> float | None:
        """USD the response cost, from the usage it reports, at its model's rates (None,
        without a warning, for a model without a price: see ``warn_unpriced``)."""
        model = field(result, "model")
        if not isinstance(model, str) or not model or self.prices.lookup(model) is None:
            model, _ = self._priced_model(call, False)
        if model is None or self.prices.lookup(model) is None:
            return None
        return self.prices.cost(result, model)

    def warn_unpriced(self, models: list[str]) -> None:
        """One ``PriceWarning`` per model without a price (per preset), in the caller's
        thread: the Runner calls this when ``run()`` returns."""
        for model in models:
            self.prices.price(model)

    def _priced_model(self, call: Call, required: bool) -> tuple[str | None, str | None]:
        model = call.kwargs.get("model")
        if not isinstance(model, str) or not model:
            if required:
                raise ConfigurationError(
                    f"A budget prices each call by its model: schedule {type(self).__name__} "
                    f"calls with model=..., got {call!r}."
                )
            return None, None
        tier = call.kwargs.get("service_tier")
        return model, tier if isinstance(tier, str) and tier != "auto" else None

    def _may_write_cache(self, params: Mapping[str, Any]) -> bool:
        """Whether the request may be billed prompt-cache writes (above the input rate).
        OpenAI caches prompts by itself, so by default: yes (where genai-prices has a
        write rate above the input's, it bounds the prompt)."""
        return True
