"""Semantic cache: pay once for a question asked twice in different words.

::

    from rate_limited.semantic import SemanticCache

    runner = chat.runner(store="runs.db", semantic_cache=SemanticCache(embed="local"))

Before a run sends anything, every call that the exact store did not answer is embedded
and compared with the prompts of earlier paid-for calls (kept with the store) and with the
other calls of the run. A call whose prompt is close enough to one of them, and that
matches it *exactly* in everything else (model, system prompt, tools, temperature,
``max_tokens``, every argument), takes that call's answer instead of being sent; its
outcome says so (``outcome.semantic``: the matched call's key, its redacted prompt and
the similarity; ``to_pandas()`` columns ``semantic_key``, ``semantic_text``,
``semantic_similarity``). ``refresh=True`` or ``semantic_cache=None`` turn it off.

It is opt-in and precise by default: all-MiniLM-L6-v2 scores "I love this phone" and "I
hate this phone" 0.92, as close as true paraphrases, so the default threshold and guards
were chosen so that no distinct prompt of a labelled set of 200 is served from the cache
(benchmarks/RESULTS.md, "Semantic cache"). The package's extra ``[semantic]`` (numpy,
sqlite-vec) is imported only when a cache is made; ``[semantic-local]`` adds the local
model (sentence-transformers on torch).
"""

from __future__ import annotations

from rate_limited.semantic._cache import DEFAULT_THRESHOLD, SemanticCache
from rate_limited.semantic._embed import Embedder, LocalEmbedder, ProviderEmbedder
from rate_limited.semantic._match import SemanticMatch, SemanticStats
from rate_limited.semantic._text import (
    DEFAULT_GUARDS,
    collapse_whitespace,
    same_negation,
    same_numbers,
    same_word_order,
)

__all__ = [
    "DEFAULT_GUARDS",
    "DEFAULT_THRESHOLD",
    "Embedder",
    "LocalEmbedder",
    "ProviderEmbedder",
    "SemanticCache",
    "SemanticMatch",
    "SemanticStats",
    "collapse_whitespace",
    "same_negation",
    "same_numbers",
    "same_word_order",
]
