"""``SemanticCache``'s arguments: clear errors early, lazy optional imports with the extra
to install, and the partition that keeps models, normalizations and scopes apart."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from rate_limited.calls import Call
from rate_limited.exceptions import ConfigurationError
from rate_limited.semantic import (
    DEFAULT_THRESHOLD,
    LocalEmbedder,
    ProviderEmbedder,
    SemanticCache,
)
from tests.semantic.fakes import WordEmbedder


def ask(prompt: str, model: str = "m") -> str:
    return prompt


@pytest.mark.parametrize(
    "threshold",
    [
        pytest.param(0, id="zero"),
        pytest.param(-0.5, id="negative"),
        pytest.param(1.01, id="above-one"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(True, id="bool"),
        pytest.param("0.9", id="str"),
    ],
)
def test_a_threshold_outside_0_1_is_an_error(threshold: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"threshold must be a cosine similarity in \(0, 1\]"
    ):
        SemanticCache(embed=WordEmbedder(), threshold=threshold)


@pytest.mark.parametrize("threshold", [pytest.param(1, id="one"), pytest.param(0.5, id="half")])
def test_thresholds_in_range(threshold: float) -> None:
    assert SemanticCache(embed=WordEmbedder(), threshold=threshold).threshold == threshold
    assert SemanticCache(embed=WordEmbedder()).threshold == DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"embed": 42}, "embed must be 'local'", id="embed"),
        pytest.param({"text": 3}, "text must be None", id="text-type"),
        pytest.param({"text": "not a name"}, "text must name an argument", id="text-name"),
        pytest.param({"normalize": "lower"}, "normalize must be", id="normalize"),
        pytest.param({"guards": ["x"]}, "guards must be functions", id="guards"),
        pytest.param({"candidates": 0}, "candidates must be", id="candidates"),
    ],
)
def test_bad_arguments_are_errors(options: dict[str, Any], message: str) -> None:
    options.setdefault("embed", WordEmbedder())
    with pytest.raises(ConfigurationError, match=message):
        SemanticCache(**options)


def test_numpy_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match=r"pip install 'rate_limited\[semantic\]'"):
        SemanticCache(embed=WordEmbedder())


def test_the_local_model_is_loaded_lazily_and_its_absence_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = SemanticCache(embed="local")  # nothing is loaded yet
    assert isinstance(cache.embedder, LocalEmbedder)
    assert cache.embedder.name == "sentence-transformers:all-MiniLM-L6-v2"
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"rate_limited\[semantic-local\]"):
        LocalEmbedder().load()


def test_provider_embedder_needs_an_embeddings_preset() -> None:
    with pytest.raises(ConfigurationError, match="takes an Embeddings preset"):
        ProviderEmbedder(object())


def test_partitions_keep_embedders_and_normalizations_apart() -> None:
    call = Call(ask, ("Capital of France?",), {})
    one = SemanticCache(embed=WordEmbedder(), text="prompt").split(call)
    other_model = SemanticCache(embed=lambda texts: texts, text="prompt").split(call)
    raw = SemanticCache(embed=WordEmbedder(), text="prompt", normalize=None).split(call)
    assert one is not None and other_model is not None and raw is not None
    assert len({one[1], other_model[1], raw[1]}) == 3
    again = SemanticCache(embed=WordEmbedder(), text="prompt").split(call)
    assert again == one  # stable: the same call, cache and embedder give the same partition
