"""Prices from genai-prices' bundled table, as ``Price``s; never from the network.

genai-prices ships its price table in its wheel (``genai_prices.data``). It can also
download a fresher one from GitHub (``UpdatePrices``, opt-in), which then replaces the
bundled table for every caller of ``genai_prices.calc_price`` in the process. This package
never starts ``UpdatePrices`` and does not read that process-wide table either: it builds
its own ``DataSnapshot`` of the bundled data, so its prices are those of the installed
genai-prices version, in every process, with or without a network. (Newer prices: upgrade
genai-prices, or pass ``prices=``.)

Model names resolve as genai-prices resolves them: lowercased, the provider found by its
name patterns (``gpt-``, ``o1``/``o3``/``o4`` for OpenAI, ``claude`` for Anthropic...), then
the first of that provider's models whose pattern matches (dated snapshots like
``gpt-4o-mini-2024-07-18`` and ``claude-3-5-haiku-20241022`` are listed or matched by
prefix; compact dates ``-20240718`` are retried as ``-2024-07-18``). A name no provider
pattern claims (``text-embedding-3-small``) is then looked up among OpenAI's and
Anthropic's models, the providers the presets call.

Service tiers: genai-prices has OpenAI's flex, priority and fast rates and Anthropic's
fast mode as price variants too (``{"service_tier": ...}``, ``{"speed": "fast"}``); a
``tier`` selects them.

Batch rates: genai-prices has them for most current models, as a price variant
(``{"processing": "batch"}``). For an OpenAI or Anthropic model without one, the batch
price is half the standard price, as both providers document for every model their Batch
API serves (see ``HALF_PRICE_BATCH``). For other providers without a variant, the standard
price stands, which is genai-prices' own rule ("a model the provider does not serve in
batch returns the standard-price estimate").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from rate_limited._price import Price

__all__ = ["HALF_PRICE_BATCH", "TableEntry", "lookup", "version"]

#: Providers whose Batch API costs half the standard price for every model it serves:
#: OpenAI: "Lower costs: 50% cost discount compared to synchronous APIs"
#: (platform.openai.com/docs/guides/batch); Anthropic: "All usage is charged at 50% of the
#: standard API prices" (docs.anthropic.com/en/docs/build-with-claude/batch-processing,
#: "Pricing"; genai-prices' own note: "Message Batches API usage is charged at 50% of the
#: standard rates. Prompt caching multipliers stack with the batch discount").
HALF_PRICE_BATCH = frozenset({"openai", "anthropic"})
#: Where a name no provider pattern claims is looked up, in this order.
FALLBACK_PROVIDERS = ("openai", "anthropic")
_BATCH = {"processing": "batch"}
#: genai-prices price keys and the ``Price`` fields they fill.
_KEYS = {
    "input_mtok": "input_per_mtok",
    "output_mtok": "output_per_mtok",
    "cache_read_mtok": "cached_input_per_mtok",
    "cache_write_mtok": "cache_write_per_mtok",
    "cache_write_1h_mtok": "cache_write_1h_per_mtok",
}
_INSTALL_HINT = (
    "Model prices come from genai-prices: pip install 'rate_limited[cost]' "
    "(or give every model its price with prices={...: Price(...)})."
)

_lock = threading.Lock()
_snapshot: Any = None


@dataclass(frozen=True)
class TableEntry:
    """What genai-prices' table says of one model name."""

    #: genai-prices' provider id ("openai", "anthropic", ...).
    provider: str
    #: genai-prices' id of the model the name matched ("claude-3-5-haiku-latest", ...).
    model: str
    #: Its prices (batch rates included), or None when they can't be used (see ``reason``).
    price: Price | None
    #: Why ``price`` is None.
    reason: str = ""


def version() -> str:
    """The installed genai-prices version (ImportError with the install hint if none)."""
    return str(_genai_prices().__version__)


def _genai_prices() -> Any:
    try:
        import genai_prices
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    return genai_prices


def _bundled_snapshot() -> Any:
    """Our own snapshot of the wheel's table (never the process-wide, maybe fetched one)."""
    global _snapshot
    with _lock:
        if _snapshot is None:
            _genai_prices()
            from genai_prices.data import providers
            from genai_prices.data_snapshot import DataSnapshot

            _snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        return _snapshot


def lookup(model: str, when: datetime, tier: str | None = None) -> TableEntry | None:
    """The table's entry for ``model`` at ``when`` (UTC), or None if no model matches.

    ``tier`` selects the rates of a service tier or mode where the table has them:
    OpenAI's ``service_tier`` ("flex", "priority", "fast"), Anthropic's ``speed``
    ("fast"); elsewhere the standard rates stand, as in genai-prices.
    """
    snapshot = _bundled_snapshot()
    try:
        provider, info = snapshot.find_provider_model(model, None, None, None)
    except LookupError:
        for provider_id in FALLBACK_PROVIDERS:
            try:
                provider, info = snapshot.find_provider_model(model, None, provider_id, None)
            except LookupError:
                continue
            break
        else:
            return None
    # A model found through a provider's fallback list keeps its own provider's variants.
    owner = next((p for p in snapshot.providers if any(m is info for m in p.models)), provider)
    context = None if tier is None else {"service_tier": tier, "speed": tier}
    standard = _price(info.get_prices(when, context))
    if isinstance(standard, str):
        return TableEntry(owner.id, info.id, None, f"its prices {standard}")
    if _has_batch_variant(info, when):
        batch = _price(info.get_prices(when, _BATCH))
        if isinstance(batch, str):
            return TableEntry(owner.id, info.id, None, f"its batch prices {batch}")
    elif owner.id in HALF_PRICE_BATCH:
        batch = standard.scaled(0.5)
    else:
        batch = standard
    return TableEntry(owner.id, info.id, replace(standard, batch=batch))


def _has_batch_variant(info: Any, when: datetime) -> bool:
    return any(
        variant.when == _BATCH and (variant.constraint is None or variant.constraint.active(when))
        for variant in info.price_variants or ()
    )


def _price(model_price: Any) -> Price | str:
    """A genai-prices ``ModelPrice`` as a ``Price``, or why it can't be one."""
    if getattr(model_price, "requests_kcount", None) is not None:
        return "are per request as well as per token, which this package does not price"
    values: dict[str, Any] = {key: getattr(model_price, key, None) for key in _KEYS}
    if values["input_mtok"] is None and values["output_mtok"] is None:
        return "are not per token"
    thresholds = sorted(
        {tier.start for value in values.values() if _is_tiered(value) for tier in value.tiers}
    )
    tiers = tuple((threshold, _rates(values, threshold)) for threshold in thresholds)
    return replace(_rates(values, None), tiers=tiers)


def _is_tiered(value: Any) -> bool:
    return value is not None and not isinstance(value, Decimal)


def _rates(values: dict[str, Any], threshold: int | None) -> Price:
    """The rates that apply to a prompt of more than ``threshold`` tokens (None: base)."""
    rates: dict[str, float | None] = {}
    for key, name in _KEYS.items():
        value = values[key]
        if _is_tiered(value):
            rate = value.base
            for tier in value.tiers:  # sorted by start
                if threshold is not None and tier.start <= threshold:
                    rate = tier.price
            value = rate
        rates[name] = None if value is None else float(value)
    # A model priced for one direction only (embeddings: no output) costs 0 for the other.
    return Price(
        rates["input_per_mtok"] or 0.0,
        rates["output_per_mtok"] or 0.0,
        cached_input_per_mtok=rates["cached_input_per_mtok"],
        cache_write_per_mtok=rates["cache_write_per_mtok"],
        cache_write_1h_per_mtok=rates["cache_write_1h_per_mtok"],
    )
