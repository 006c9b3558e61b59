"""A deterministic embedder for the semantic-cache tests (no model, no network).

Each word (casefolded) has a fixed pseudo-random direction; a text's vector is the sum of
its words'. So texts with the same words in any order score 1.0, and texts sharing most
words score high: what a sentence embedder does, in a way a test can predict.
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any

import numpy as np

DIMENSIONS = 64
_WORD = re.compile(r"\w+")


def word_vector(word: str) -> np.ndarray[Any, Any]:
    seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=DIMENSIONS)


class WordEmbedder:
    """Bag-of-words vectors; counts the texts it embedded and the calls it got."""

    name = "tests.word-embedder"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.texts: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            self.calls += 1
            self.texts.extend(texts)
        vectors = []
        for text in texts:
            vector = np.zeros(DIMENSIONS)
            for word in _WORD.findall(text.casefold()):
                vector += word_vector(word)
            vectors.append(vector.tolist())
        return vectors


def similarity(embedder: WordEmbedder, a: str, b: str) -> float:
    va, vb = (np.asarray(v) for v in embedder([a, b]))
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
