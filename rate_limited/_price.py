"""``Price``: a model's rates in USD per million tokens, and the cost of a usage at them.

One formula prices every usage, whether the rates come from genai-prices' table or from
the user's ``prices=``. A token kind with no rate of its own is billed at the rate of the
kind it is a part of, as genai-prices bills it: a cache read or a cache write at the input
rate, a one-hour cache write at the cache-write rate.

Long-context rates (``tiers``) follow the providers' "cliff": a call whose prompt has more
tokens than a tier's threshold pays that tier's rates on *all* its tokens (Anthropic's
Sonnet above 200k prompt tokens, for example), which is also genai-prices' rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from numbers import Real
from typing import Any

from rate_limited._token_usage import TokenUsage
from rate_limited.exceptions import ConfigurationError

__all__ = ["Price"]

_RATES = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
)
_MTOK = 1_000_000


def _rate(value: object, name: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Real | Decimal):
        raise ConfigurationError(
            f"Price: {name} must be a number of USD per million tokens"
            f"{' (or None)' if optional else ''}, got {value!r} ({type(value).__name__})."
        )
    try:
        rate = float(value)
    except OverflowError:
        rate = math.inf
    if not math.isfinite(rate) or rate < 0:
        raise ConfigurationError(
            f"Price: {name} must be a finite number >= 0 (USD per million tokens), got {value!r}."
        )
    return rate


@dataclass(frozen=True, slots=True, repr=False)
class Price:
    """A model's prices, in USD per million tokens.

    ``Price(input_per_mtok=0.15, output_per_mtok=0.6, cached_input_per_mtok=0.075,
    batch=Price(0.075, 0.3))``. Rates left as None are those of the token kind they are
    part of: cache reads and writes cost ``input_per_mtok``, one-hour writes
    ``cache_write_per_mtok``.
    """

    #: Prompt tokens not read from or written to the cache.
    input_per_mtok: float
    #: Output tokens (reasoning tokens included).
    output_per_mtok: float
    #: Prompt tokens read from the prompt cache; None: ``input_per_mtok``.
    cached_input_per_mtok: float | None = field(default=None, kw_only=True)
    #: Prompt tokens written to the cache (Anthropic's 5-minute writes; OpenAI's where
    #: billed); None: ``input_per_mtok``.
    cache_write_per_mtok: float | None = field(default=None, kw_only=True)
    #: Prompt tokens written to the cache for one hour; None: ``cache_write_per_mtok``.
    cache_write_1h_per_mtok: float | None = field(default=None, kw_only=True)
    #: The rates of the provider's Batch API; None: not known (batch costs are unknown).
    batch: Price | None = field(default=None, kw_only=True)
    #: ``((threshold, Price), ...)``: a call with more than ``threshold`` prompt tokens
    #: pays that Price's rates on all its tokens (long-context pricing).
    tiers: tuple[tuple[int, Price], ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        for name in _RATES:
            rate = _rate(getattr(self, name), name, optional=name not in _RATES[:2])
            object.__setattr__(self, name, rate)
        if self.batch is not None:
            if not isinstance(self.batch, Price):
                raise ConfigurationError(
                    f"Price: batch must be a Price (the Batch API's rates) or None, got "
                    f"{self.batch!r}; for half price, batch=Price(...).scaled(0.5)."
                )
            if self.batch.batch is not None:
                raise ConfigurationError("Price: the batch Price can't have a batch Price.")
        object.__setattr__(self, "tiers", _tiers(self.tiers))

    # -- the rates that apply ---------------------------------------------------------------
    def _at(self, input_tokens: float) -> Price:
        """The Price whose rates a call with ``input_tokens`` prompt tokens pays."""
        rates = self
        for threshold, tier in self.tiers:
            if input_tokens > threshold:
                rates = tier
        return rates

    def _cached_rate(self) -> float:
        rate = self.cached_input_per_mtok
        return self.input_per_mtok if rate is None else rate

    def _write_rate(self) -> float:
        rate = self.cache_write_per_mtok
        return self.input_per_mtok if rate is None else rate

    def _write_1h_rate(self) -> float:
        rate = self.cache_write_1h_per_mtok
        return self._write_rate() if rate is None else rate

    def _prompt_rate(self, *, cache_write: bool) -> float:
        """The highest rate a prompt token can be billed at."""
        rate = max(self.input_per_mtok, self._cached_rate())
        if cache_write:
            rate = max(rate, self._write_rate(), self._write_1h_rate())
        return rate

    # -- costs ------------------------------------------------------------------------------
    def cost(self, usage: TokenUsage) -> float:
        """The cost of ``usage`` in USD (at these rates: batch calls use ``price.batch``)."""
        rates = self._at(usage.input_tokens)
        uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
        total = (
            uncached * rates.input_per_mtok
            + usage.cached_input_tokens * rates._cached_rate()
            + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * rates._write_rate()
            + usage.cache_write_1h_tokens * rates._write_1h_rate()
            + usage.output_tokens * rates.output_per_mtok
        )
        return total / _MTOK

    def max_cost(
        self, prompt_tokens: float, output_tokens: float, *, cache_write: bool = True
    ) -> float:
        """The most a call can cost with at most these prompt and output tokens, in USD.

        Every prompt token is priced at the highest rate it could be billed at, at the
        highest tier the prompt can reach: cache writes, billed above the input rate
        (Anthropic, recent OpenAI models), included unless ``cache_write=False`` says the
        request can't write the cache. So for any usage within these bounds (and without
        cache writes if so told), ``cost(usage) <= max_cost(...)``.
        """
        reachable = [self, *(tier for threshold, tier in self.tiers if prompt_tokens > threshold)]
        prompt_rate = max(p._prompt_rate(cache_write=cache_write) for p in reachable)
        output_rate = max(p.output_per_mtok for p in reachable)
        return (prompt_tokens * prompt_rate + output_tokens * output_rate) / _MTOK

    def scaled(self, factor: float) -> Price:
        """These prices times ``factor`` (tiers and batch rates too): ``scaled(0.5)`` is half."""
        if isinstance(factor, bool) or not isinstance(factor, Real) or not 0 <= factor < math.inf:
            raise ConfigurationError(
                f"Price.scaled: factor must be a finite number >= 0, got {factor!r}."
            )
        scale = float(factor)
        values: dict[str, Any] = {}
        for name in _RATES:
            rate = getattr(self, name)
            values[name] = None if rate is None else rate * scale
        return Price(
            **values,
            batch=None if self.batch is None else self.batch.scaled(scale),
            tiers=tuple((threshold, tier.scaled(scale)) for threshold, tier in self.tiers),
        )

    def __repr__(self) -> str:
        shown = ((spec.name, getattr(self, spec.name)) for spec in fields(self))
        parts = (f"{name}={value!r}" for name, value in shown if value is not None and value != ())
        return f"Price({', '.join(parts)})"


def _tiers(value: object) -> tuple[tuple[int, Price], ...]:
    if not isinstance(value, Iterable) or isinstance(value, str):
        raise ConfigurationError(f"Price: tiers must be ((threshold, Price), ...), got {value!r}.")
    tiers: list[tuple[int, Price]] = []
    for item in value:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ConfigurationError(
                f"Price: each tier must be a (threshold, Price) pair, got {item!r}."
            )
        threshold, tier = item
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigurationError(
                f"Price: a tier's threshold must be an int >= 0 (prompt tokens), got {threshold!r}."
            )
        if not isinstance(tier, Price) or tier.tiers or tier.batch is not None:
            raise ConfigurationError(
                f"Price: a tier must be a Price without tiers or batch rates of its own, "
                f"got {tier!r}."
            )
        if tiers and threshold <= tiers[-1][0]:
            raise ConfigurationError(
                f"Price: tier thresholds must increase, got {threshold} after {tiers[-1][0]}."
            )
        tiers.append((threshold, tier))
    return tuple(tiers)
