"""Streamed responses in the presets, with the real SDKs against the MockProvider."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import anthropic
import openai
import pytest

from rate_limited import Resource, Runner
from rate_limited.apis.anthropic import Messages
from rate_limited.apis.openai import ChatCompletions
from rate_limited.exceptions import ConfigurationError, StreamBrokenError
from rate_limited.testing import Faults, MockProvider
from tests.conftest import MakeProvider
from tests.shared import closed_after_test

KINDS = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]


def _no_keepalive(sdk: Any) -> Any:
    """Async clients live on the Runner's loop, where nothing closes them afterwards: they
    keep no connection open (as in tests/test_provider_integration.py)."""
    http = sys.modules[sdk.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]]
    return sdk.DefaultAsyncHttpxClient(limits=http.Limits(max_keepalive_connections=0))


def openai_client(provider: MockProvider, kind: str) -> Any:
    if kind == "async":
        return openai.AsyncOpenAI(
            base_url=provider.base_url,
            api_key="test",
            timeout=10.0,
            http_client=_no_keepalive(openai),
        )
    client = openai.OpenAI(base_url=provider.base_url, api_key="test", timeout=10.0)
    closed_after_test(client)
    return client


def anthropic_client(provider: MockProvider, kind: str) -> Any:
    base_url = provider.anthropic_base_url
    if kind == "async":
        return anthropic.AsyncAnthropic(
            base_url=base_url, api_key="test", timeout=10.0, http_client=_no_keepalive(anthropic)
        )
    client = anthropic.Anthropic(base_url=base_url, api_key="test", timeout=10.0)
    closed_after_test(client)
    return client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def actual_tokens() -> Resource:
    """Billed what each response reports (``settle="actual"``): the sum must be the
    MockProvider's own count."""
    return Resource(
        "tokens",
        10_000_000,
        60,
        max_results_usage_estimator=lambda call: 1_000,
        results_usage_extractor=lambda call, response: response.usage.total_tokens,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_openai_stream_billed_from_its_usage_chunk(make_provider: MakeProvider, kind: str) -> None:
    provider = make_provider(latency=0.02)
    chat = ChatCompletions(
        openai_client(provider, kind), requests_per_minute=6000, tokens_per_minute=1_000_000
    )
    chunks: list[Any] = []
    runner = Runner(chat, [actual_tokens()], progress=False)
    for i in range(8):
        runner.schedule(
            model="gpt-4o-mini",
            messages=user(f"stream {i}"),
            max_tokens=40,
            stream=True,
            on_chunk=chunks.append,
        )
    result = runner.run()
    stats = provider.stats()
    assert stats.admitted == 8 and stats.rejected == 0
    billed = sum(o.usage["tokens"] for o in result.outcomes)
    assert billed == stats.prompt_tokens + stats.completion_tokens
    first = result.results[0]
    assert first.object == "chat.completion" and first.usage is not None
    text = first.choices[0].message.content
    assert text.startswith("stream 0")
    assert chunks[-1].usage is not None and chunks[-1].choices == []  # include_usage was set
    for outcome in result.outcomes:
        assert outcome.time_to_first_token is not None
        assert outcome.time_to_first_token >= 0  # measured from the request's start
    runner.close()


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_stream_billed_from_its_events(make_provider: MakeProvider, kind: str) -> None:
    provider = make_provider(latency=0.02)
    claude = Messages(
        anthropic_client(provider, kind),
        requests_per_minute=6000,
        input_tokens_per_minute=1_000_000,
        output_tokens_per_minute=1_000_000,
    )
    kinds: list[str] = []

    async def on_event(event: Any) -> None:  # an async callback is awaited
        kinds.append(event.type)

    runner = claude.runner(progress=False)
    for i in range(6):
        runner.schedule(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=user(f"stream {i}"),
            stream=True,
            on_chunk=on_event if kind == "async" else lambda event: kinds.append(event.type),
        )
    result = runner.run()
    stats = provider.stats()
    assert sum(o.usage["input_tokens_per_minute"] for o in result.outcomes) == stats.prompt_tokens
    assert (
        sum(o.usage["output_tokens_per_minute"] for o in result.outcomes) == stats.completion_tokens
    )
    message = result.results[0]
    assert message.type == "message" and message.content[0].text.startswith("stream 0")
    assert message.usage.output_tokens == 12
    assert kinds[0] == "message_start" and "message_delta" in kinds and kinds[-1] == "message_stop"
    assert all(o.time_to_first_token is not None for o in result.outcomes)
    runner.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_stream_is_retried_whole_and_its_partial_usage_billed(
    make_provider: MakeProvider, kind: str
) -> None:
    provider = make_provider(faults=Faults(stream_break=0.5), seed=3)
    claude = Messages(
        anthropic_client(provider, kind),
        requests_per_minute=6000,
        input_tokens_per_minute=1_000_000,
        output_tokens_per_minute=1_000_000,
    )
    runner = claude.runner(progress=False, max_retries=20, backoff=lambda n, e: 0.0)
    for i in range(10):
        runner.schedule(
            model="claude-haiku-4-5", max_tokens=50, messages=user(f"s{i}"), stream=True
        )
    result = runner.run()
    assert result.counts() == {"succeeded": 10}
    broken = [e for errors in result.exceptions for e in errors]
    assert broken and all(isinstance(e, StreamBrokenError) for e in broken)
    assert provider.stats().faults.get("stream_break") == len(broken)
    # Each broken attempt billed the input tokens its message_start reported, exactly.
    input_billed = sum(o.usage["input_tokens_per_minute"] for o in result.outcomes)
    assert input_billed == provider.stats().prompt_tokens
    for outcome in result.outcomes:
        partial_attempts = outcome.attempts - 1
        output = outcome.usage["output_tokens_per_minute"]
        if partial_attempts:  # what the broken streams sent, not their whole estimates
            assert 12 + partial_attempts <= output < 12 + partial_attempts * 50
        else:
            assert output == 12
    runner.close()


def test_a_broken_openai_stream_is_retried(make_provider: MakeProvider) -> None:
    provider = make_provider(faults=Faults(stream_break=0.5), seed=5)
    chat = ChatCompletions(openai_client(provider, "sync"))
    runner = Runner(
        chat, [actual_tokens()], max_retries=20, backoff=lambda n, e: 0.0, progress=False
    )
    for i in range(10):
        runner.schedule(model="gpt-4o-mini", messages=user(f"s{i}"), max_tokens=30, stream=True)
    result = runner.run()
    assert result.counts() == {"succeeded": 10}
    assert any(isinstance(e, StreamBrokenError) for errors in result.exceptions for e in errors)
    for outcome in result.outcomes:
        assert outcome.attempts == 1 + len(outcome.exceptions)
    runner.close()


def test_on_chunk_without_stream_is_refused_at_schedule() -> None:
    class Client:
        class chat:
            class completions:
                @staticmethod
                def create(**params: Any) -> Any:
                    raise AssertionError("never sent")

    chat = ChatCompletions(Client(), requests_per_minute=10, tokens_per_minute=10_000)
    runner = chat.runner(progress=False)
    with pytest.raises(ConfigurationError, match="stream=True"):
        runner.schedule(model="gpt-4o-mini", messages=user("x"), max_tokens=5, on_chunk=print)
    with pytest.raises(ConfigurationError, match="on_chunk must be a callable"):
        runner.schedule(
            model="gpt-4o-mini", messages=user("x"), max_tokens=5, stream=True, on_chunk=1
        )
    runner.close()


def test_online_streaming_call(make_provider: MakeProvider) -> None:
    provider = make_provider()
    chat = ChatCompletions(openai_client(provider, "async"))
    runner = chat.runner(progress=False)
    pieces: list[str] = []

    def collect(chunk: Any) -> None:
        pieces.extend(c.delta.content or "" for c in chunk.choices)

    async def main() -> Any:
        return await runner.call(
            model="gpt-4o-mini",
            messages=user("online"),
            max_tokens=20,
            stream=True,
            on_chunk=collect,
        )

    completion = asyncio.run(main())
    assert "".join(pieces) == completion.choices[0].message.content
    runner.close()


@pytest.mark.parametrize(
    "family", [pytest.param("openai", id="openai"), pytest.param("anthropic", id="anthropic")]
)
def test_an_answer_cut_short_by_max_tokens_is_an_answer(
    make_provider: MakeProvider, family: str
) -> None:
    provider = make_provider(output_tokens=40)
    if family == "openai":
        preset: Any = ChatCompletions(
            openai_client(provider, "sync"), requests_per_minute=6000, tokens_per_minute=10**6
        )
        model = "gpt-4o-mini"
    else:
        preset = Messages(
            anthropic_client(provider, "sync"),
            requests_per_minute=6000,
            input_tokens_per_minute=10**6,
            output_tokens_per_minute=10**6,
        )
        model = "claude-haiku-4-5"
    runner = preset.runner(progress=False, max_retries=0)
    response = runner.call_sync(model=model, messages=user("long"), max_tokens=5, stream=True)
    if family == "openai":
        assert response.choices[0].finish_reason == "length"
        assert response.usage.completion_tokens == 5
    else:
        assert response.stop_reason == "max_tokens" and response.usage.output_tokens == 5
    assert provider.stats().requests == 1
    runner.close()
