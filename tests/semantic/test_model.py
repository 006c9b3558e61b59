"""The real model: all-MiniLM-L6-v2 (``LocalEmbedder``) on the labelled prompt set.

These tests share one loaded model (the session fixture ``model``) and skip, saying why,
where ``rate_limited[semantic-local]`` is not installed. The full precision/recall table
is benchmarks/semantic.py's job; here the defaults are held to their promise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rate_limited import Runner
from rate_limited.semantic import DEFAULT_THRESHOLD, SemanticCache

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data" / "semantic_prompts.jsonl"


def load() -> list[dict[str, Any]]:
    with DATA.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_the_labelled_set_is_what_it_says() -> None:
    prompts = load()
    ids = {p["id"] for p in prompts}
    assert len(prompts) == len(ids) == 200
    assert sum(1 for p in prompts if p["paraphrase_of"]) == 60
    assert all(p["paraphrase_of"] in ids for p in prompts if p["paraphrase_of"])
    kinds = {p["contrast_kind"] for p in prompts if p["contrast_of"]}
    assert kinds == {"negation", "entity", "number"}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param(
            "Classify the sentiment: I love this phone",
            "Classify the sentiment: I hate this phone",
            0.92,
            id="negative-pair",
        ),
        pytest.param(
            "Translate 'good morning' to German",
            "How do you say 'good morning' in German?",
            0.91,
            id="paraphrase",
        ),
    ],
)
def test_hard_negatives_score_as_close_as_paraphrases(
    model: Any, a: str, b: str, expected: float
) -> None:
    one, two = model([a, b])
    assert float(np.dot(one, two)) == pytest.approx(expected, abs=0.01)


def test_at_the_defaults_no_distinct_prompt_is_served(model: Any) -> None:
    prompts = load()
    cache = SemanticCache(embed=model)
    texts = [cache.normalized(p["text"]) for p in prompts]
    vectors = np.asarray(model(texts))
    similarity = vectors @ vectors.T
    group = [p["paraphrase_of"] or p["id"] for p in prompts]
    served = [
        (i, j)
        for i in range(len(prompts))
        for j in range(i + 1, len(prompts))
        if similarity[i, j] >= DEFAULT_THRESHOLD and cache.passes_guards(texts[i], texts[j])
    ]
    wrong = [(prompts[i]["text"], prompts[j]["text"]) for i, j in served if group[i] != group[j]]
    assert wrong == []
    assert len(served) >= 5  # and it does catch near-verbatim rewordings


def test_a_runner_with_the_local_model(model: Any) -> None:
    sent: list[str] = []

    def classify(prompt: str) -> str:
        sent.append(prompt)
        return f"answer: {prompt}"

    cache = SemanticCache(embed=model, text="prompt")
    with Runner(classify, store="memory://", semantic_cache=cache, progress=False) as runner:
        for prompt in [
            'Is "irregardless" a real word?',
            'Is "irregardless" actually a word?',
            "Classify the sentiment: I love this phone",
            "Classify the sentiment: I hate this phone",
        ]:
            runner.schedule(prompt)
        result = runner.run()
    assert len(sent) == 3
    match = result.outcomes[1].semantic
    assert match is not None and match.text == 'Is "irregardless" a real word?'
    assert match.similarity >= DEFAULT_THRESHOLD
    assert result.outcomes[3].semantic is None
