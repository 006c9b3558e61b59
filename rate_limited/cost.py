"""What a model costs, what a call cost and what a call can cost at most, in USD.

Prices come from the user's ``prices=`` first, then from the table of the ``genai-prices``
package, which ships in its wheel: no price is ever fetched over the network (see
``rate_limited._genai_prices``). ::

    from rate_limited import Price
    from rate_limited.cost import PriceTable, cost, max_cost

    cost(response)                                    # USD, from response.usage
    cost(response, batch=True)                        # at the Batch API's rates
    max_cost("gpt-4o-mini", prompt_tokens=1_200, max_output_tokens=256, n=2)
    table = PriceTable({"my-model": Price(input_per_mtok=0.2, output_per_mtok=0.8)})
    table.cost(response, "my-model")

A cost is computed from the usage the provider reports (``read_usage``: OpenAI chat
completions, Responses, embeddings; Anthropic messages; SDK objects or dicts), with cache
reads, cache writes and long-context tiers at their own rates, and at the rates of the
service tier the response reports (OpenAI's flex and priority, Anthropic's fast mode and
batch results), where genai-prices has them. The most a call can cost,
``max_cost``, prices every prompt token at the highest rate it could be billed at (a
cache write's, unless ``cache_write=False``) and all of ``max_output_tokens * n`` at the
output rate, so that no usage within those bounds costs more: what a spending limit
reserves before sending a call.

A model with no known price costs None, with one ``PriceWarning`` per model per
``PriceTable`` (the module-level functions share one table that lives as long as the
process, so for them it is once per process). Per table, not per process, because tables
differ: a model unknown to one may have a price in another's ``prices=``, and a fresh
``Runner`` with its own table should say again that its costs are incomplete. Where a
price is required (a spending limit can't hold without it), ``PriceTable.require`` raises a
``ConfigurationError`` that names the model and says how to pass its price.

Model names: ``prices=`` keys match exactly, and also the dated snapshots of that name
(``"gpt-4o-mini"`` prices ``gpt-4o-mini-2024-07-18`` and ``gpt-4o-mini-20240718``);
otherwise genai-prices' rules apply (``rate_limited._genai_prices``): e.g.
``claude-3-5-haiku-20241022`` is its ``claude-3-5-haiku-latest``, ``claude-haiku-4-5`` and
``claude-haiku-4-5-20251001`` its ``claude-haiku-4-5``. A table resolves each name once,
at its first lookup (prices that genai-prices dates take effect in a new table).
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rate_limited._price import Price
from rate_limited._token_usage import TokenUsage, field, read_usage
from rate_limited.exceptions import ConfigurationError, PriceWarning

__all__ = [
    "Price",
    "PriceTable",
    "TokenUsage",
    "cost",
    "max_cost",
    "price",
    "read_usage",
]

#: A dated snapshot suffix: ``-2024-07-18`` or ``-20241022``.
_SNAPSHOT = re.compile(r"^(?P<name>.+)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
#: Service tiers billed at the standard rates.
_STANDARD_TIERS = (None, "default", "standard", "auto")
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True, slots=True)
class _Known:
    """One model name as a table resolved it."""

    price: Price | None
    #: Where the price comes from, or why there is none.
    source: str


class PriceTable:
    """Prices of models: ``prices`` (USD per million tokens) first, then genai-prices'.

    Thread-safe. Each model name is resolved once (per service tier); an unknown one, or
    one without batch rates used in batch, is warned about once per table, with a
    ``PriceWarning``. A ``prices=`` entry is the model's price in every service tier.
    """

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        if prices is None:
            prices = {}
        if not isinstance(prices, Mapping):
            raise ConfigurationError(
                f"prices must be a mapping of model name to Price, got {type(prices).__name__}."
            )
        for model, value in prices.items():
            if not isinstance(model, str) or not model:
                raise ConfigurationError(f"prices: model names must be strings, got {model!r}.")
            if not isinstance(value, Price):
                raise ConfigurationError(
                    f"prices[{model!r}] must be a Price(input_per_mtok=..., "
                    f"output_per_mtok=...), got {value!r}."
                )
        self._prices: dict[str, Price] = dict(prices)
        self._known: dict[tuple[str, str | None], _Known] = {}
        self._warned: set[tuple[str, bool]] = set()
        self._lock = threading.Lock()

    # -- lookups ----------------------------------------------------------------------------
    def price(self, model: str, *, tier: str | None = None) -> Price | None:
        """The model's prices (with its batch rates when known); None, and one
        ``PriceWarning``, if no price is known for it.

        ``tier``: a service tier's rates where genai-prices has them (OpenAI's "flex",
        "priority", "fast"; Anthropic's "fast" mode); None or "default": standard.
        """
        known = self._resolve(model, tier)
        if known.price is None:
            self._warn(model, batch=False, message=_unknown(model, known.source))
        return known.price

    def lookup(self, model: str, *, tier: str | None = None) -> Price | None:
        """``price`` without the warning: for code that reports unknown models itself
        (a Runner prices responses on its own thread, and warns in the caller's)."""
        return self._resolve(model, tier).price

    def require(self, model: str, *, batch: bool = False, tier: str | None = None) -> Price:
        """The model's prices; a ``ConfigurationError`` naming the model and saying how to
        pass them if none are known (or no batch rates, with ``batch``).

        For what can't run without a price, such as a spending limit, at ``schedule()``.
        """
        known = self._resolve(model, tier)
        if known.price is None:
            raise ConfigurationError(_unknown(model, known.source, required=True))
        if batch and known.price.batch is None:
            raise ConfigurationError(_no_batch(model, required=True))
        return known.price

    def source(self, model: str) -> str:
        """Where the model's price comes from ("prices=", or genai-prices' provider and
        model id), or why there is none."""
        return self._resolve(model, None).source

    # -- costs ------------------------------------------------------------------------------
    def cost(
        self,
        response: Any,
        model: str | None = None,
        *,
        batch: bool = False,
        tier: str | None = None,
    ) -> float | None:
        """The cost in USD of a response (or of its ``usage``), from the usage it reports.

        ``model`` defaults to the response's ``model``. ``batch``: at the Batch API's
        rates (also when the response says so: Anthropic's ``usage.service_tier ==
        "batch"``). ``tier`` defaults to the service tier the response reports (OpenAI's
        ``service_tier``, Anthropic's ``usage.speed``). None if the model's price is not
        known (one ``PriceWarning``). Raises ValueError if there is no usage to read
        (see ``read_usage``).
        """
        usage = read_usage(response)
        if model is None:
            model = _response_model(response)
        reported_tier, reported_batch = _reported_tier(response)
        rates = self._rates(model, batch or reported_batch, reported_tier if tier is None else tier)
        return None if rates is None else rates.cost(usage)

    def max_cost(
        self,
        model: str,
        prompt_tokens: float,
        max_output_tokens: float,
        n: int = 1,
        *,
        batch: bool = False,
        cache_write: bool = True,
        tier: str | None = None,
    ) -> float | None:
        """The most a call can cost in USD: ``prompt_tokens`` at the highest rate a prompt
        token can be billed at, plus ``max_output_tokens * n`` at the output rate, at the
        highest long-context tier the prompt reaches.

        ``cache_write=False``: the request can't write the prompt cache (an Anthropic
        request without ``cache_control``), so the cache-write rates, above the input
        rate, need not be counted. ``tier``: the service tier the request asks for
        (OpenAI's ``service_tier``, Anthropic's ``speed``). None if the model's price is
        not known (one ``PriceWarning``).
        """
        _check_tokens(prompt_tokens, "prompt_tokens")
        _check_tokens(max_output_tokens, "max_output_tokens")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"max_cost: n must be an int >= 1, got {n!r}.")
        rates = self._rates(model, batch, tier)
        if rates is None:
            return None
        return rates.max_cost(prompt_tokens, max_output_tokens * n, cache_write=cache_write)

    # -- internals --------------------------------------------------------------------------
    def _rates(self, model: str, batch: bool, tier: str | None) -> Price | None:
        """The Price a call to ``model`` pays (its batch rates with ``batch``), or None."""
        price = self.price(model, tier=tier)
        if price is None or not batch:
            return price
        if price.batch is None:
            self._warn(model, batch=True, message=_no_batch(model))
        return price.batch

    def _resolve(self, model: str, tier: str | None) -> _Known:
        if not isinstance(model, str) or not model:
            raise ConfigurationError(f"model must be a model name (a string), got {model!r}.")
        if tier is not None and not isinstance(tier, str):
            raise ConfigurationError(f"tier must be a service tier name or None, got {tier!r}.")
        key = (model, None if tier in _STANDARD_TIERS else tier)
        known = self._known.get(key)
        if known is None:
            known = self._lookup(*key)
            with self._lock:
                known = self._known.setdefault(key, known)
        return known

    def _lookup(self, model: str, tier: str | None) -> _Known:
        override = self._prices.get(model)
        if override is None and (snapshot := _SNAPSHOT.match(model)) is not None:
            override = self._prices.get(snapshot["name"])
        if override is not None:
            return _Known(override, "prices=")
        from rate_limited import _genai_prices

        entry = _genai_prices.lookup(model, datetime.now(timezone.utc), tier)
        table = f"genai-prices {_genai_prices.version()}"
        if entry is None:
            return _Known(None, f"it is neither in prices= nor in {table}'s table")
        found = f"{entry.provider}/{entry.model}"
        if entry.price is None:
            return _Known(None, f"{table} has it as {found}, but {entry.reason}")
        return _Known(entry.price, f"{table}: {found}")

    def _warn(self, model: str, *, batch: bool, message: str) -> None:
        with self._lock:
            if (model, batch) in self._warned:
                return
            self._warned.add((model, batch))
        _warn_at_caller(message, PriceWarning)

    def __repr__(self) -> str:
        unknown = sorted({model for (model, _), k in self._known.items() if k.price is None})
        return (
            f"<PriceTable prices={sorted(self._prices)} resolved={len(self._known)} "
            f"unknown={unknown}>"
        )


def _unknown(model: str, why: str, *, required: bool = False) -> str:
    consequence = (
        "a price is required here (the cost of its calls must be bounded)"
        if required
        else "the cost of its calls is None"
    )
    return (
        f"No price is known for model {model!r}: {why}; {consequence}. Give its rates in "
        f"USD per million tokens: prices={{{model!r}: Price(input_per_mtok=..., "
        "output_per_mtok=...)}."
    )


def _no_batch(model: str, *, required: bool = False) -> str:
    consequence = "a batch price is required here" if required else "its batch calls cost None"
    return (
        f"No batch price is known for model {model!r} (its Price in prices= has no batch "
        f"rates); {consequence}. Add them: Price(..., batch=Price(...)), or for half "
        "price batch=Price(...).scaled(0.5)."
    )


def _reported_tier(response: Any) -> tuple[str | None, bool]:
    """The service tier a response says it was billed at, and whether it was a batch.

    OpenAI reports ``service_tier`` on the response ("default", "flex", "priority"...; a
    batch result says "default"); Anthropic reports ``usage.service_tier`` ("standard",
    "priority", "batch") and ``usage.speed`` ("fast" in fast mode).
    """
    usage = field(response, "usage")
    if usage is None:
        usage = response
    if field(usage, "speed") == "fast":
        return "fast", False
    anthropic_tier = field(usage, "service_tier")
    if anthropic_tier == "batch":
        return None, True
    tier = field(response, "service_tier")
    if not isinstance(tier, str):
        tier = anthropic_tier if isinstance(anthropic_tier, str) else None
    return tier, False


def _response_model(response: Any) -> str:
    model = field(response, "model")
    if not isinstance(model, str) or not model:
        raise ValueError("cost: the response names no model (a usage alone does not); pass model=.")
    return model


def _check_tokens(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigurationError(f"max_cost: {name} must be a finite number >= 0, got {value!r}.")


def _warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the first frame outside this package: the user's line that asked."""
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


# -- one table for the process: the module's functions are its methods -------------------------
_DEFAULT = PriceTable()
#: ``PriceTable.price`` of the process's table (genai-prices' prices).
price = _DEFAULT.price
#: ``PriceTable.cost`` of the process's table: the cost in USD of a response.
cost = _DEFAULT.cost
#: ``PriceTable.max_cost`` of the process's table: the most a call can cost in USD.
max_cost = _DEFAULT.max_cost
