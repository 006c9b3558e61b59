"""Prices and costs (``rate_limited.cost``), judged against genai-prices' own calculator.

The expected costs are not written down here: they come from ``genai_prices.calc_price``
on the same usage (its bundled table, the one the package reads). Only the user's
``prices=`` are checked against numbers computed by hand, since they are ours.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import warnings
from datetime import datetime, timezone
from typing import Any

import pytest

genai_prices = pytest.importorskip("genai_prices")
from genai_prices import data_snapshot  # noqa: E402
from genai_prices import update_prices as genai_update  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rate_limited import ConfigurationError, Price, PriceWarning  # noqa: E402
from rate_limited import _genai_prices as table_module  # noqa: E402
from rate_limited.cost import PriceTable, TokenUsage, cost, max_cost, price  # noqa: E402
from tests.pricing import MY_PRICE, PROPERTY, plus, usages  # noqa: E402

NOW = datetime.now(timezone.utc)
#: One table for the property tests (a fresh one per example would test nothing more).
_TABLE = PriceTable()


def genai_cost(model: str, usage: TokenUsage, context: dict[str, str] | None = None) -> float:
    """genai-prices' own price of ``usage``, resolving ``model`` as the package does."""
    reference = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )
    for provider_id in (None, "openai", "anthropic"):
        try:
            calculation = genai_prices.calc_price(
                reference, model, provider_id=provider_id, price_context=context
            )
        except LookupError:
            continue
        return float(calculation.total_price)
    raise LookupError(model)


def _chat_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def find(model: str) -> tuple[Any, Any]:
    """genai-prices' provider and model for a name (OpenAI's when no pattern claims it)."""
    snapshot = data_snapshot.get_snapshot()
    try:
        return snapshot.find_provider_model(model, None, None, None)  # type: ignore[no-any-return]
    except LookupError:
        return snapshot.find_provider_model(model, None, "openai", None)  # type: ignore[no-any-return]


def has_batch_variant(model: str) -> bool:
    _, info = find(model)
    return any(v.when == {"processing": "batch"} for v in info.price_variants or ())


def _provider(provider_id: str) -> Any:
    from genai_prices.data import providers

    return next(p for p in providers if p.id == provider_id)


def table_models(provider_id: str) -> list[str]:
    return [model.id for model in _provider(provider_id).models]


USAGES = [
    pytest.param(TokenUsage(input_tokens=1_000, output_tokens=200), id="plain"),
    pytest.param(
        TokenUsage(input_tokens=5_000, output_tokens=100, cached_input_tokens=4_096), id="cached"
    ),
    pytest.param(
        TokenUsage(
            input_tokens=9_000,
            output_tokens=700,
            cached_input_tokens=2_000,
            cache_write_tokens=6_000,
            cache_write_1h_tokens=1_500,
        ),
        id="cache-writes",
    ),
    pytest.param(
        TokenUsage(input_tokens=300_000, output_tokens=4_000, cached_input_tokens=100_000),
        id="long-context",
    ),
    pytest.param(TokenUsage(input_tokens=0, output_tokens=0), id="nothing"),
]

MODELS = [
    pytest.param("gpt-4o-mini", id="gpt-4o-mini"),
    pytest.param("gpt-4o-mini-2024-07-18", id="gpt-4o-mini-snapshot"),
    pytest.param("gpt-4o", id="gpt-4o"),
    pytest.param("gpt-5.4", id="gpt-5.4-tiered"),
    pytest.param("text-embedding-3-small", id="embeddings"),
    pytest.param("claude-3-5-haiku-20241022", id="claude-3-5-haiku-snapshot"),
    pytest.param("claude-haiku-4-5", id="claude-haiku-4-5"),
    pytest.param("claude-sonnet-4-5", id="claude-sonnet-4-5-tiered"),
]


# -- prices against genai-prices' table --------------------------------------------------------
@pytest.mark.parametrize("usage", USAGES)
@pytest.mark.parametrize("model", MODELS)
def test_cost_is_genai_prices_cost(model: str, usage: TokenUsage) -> None:
    assert PriceTable().cost(usage, model) == pytest.approx(genai_cost(model, usage), rel=1e-12)


@pytest.mark.parametrize("usage", USAGES)
@pytest.mark.parametrize("model", MODELS)
def test_batch_cost_is_genai_prices_batch_cost_or_half_price(model: str, usage: TokenUsage) -> None:
    batch = PriceTable().cost(usage, model, batch=True)
    if has_batch_variant(model):
        expected = genai_cost(model, usage, {"processing": "batch"})
    else:  # OpenAI and Anthropic document half price for every model their Batch API serves
        expected = genai_cost(model, usage) / 2
    assert batch == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("provider_id", ["openai", "anthropic"])
def test_every_openai_and_anthropic_model_costs_what_genai_prices_says(provider_id: str) -> None:
    """The conversion of genai-prices' prices (tiers, cache rates, batch variants) holds
    for every model of the two providers the presets call, not only a few."""
    table = PriceTable()
    checked = 0
    priced = f"genai-prices {genai_prices.__version__}: "
    for model in table_models(provider_id):
        known = table.source(model)
        if not known.startswith(priced):
            if "but its prices are" in known:  # not priced per token, and said why
                continue
            with pytest.raises(LookupError):  # an id that is no model name ("ft:gpt-4o")
                find(model)
            continue
        for case in USAGES:
            usage = case.values[0]
            assert isinstance(usage, TokenUsage)
            expected = genai_cost(model, usage)
            assert table.cost(usage, model) == pytest.approx(expected, rel=1e-12), model
            batch = (
                genai_cost(model, usage, {"processing": "batch"})
                if has_batch_variant(model)
                else expected / 2
            )
            assert table.cost(usage, model, batch=True) == pytest.approx(batch, rel=1e-12), model
        checked += 1
    assert checked >= 20


def test_known_prices_are_the_tables_own_numbers() -> None:
    _, info = find("gpt-4o-mini")
    standard = info.get_prices(NOW)
    batch = info.get_prices(NOW, {"processing": "batch"})
    found = price("gpt-4o-mini")
    assert found is not None and found.batch is not None
    assert found.input_per_mtok == float(standard.input_mtok)
    assert found.output_per_mtok == float(standard.output_mtok)
    assert found.cached_input_per_mtok == float(standard.cache_read_mtok)
    assert found.batch.input_per_mtok == float(batch.input_mtok)
    assert found.batch.output_per_mtok == float(batch.output_mtok)


def test_anthropic_cache_write_prices_come_from_the_table() -> None:
    _, info = find("claude-haiku-4-5")
    standard = info.get_prices(NOW)
    found = price("claude-haiku-4-5")
    assert found is not None
    assert found.cache_write_per_mtok == float(standard.cache_write_mtok)
    assert found.cache_write_1h_per_mtok == float(standard.cache_write_1h_mtok)
    assert found.cached_input_per_mtok == float(standard.cache_read_mtok)


@pytest.mark.parametrize(
    ("tier", "context"),
    [
        pytest.param("flex", {"service_tier": "flex"}, id="flex"),
        pytest.param("priority", {"service_tier": "priority"}, id="priority"),
        pytest.param("default", None, id="default"),
    ],
)
def test_service_tiers_are_genai_prices_variants(tier: str, context: dict[str, str] | None) -> None:
    usage = TokenUsage(input_tokens=10_000, output_tokens=1_000, cached_input_tokens=2_048)
    response = {"model": "gpt-5-mini", "service_tier": tier, "usage": _chat_usage(usage)}
    expected = genai_cost("gpt-5-mini", usage, context)
    assert cost(response) == pytest.approx(expected, rel=1e-12)
    assert cost(usage, "gpt-5-mini", tier=tier) == pytest.approx(expected, rel=1e-12)


def test_anthropic_fast_mode_is_read_from_the_usage() -> None:
    fast_models = [
        model.id
        for model in _provider("anthropic").models
        if any(v.when == {"speed": "fast"} for v in model.price_variants or ())
    ]
    if not fast_models:
        pytest.skip("this genai-prices version has no Anthropic fast-mode prices")
    model = fast_models[0]
    usage = TokenUsage(input_tokens=1_000, output_tokens=100)
    fast = genai_cost(model, usage, {"speed": "fast"})
    assert fast > genai_cost(model, usage)
    reported = {"input_tokens": 1_000, "output_tokens": 100, "speed": "fast"}
    assert cost(reported, model) == pytest.approx(fast, rel=1e-12)
    assert max_cost(model, 1_000, 100, tier="fast", cache_write=False) == (
        pytest.approx(fast, rel=1e-12)
    )


def test_anthropic_batch_results_say_they_were_batch() -> None:
    usage = {"input_tokens": 1_000, "output_tokens": 100, "service_tier": "batch"}
    expected = genai_cost(
        "claude-haiku-4-5",
        TokenUsage(input_tokens=1_000, output_tokens=100),
        {"processing": "batch"},
    )
    assert cost(usage, "claude-haiku-4-5") == pytest.approx(expected, rel=1e-12)


# -- model names --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "matched"),
    [
        pytest.param("gpt-4o-mini", "openai/gpt-4o-mini", id="plain"),
        pytest.param("gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini", id="dated"),
        pytest.param("gpt-4o-mini-20240718", "openai/gpt-4o-mini", id="compact-date"),
        pytest.param("GPT-4o-Mini", "openai/gpt-4o-mini", id="case"),
        pytest.param(
            "claude-3-5-haiku-20241022", "anthropic/claude-3-5-haiku-latest", id="haiku-3.5"
        ),
        pytest.param("claude-haiku-4-5", "anthropic/claude-haiku-4-5", id="haiku-4.5"),
        pytest.param(
            "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5", id="haiku-4.5-dated"
        ),
        pytest.param("text-embedding-3-small", "openai/text-embedding-3-small", id="no-pattern"),
    ],
)
def test_names_resolve_as_genai_prices_resolves_them(name: str, matched: str) -> None:
    assert PriceTable().source(name) == f"genai-prices {genai_prices.__version__}: {matched}"
    provider, info = find(name)
    assert f"{provider.id}/{info.id}" == matched


def test_models_priced_otherwise_than_per_token_have_no_price_and_say_why() -> None:
    table = PriceTable()
    with pytest.warns(PriceWarning, match="whisper-1.*not per token"):
        assert table.price("whisper-1") is None


# -- the user's prices --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(TokenUsage(50_000, 10_000), (50_000 * 2.0 + 10_000 * 8.0) / 1e6, id="plain"),
        pytest.param(
            TokenUsage(
                1_000,
                10,
                cached_input_tokens=400,
                cache_write_tokens=500,
                cache_write_1h_tokens=200,
            ),
            (100 * 2.0 + 400 * 0.5 + 300 * 2.5 + 200 * 4.0 + 10 * 8.0) / 1e6,
            id="cache",
        ),
        pytest.param(
            TokenUsage(200_000, 1_000, cached_input_tokens=50_000, cache_write_tokens=10_000),
            (140_000 * 4.0 + 50_000 * 1.0 + 10_000 * 4.0 + 1_000 * 16.0) / 1e6,
            id="long-context-tier",
        ),
    ],
)
def test_user_prices(usage: TokenUsage, expected: float) -> None:
    assert PriceTable({"my-model": MY_PRICE}).cost(usage, "my-model") == pytest.approx(expected)


def test_user_prices_override_the_table_and_price_dated_snapshots() -> None:
    table = PriceTable({"gpt-4o-mini": Price(10.0, 1.0), "my-model": MY_PRICE})
    usage = TokenUsage(100_000, 0)
    assert table.cost(usage, "gpt-4o-mini") == pytest.approx(1.0)
    assert table.cost(usage, "gpt-4o-mini-2024-07-18") == pytest.approx(1.0)
    assert table.cost(usage, "my-model-20250101") == pytest.approx(0.2)
    assert table.cost(usage, "my-model", batch=True) == pytest.approx(0.1)
    assert table.source("my-model-2025-01-01") == "prices="
    with pytest.warns(PriceWarning, match="my-model-v2"):
        assert table.cost(usage, "my-model-v2") is None


def test_user_prices_without_batch_rates_have_no_batch_cost() -> None:
    table = PriceTable({"my-model": Price(1.0, 2.0)})
    usage = TokenUsage(1_000, 10)
    with pytest.warns(PriceWarning, match=r"batch price.*'my-model'.*scaled\(0\.5\)"):
        assert table.cost(usage, "my-model", batch=True) is None
    assert table.cost(usage, "my-model") == pytest.approx((1_000 * 1.0 + 10 * 2.0) / 1e6)
    with pytest.raises(ConfigurationError, match="batch"):
        table.require("my-model", batch=True)


def test_user_prices_without_table_need_no_genai_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "genai_prices", None)
    monkeypatch.setattr(table_module, "_snapshot", None)
    table = PriceTable({"my-model": Price(1.0, 2.0)})
    assert table.cost(TokenUsage(1_000_000, 0), "my-model") == 1.0
    with pytest.raises(ImportError, match=r"rate_limited\[cost\]"):
        table.cost(TokenUsage(1, 0), "gpt-4o-mini")


@pytest.mark.parametrize(
    "prices",
    [
        pytest.param(["gpt-4o"], id="not-a-mapping"),
        pytest.param({"m": (1.0, 2.0)}, id="not-a-price"),
        pytest.param({"": Price(1.0, 2.0)}, id="empty-name"),
    ],
)
def test_bad_prices_mapping(prices: Any) -> None:
    with pytest.raises(ConfigurationError, match="prices"):
        PriceTable(prices)


# -- unknown models -----------------------------------------------------------------------------
def test_unknown_model_costs_none_with_one_warning_per_table() -> None:
    table = PriceTable()
    usage = TokenUsage(100, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert table.cost(usage, "no-such-model-x") is None
        assert table.max_cost("no-such-model-x", 100, 10) is None
        assert table.cost(usage, "no-such-model-x", batch=True) is None
        assert table.price("no-such-model-x") is None
    assert [type(w.message) for w in caught] == [PriceWarning]
    message = str(caught[0].message)
    assert "'no-such-model-x'" in message and "prices={'no-such-model-x': Price(" in message
    assert caught[0].filename == __file__  # it points at the line that asked
    with pytest.warns(PriceWarning):  # another table says it again
        PriceTable().cost(usage, "no-such-model-x")


def test_unknown_model_warns_once_across_threads() -> None:
    table = PriceTable()
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        for _ in range(50):
            table.cost(TokenUsage(1, 1), "no-such-model-y")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len([w for w in caught if issubclass(w.category, PriceWarning)]) == 1


def test_require_names_the_model_and_how_to_price_it() -> None:
    with pytest.raises(ConfigurationError, match=r"'no-such-model-z'.*prices=\{'no-such-model-z'"):
        PriceTable().require("no-such-model-z")
    assert PriceTable().require("gpt-4o-mini", batch=True).batch is not None


# -- max_cost -------------------------------------------------------------------------------------
def test_max_cost_is_prompt_at_input_plus_max_output_times_n() -> None:
    _, info = find("gpt-4o-mini")
    rates = info.get_prices(NOW)
    expected = (1_000 * float(rates.input_mtok) + 100 * 3 * float(rates.output_mtok)) / 1e6
    assert max_cost("gpt-4o-mini", 1_000, 100, n=3) == pytest.approx(expected, rel=1e-12)


def test_max_cost_counts_cache_writes_unless_told_they_cannot_happen() -> None:
    found = price("claude-haiku-4-5")
    assert found is not None and found.cache_write_1h_per_mtok is not None
    without = max_cost("claude-haiku-4-5", 1_000_000, 0, cache_write=False)
    assert without == pytest.approx(found.input_per_mtok)
    assert max_cost("claude-haiku-4-5", 1_000_000, 0) == pytest.approx(
        found.cache_write_1h_per_mtok
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(("gpt-4o-mini", -1, 10), "prompt_tokens", id="negative-prompt"),
        pytest.param(("gpt-4o-mini", 10, float("nan")), "max_output_tokens", id="nan-output"),
        pytest.param(("gpt-4o-mini", float("inf"), 10), "prompt_tokens", id="inf-prompt"),
        pytest.param(("gpt-4o-mini", 10, 10, 0), "n", id="n-zero"),
        pytest.param((None, 10, 10), "model", id="no-model"),
    ],
)
def test_max_cost_refuses_bad_arguments(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        max_cost(*args)


# -- properties -----------------------------------------------------------------------------------
PROPERTY_MODELS = [
    "gpt-4o-mini",
    "gpt-5.4",
    "gpt-6-sol",
    "text-embedding-3-small",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "claude-3-5-haiku-20241022",
]


@PROPERTY
@given(model=st.sampled_from(PROPERTY_MODELS), usage=usages(), batch=st.booleans())
def test_property_cost_is_genai_prices_cost(model: str, usage: TokenUsage, batch: bool) -> None:
    ours = PriceTable().cost(usage, model, batch=batch)
    if not batch:
        expected = genai_cost(model, usage)
    elif has_batch_variant(model):
        expected = genai_cost(model, usage, {"processing": "batch"})
    else:
        expected = genai_cost(model, usage) / 2
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)


@PROPERTY
@given(
    model=st.sampled_from(PROPERTY_MODELS),
    usage=usages(),
    more=usages(max_input=100_000, max_output=10_000),
    batch=st.booleans(),
)
def test_property_cost_is_monotone_in_tokens(
    model: str, usage: TokenUsage, more: TokenUsage, batch: bool
) -> None:
    table = _TABLE
    before = table.cost(usage, model, batch=batch)
    after = table.cost(plus(usage, more), model, batch=batch)
    assert before is not None and after is not None
    assert after >= before - 1e-15


@PROPERTY
@given(
    model=st.sampled_from(PROPERTY_MODELS),
    prompt_tokens=st.integers(0, 400_000),
    max_output=st.integers(0, 32_000),
    n=st.integers(1, 4),
    batch=st.booleans(),
    cache_write=st.booleans(),
    data=st.data(),
)
def test_property_max_cost_bounds_any_usage_within_the_bounds(
    model: str,
    prompt_tokens: int,
    max_output: int,
    n: int,
    batch: bool,
    cache_write: bool,
    data: st.DataObject,
) -> None:
    usage = data.draw(usages(max_input=prompt_tokens, max_output=max_output * n))
    if not cache_write:
        usage = TokenUsage(
            usage.input_tokens, usage.output_tokens, cached_input_tokens=usage.cached_input_tokens
        )
    bound = _TABLE.max_cost(
        model, prompt_tokens, max_output, n, batch=batch, cache_write=cache_write
    )
    actual = _TABLE.cost(usage, model, batch=batch)
    assert bound is not None and actual is not None
    assert actual <= bound * (1 + 1e-12)


# -- offline ------------------------------------------------------------------------------------
def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"the network was used: {args!r}")


def test_prices_never_reach_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(table_module, "_snapshot", None)  # rebuilt under the block
    table = PriceTable()
    for model in ("gpt-4o-mini", "claude-haiku-4-5", "text-embedding-3-small", "gpt-5.4"):
        assert table.cost(TokenUsage(1_000, 100), model, batch=True) is not None
        assert table.max_cost(model, 1_000, 100) is not None
    assert genai_update._shared_updater.thread is None  # UpdatePrices never started
    assert genai_update._shared_updater.ref_count == 0


def test_prices_never_reach_the_network_from_a_fresh_interpreter() -> None:
    """genai-prices imported for the first time with every socket refused."""
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network used: %r" % (args,))

        socket.socket.connect = socket.socket.connect_ex = socket.socket.sendto = refuse
        socket.getaddrinfo = socket.create_connection = refuse

        from rate_limited.cost import cost, max_cost
        from genai_prices import update_prices

        usage = {"prompt_tokens": 1000, "completion_tokens": 100}
        assert cost(usage, "gpt-4o-mini") > 0
        assert cost(usage, "claude-haiku-4-5", batch=True) > 0
        assert max_cost("gpt-4o-mini-2024-07-18", 1000, 100, n=2) > 0
        assert update_prices._shared_updater.thread is None
        print("offline ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "offline ok"


def test_a_fetched_process_wide_table_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """UpdatePrices (someone else's, in the same process) swaps genai-prices' table; the
    package keeps the bundled one."""
    expected = PriceTable().cost(TokenUsage(1_000, 100), "gpt-4o-mini")
    monkeypatch.setattr(table_module, "_snapshot", None)
    fetched = data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", fetched)
    with pytest.raises(LookupError):  # genai-prices itself now knows no model
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "gpt-4o-mini")
    assert PriceTable().cost(TokenUsage(1_000, 100), "gpt-4o-mini") == expected
