"""The semantic cache with the real ``openai`` client against the MockProvider: requests
fall by the number of hits, nothing crosses a model, a system prompt or a temperature,
and a fresh process on the same store (a restarted kernel) hits the same entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

from rate_limited.apis.openai import ChatCompletions
from rate_limited.semantic import SemanticCache
from rate_limited.testing import MockProvider
from tests.conftest import MakeProvider
from tests.semantic.fakes import WordEmbedder

ROOT = Path(__file__).resolve().parents[2]


def messages(prompt: str, system: str = "Answer in one word.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def run_chat(provider: MockProvider, store: str, calls: list[dict[str, Any]]) -> Any:
    client = openai.OpenAI(base_url=provider.base_url, api_key="test", timeout=10.0)
    chat = ChatCompletions(client, requests_per_minute=6000, tokens_per_minute=1_000_000)
    cache = SemanticCache(embed=WordEmbedder())
    try:
        with chat.runner(store=store, semantic_cache=cache, progress=False) as runner:
            for params in calls:
                runner.schedule(**{"model": "gpt-4o-mini", "max_tokens": 12, **params})
            return runner.run()
    finally:
        client.close()


def test_requests_fall_by_the_number_of_hits(make_provider: MakeProvider) -> None:
    provider = make_provider()
    prompts = [
        "What is the capital of France?",
        "what is the capital of France",
        "What is the capital of Spain?",
        "WHAT is the capital of Spain ?",
        "What is the capital of Italy?",
    ]
    result = run_chat(provider, "memory://", [{"messages": messages(p)} for p in prompts])
    hits = sum(o.semantic is not None for o in result.outcomes)
    assert hits == 2
    assert provider.stats().requests == len(prompts) - hits
    assert result.results[1].choices[0].message.content == (
        result.results[0].choices[0].message.content
    )


def test_nothing_crosses_a_model_a_system_prompt_or_a_temperature(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    base = {"messages": messages("What is the capital of France?"), "temperature": 0.0}
    other = messages("what is the capital of France")
    calls = [
        base,
        {"messages": other, "temperature": 0.0, "model": "gpt-4o"},
        {"messages": messages("what is the capital of France", "Be verbose."), "temperature": 0.0},
        {"messages": other, "temperature": 0.7},
    ]
    result = run_chat(provider, "memory://", calls)
    assert provider.stats().requests == 4
    assert all(o.semantic is None for o in result.outcomes)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", [pytest.param("sqlite", id="sqlite"), pytest.param("redis", id="redis")]
)
def test_a_restarted_kernel_hits_the_same_entries(
    make_provider: MakeProvider, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        store = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        store = f"{request.getfixturevalue('redis_url')}?prefix={uuid.uuid4().hex}"
    provider = make_provider()
    env = {**os.environ, "RATE_LIMITED_STORE_SECRET": "kernel-restart-test"}

    def kernel(*prompts: str) -> list[dict[str, Any]]:
        before = provider.stats().requests
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.semantic.restart_run",
                store,
                provider.base_url,
                *prompts,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        for row in rows:
            row["requests"] = provider.stats().requests - before
        return rows

    first = kernel("Capital of France?", "capital of France", "Capital of Spain?")
    assert first[0]["requests"] == 2  # the paraphrase waited for the first call's answer
    assert first[1]["semantic_key"] == first[0]["key"]
    second = kernel("Capital of France?", "capital of France", "Capital of Spain?")
    assert second[0]["requests"] == 0
    assert [r["from_store"] for r in second] == [True, True, True]
    assert second[1]["semantic_key"] == first[0]["key"]  # the same entry, from the store
    assert second[1]["answer"] == first[0]["answer"]
    third = kernel("CAPITAL of   Spain!", "Capital of Italy?")
    assert third[0]["requests"] == 1
    assert third[0]["semantic_key"] == first[2]["key"]
    assert third[0]["semantic_text"] == "Capital of Spain?"


def test_provider_embeddings_run_in_batches_on_their_own_quota(
    make_provider: MakeProvider,
) -> None:
    from rate_limited.apis.openai import Embeddings
    from rate_limited.semantic import ProviderEmbedder

    provider = make_provider()
    client = openai.OpenAI(base_url=provider.base_url, api_key="test", timeout=10.0)
    embeddings = Embeddings(client, requests_per_minute=600, tokens_per_minute=100_000)
    embedder = ProviderEmbedder(embeddings, model="text-embedding-3-small", batch_size=2)
    chat = ChatCompletions(client, requests_per_minute=600, tokens_per_minute=100_000)
    prompts = ["Capital of France?", "Capital of Spain?", "Capital of Italy?", "Capital of Peru?"]
    try:
        with chat.runner(
            store="memory://", semantic_cache=SemanticCache(embed=embedder), progress=False
        ) as runner:
            for prompt in prompts:
                runner.schedule(model="gpt-4o-mini", max_tokens=12, messages=messages(prompt))
            result = runner.run()
        # The embedder's own Runner, with the Embeddings preset's quotas and ledger.
        embed_runner = embedder._runner
        assert embed_runner is not None
        assert embed_runner.resources == embeddings.resources != runner.resources
        assert embed_runner._ledger is not runner._ledger
    finally:
        embedder.close()
        client.close()
    endpoints = [entry.endpoint for entry in provider.request_log]
    assert endpoints.count("embeddings") == 2  # 4 prompts, 2 per request
    assert endpoints.count("chat.completions") == 4
    assert all(o.semantic is None for o in result.outcomes)  # random vectors: no match
