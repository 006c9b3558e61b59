"""MockProvider: wire formats checked with the real SDKs, limits, faults, statistics.

The rate-limit arithmetic is tested as pure code on a fake clock; the server tests use
small limits and ``max_retries=0`` so each 429 reaches the test, and sleep in real time
only for a fraction of a second.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from rate_limited.testing._buckets import TokenBucket, admit
from rate_limited.testing._faults import draw_fault
from rate_limited.testing._limits import format_duration
from rate_limited.testing._tokens import MEDIA_TOKENS, fit_tokens, messages_tokens
from rate_limited.testing.mock_provider import (
    Faults,
    Limits,
    MockProvider,
    count_tokens,
    prompt_digest,
)
from tests.conftest import MakeProvider


@pytest.fixture
def provider(make_provider: MakeProvider) -> MockProvider:
    return make_provider()


def oai(provider: MockProvider, **options: Any) -> openai.OpenAI:
    options.setdefault("api_key", "test")
    return openai.OpenAI(base_url=provider.base_url, max_retries=0, **options)


def claude(provider: MockProvider, **options: Any) -> anthropic.Anthropic:
    options.setdefault("api_key", "test")
    return anthropic.Anthropic(base_url=provider.anthropic_base_url, max_retries=0, **options)


def user(text: str) -> Any:  # Any: fits both SDKs' message TypedDicts
    return [{"role": "user", "content": text}]


def chat_prompt_tokens(text: str) -> int:
    """One user message: 3 for the reply, 4 for the message, then its text."""
    return 3 + 4 + count_tokens(text)


# -- tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        pytest.param("", 0, id="empty"),
        pytest.param("  \n\t ", 0, id="whitespace"),
        pytest.param("a", 1, id="short-word"),
        pytest.param("hello", 2, id="five-letters"),
        pytest.param("hi, you!", 4, id="punctuation"),
        pytest.param("don't", 3, id="apostrophe"),
        pytest.param("internationalization", 5, id="long-word"),
        pytest.param("x = 12345678", 4, id="code"),
    ],
)
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_message_tokens_count_overheads_and_media() -> None:
    assert messages_tokens(user("hi")) == 3 + 4 + 1
    parts = [
        {"type": "text", "text": "see this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    assert messages_tokens([{"role": "user", "content": parts}]) == 3 + 4 + 2 + MEDIA_TOKENS
    two = [{"role": "system", "content": "be brief"}, *user("hi")]
    assert messages_tokens(two) == 3 + (4 + 3) + (4 + 1)  # "be brief" is 1 + 2


@pytest.mark.parametrize("n_tokens", [0, 1, 2, 3, 7, 50])
def test_fit_tokens_is_exact_and_keeps_the_prefix_spelling(n_tokens: int) -> None:
    prefix = "Hello,  world! supercalifragilistic"
    text = fit_tokens(prefix, n_tokens, random.Random(0))
    assert count_tokens(text) == n_tokens
    if n_tokens >= 5:
        assert text.startswith("Hello,  world!")


# -- buckets, as pure code ---------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_refills_continuously() -> None:
    clock = FakeTime()
    bucket = TokenBucket(600, now=clock)  # 10 per second
    assert bucket.available() == 600
    assert bucket.try_consume(600)
    assert not bucket.try_consume(1)
    for elapsed in (0.05, 0.5, 7.3):
        before = bucket.available()
        clock.now += elapsed
        assert bucket.available() == pytest.approx(before + elapsed * 600 / 60)
    clock.now += 3600
    assert bucket.available() == 600  # never above the limit


def test_bucket_wait_time_and_reset() -> None:
    clock = FakeTime()
    bucket = TokenBucket(60, now=clock)  # 1 per second
    bucket.consume(60)
    assert bucket.wait_time(5) == pytest.approx(5.0)
    assert bucket.time_to_full() == pytest.approx(60.0)
    assert bucket.wait_time(61) == math.inf
    clock.now += 5.0
    assert bucket.wait_time(5) == 0.0  # exactly on time is on time (no float rounding)
    assert bucket.try_consume(5)


def test_bucket_refund_and_limit_changes() -> None:
    clock = FakeTime()
    bucket = TokenBucket(100, now=clock)
    bucket.consume(80)
    bucket.refund(50)
    assert bucket.available() == pytest.approx(70)
    bucket.refund(1000)
    assert bucket.available() == 100  # refunds never overfill
    bucket.consume(40)
    bucket.set_limit(200)  # what is in use stays in use
    assert bucket.available() == pytest.approx(160)
    bucket.set_limit(20)
    assert bucket.available() == pytest.approx(-20)  # a debt, refilled at the new rate
    clock.now += 60
    assert bucket.available() == pytest.approx(0)


def test_admit_takes_all_or_nothing() -> None:
    clock = FakeTime()
    requests = TokenBucket(60, now=clock, name="requests")
    tokens = TokenBucket(600, now=clock, name="tokens")
    assert admit([(requests, 1), (tokens, 500)]).admitted
    refused = admit([(requests, 1), (tokens, 200)])
    assert not refused.admitted
    assert refused.blocking is tokens
    assert refused.wait == pytest.approx(10.0)  # 100 missing at 10 per second
    assert requests.available() == pytest.approx(59)  # nothing taken from the other
    clock.now += 10
    assert admit([(requests, 1), (tokens, 200)]).admitted


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(0.1204, "121ms", id="millis-rounded-up"),
        pytest.param(1, "1s", id="second"),
        pytest.param(12.5, "12.5s", id="fraction"),
        pytest.param(360, "6m0s", id="minutes"),
        pytest.param(90.25, "1m30.25s", id="minutes-fraction"),
        pytest.param(3600, "1h0m0s", id="hour"),
    ],
)
def test_durations_are_formatted_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_limits_and_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=0)
    with pytest.raises(ValueError, match="sum"):
        Faults(error_500=0.6, drop=0.6)
    with pytest.raises(ValueError, match="probability"):
        Faults(hang=-0.1)


def test_fault_draws_are_seeded() -> None:
    faults = Faults(error_500=0.25, hang=0.25, malformed=0.25)
    first = [draw_fault(faults, random.Random(f"s:{i}")) for i in range(200)]
    again = [draw_fault(faults, random.Random(f"s:{i}")) for i in range(200)]
    assert first == again
    assert set(first) == {"error_500", "hang", "malformed", None}


# -- OpenAI wire format ------------------------------------------------------------------


def test_chat_completion_with_the_sync_client(provider: MockProvider) -> None:
    prompt = "Say 'hello' in French."  # 9 tokens: fits whole in the 12-token reply
    with oai(provider) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=user(prompt), max_tokens=50
        )
        completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    content = completion.choices[0].message.content
    assert content is not None and content.startswith(prompt)  # echoes the prompt
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == chat_prompt_tokens(prompt)
    assert usage.completion_tokens == 12 == count_tokens(content)
    assert usage.total_tokens == usage.prompt_tokens + 12
    assert "x-ratelimit-limit-requests" not in raw.headers  # unlimited: no headers


def test_chat_options_n_tools_json_and_images(make_provider: MakeProvider) -> None:
    provider = make_provider(output_tokens=20)
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    image: Any = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_text: Any = [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]
    with oai(provider) as client:
        several = client.chat.completions.create(
            model="m", messages=user("hi"), n=3, max_completion_tokens=5
        )
        as_json = client.chat.completions.create(
            model="m", messages=user("give json"), response_format={"type": "json_object"}
        )
        tool_call = client.chat.completions.create(
            model="m", messages=user("call it"), tools=tools, tool_choice="required"
        )
        with_image = client.chat.completions.create(model="m", messages=with_text)
    assert [c.finish_reason for c in several.choices] == ["length"] * 3
    assert several.usage is not None and several.usage.completion_tokens == 15
    assert json.loads(as_json.choices[0].message.content or "")["text"].startswith("give json")
    assert as_json.usage is not None and as_json.usage.completion_tokens == 20
    calls = tool_call.choices[0].message.tool_calls
    assert tool_call.choices[0].finish_reason == "tool_calls" and calls
    assert calls[0].type == "function" and calls[0].function.name == "lookup"
    assert with_image.usage is not None
    assert with_image.usage.prompt_tokens == 3 + 4 + 1 + MEDIA_TOKENS


def test_responses_api_parses_into_output_text(provider: MockProvider) -> None:
    with oai(provider) as client:
        response = client.responses.create(
            model="gpt-4o-mini", input="Name three rivers.", instructions="Be brief."
        )
        truncated = client.responses.create(model="m", input="x", max_output_tokens=4)
    assert response.output_text.startswith("Name three rivers.")
    assert response.usage is not None
    assert response.usage.input_tokens == chat_prompt_tokens("Name three rivers.") + count_tokens(
        "Be brief."
    )
    assert response.usage.output_tokens == 12 == count_tokens(response.output_text)
    assert response.status == "completed"
    assert truncated.status == "incomplete"
    assert truncated.usage is not None and truncated.usage.output_tokens == 4


def test_embeddings_are_deterministic_small_vectors(provider: MockProvider) -> None:
    with oai(provider) as client:
        first = client.embeddings.create(model="text-embedding-3-small", input=["cat", "dog"])
        floats = client.embeddings.create(
            model="text-embedding-3-small", input="cat", encoding_format="float", dimensions=4
        )
    assert [d.index for d in first.data] == [0, 1]
    assert len(first.data[0].embedding) == 16
    assert sum(v * v for v in first.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    assert first.data[0].embedding != first.data[1].embedding
    assert first.usage.prompt_tokens == 2 == first.usage.total_tokens
    assert len(floats.data[0].embedding) == 4
    with oai(provider) as client:
        again = client.embeddings.create(model="text-embedding-3-small", input=["cat", "dog"])
    assert again.data[0].embedding == first.data[0].embedding


def test_models_are_listed_in_both_formats(provider: MockProvider) -> None:
    with oai(provider) as client:
        assert "gpt-4o-mini" in [m.id for m in client.models.list()]
    with claude(provider) as client:
        assert "claude-haiku-4-5" in [m.id for m in client.models.list()]


def test_async_openai_answers_each_call_with_its_own_prompt(provider: MockProvider) -> None:
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=provider.base_url, api_key="test", max_retries=0
        ) as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(model="m", messages=user(f"call {i}"))
                    for i in range(40)
                )
            )
        return [r.choices[0].message.content or "" for r in replies]

    contents = asyncio.run(main())
    assert all(c.startswith(f"call {i} ") for i, c in enumerate(contents))


def test_reply_modes(make_provider: MakeProvider) -> None:
    hashed = make_provider(reply="hash")
    custom = make_provider(reply=lambda text: text.upper())
    with oai(hashed) as client:
        reply = client.chat.completions.create(model="m", messages=user("some prompt"))
    assert (reply.choices[0].message.content or "").startswith(prompt_digest("some prompt"))
    with oai(custom) as client:
        reply = client.chat.completions.create(model="m", messages=user("loud"))
    assert (reply.choices[0].message.content or "").startswith("LOUD")


def test_outputs_are_heavy_tailed_capped_and_seeded(make_provider: MakeProvider) -> None:
    lengths: list[list[int]] = []
    for _ in range(2):
        provider = make_provider(output_tokens=None, seed=7)
        with oai(provider) as client:
            lengths.append(
                [
                    client.chat.completions.create(
                        model="m", messages=user(f"q{i}"), max_tokens=400
                    ).usage.completion_tokens  # type: ignore[union-attr]
                    for i in range(40)
                ]
            )
    assert lengths[0] == lengths[1]
    assert max(lengths[0]) <= 400
    assert len(set(lengths[0])) > 10  # varied, not a constant


# -- Anthropic wire format ---------------------------------------------------------------


def test_anthropic_messages_with_the_sync_client(provider: MockProvider) -> None:
    with claude(provider) as client:
        message = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            system="You are terse.",
            messages=user("Hello, Claude"),
        )
    assert message.type == "message" and message.role == "assistant"
    block = message.content[0]
    assert block.type == "text" and block.text.startswith("Hello, Claude")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_tokens("You are terse.") + chat_prompt_tokens(
        "Hello, Claude"
    )
    assert message.usage.output_tokens == 12 == count_tokens(block.text)


def test_anthropic_async_client_and_tool_use(provider: MockProvider) -> None:
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]

    async def main() -> list[anthropic.types.Message]:
        async with anthropic.AsyncAnthropic(
            base_url=provider.anthropic_base_url, api_key="test", max_retries=0
        ) as client:
            plain = [
                client.messages.create(model="c", max_tokens=50, messages=user(f"n{i}"))
                for i in range(10)
            ]
            forced = client.messages.create(
                model="c",
                max_tokens=50,
                messages=user("use it"),
                tools=tools,
                tool_choice={"type": "tool", "name": "lookup"},
            )
            return await asyncio.gather(*plain, forced)

    *plain, forced = asyncio.run(main())
    assert [m.content[0].text.split()[0] for m in plain] == [  # type: ignore[union-attr]
        f"n{i}" for i in range(10)
    ]
    assert forced.stop_reason == "tool_use"
    assert forced.content[0].type == "tool_use" and forced.content[0].name == "lookup"


# -- errors ------------------------------------------------------------------------------


def test_client_errors_map_to_sdk_exceptions(make_provider: MakeProvider) -> None:
    provider = make_provider(api_key="sk-right")
    with oai(provider, api_key="sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=user("x"))
    with (
        claude(provider, api_key="sk-wrong") as client,
        pytest.raises(anthropic.AuthenticationError),
    ):
        client.messages.create(model="c", max_tokens=5, messages=user("x"))
    with oai(provider, api_key="sk-right") as client:
        with pytest.raises(openai.BadRequestError, match="messages"):
            client.chat.completions.create(model="m", messages=[])
        with pytest.raises(openai.BadRequestError, match="streaming"):
            client.responses.create(model="m", input="x", stream=True)
        with pytest.raises(openai.BadRequestError, match="stream_options"):
            client.chat.completions.create(
                model="m", messages=user("x"), stream_options={"include_usage": True}
            )
    with (
        claude(provider, api_key="sk-right") as client,
        pytest.raises(anthropic.BadRequestError) as bad,
    ):
        client.messages.create(model="c", max_tokens=0, messages=user("x"))
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    wrong_base = openai.OpenAI(base_url=provider.url + "/v2", api_key="sk-right", max_retries=0)
    with wrong_base as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m", messages=user("x"))
    with (
        anthropic.Anthropic(
            base_url=provider.base_url, api_key="sk-right", max_retries=0
        ) as client,
        pytest.raises(anthropic.NotFoundError, match="anthropic_base_url"),
    ):
        client.messages.create(model="c", max_tokens=5, messages=user("x"))


def test_raw_http_errors(provider: MockProvider) -> None:
    auth = {"authorization": "Bearer t"}
    with httpx.Client(base_url=provider.url) as http:
        assert http.post("/v1/chat/completions", json={"model": "m"}).status_code == 401
        missing = http.post("/v1/messages", json={}, headers={"anthropic-version": "2023-06-01"})
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        bad_json = http.post("/v1/chat/completions", content=b"{nope", headers=auth)
        assert bad_json.status_code == 400
        assert bad_json.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/v1/chat/completions", headers=auth).status_code == 405
        assert http.post("/v1/nothing", json={}, headers=auth).status_code == 404
        chunked = http.post(
            "/v1/chat/completions",
            content=iter([b'{"model": "m", "messages": ', b'[{"role": "user", "content": "hi"}]}']),
            headers=auth,
        )
        assert chunked.status_code == 200
        assert chunked.json()["usage"]["prompt_tokens"] == chat_prompt_tokens("hi")


# -- rate limits -------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after(make_provider: MakeProvider) -> None:
    # The provider's clock stands still, so the bucket refills by nothing between the
    # requests however slow the machine (real time lost 0.2% of a request under load).
    provider = make_provider(rpm=3, tpm=100_000, clock=lambda: 1000.0)
    with oai(provider) as client:
        for expected_remaining in ("2", "1", "0"):
            raw = client.chat.completions.with_raw_response.create(model="m", messages=user("x"))
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == expected_remaining
            assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="m", messages=user("x"))
    headers = refused.value.response.headers
    assert headers["retry-after"] == "20"  # one request back every 20 s
    assert headers["retry-after-ms"] == "20000"
    assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?s", headers["x-ratelimit-reset-requests"])
    assert refused.value.body["type"] == "requests"  # type: ignore[index]
    assert refused.value.code == "rate_limit_exceeded"
    stats = provider.stats()
    assert (stats.admitted, stats.rejected, stats.by_status) == (3, 1, {200: 3, 429: 1})
    assert stats.peak_usage["openai.requests[m]"] == 1.0


def test_tpm_counts_prompt_plus_max_tokens_times_n(make_provider: MakeProvider) -> None:
    # The provider's clock stands still: the bucket refills by nothing between requests,
    # however slow the machine (real time made Retry-After drift by 70 ms under load).
    provider = make_provider(tpm=1000, refund_unused_output=False, clock=lambda: 1000.0)
    cost = chat_prompt_tokens("x") + 2 * 150
    with oai(provider) as client:
        for _ in range(1000 // cost):
            client.chat.completions.create(model="m", messages=user("x"), max_tokens=150, n=2)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="m", messages=user("x"), max_tokens=150, n=2)
        with pytest.raises(openai.RateLimitError) as too_big:
            client.chat.completions.create(model="m", messages=user("x"), max_tokens=2000)
    wait = (cost - (1000 - 3 * cost)) / (1000 / 60)
    headers = refused.value.response.headers
    assert headers["retry-after"] == str(math.ceil(wait))
    assert int(headers["retry-after-ms"]) == pytest.approx(wait * 1000, abs=1)
    assert int(headers["x-ratelimit-remaining-tokens"]) == 1000 - 3 * cost
    assert refused.value.body["type"] == "tokens"  # type: ignore[index]
    assert too_big.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in too_big.value.response.headers


@pytest.mark.parametrize(
    "refund",
    [pytest.param(None, id="documented-no-refund"), pytest.param(True, id="refund")],
)
def test_unused_output_is_kept_as_openai_documents_or_refunded(
    make_provider: MakeProvider, refund: bool | None
) -> None:
    provider = make_provider(tpm=10_000, default_max_tokens=1000, refund_unused_output=refund)
    assert provider.refunds == {"openai": bool(refund), "anthropic": True}
    prompt = chat_prompt_tokens("x")
    with oai(provider) as client:
        client.chat.completions.create(model="m", messages=user("x"), max_tokens=500)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=user("x"))
    # The second request holds prompt + 1000 reserved (default_max_tokens); the first keeps
    # prompt + 500 (OpenAI: max_tokens counts, used or not) or prompt + 12 if refunded.
    kept = 12 if refund else 500
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert 10_000 - (prompt + kept) - (prompt + 1000) <= remaining
    assert remaining <= 10_000 - (prompt + kept) - (prompt + 1000) + 5  # refill meanwhile
    assert provider.stats().reserved_output_tokens == 1500


def test_refill_is_continuous_through_the_server(make_provider: MakeProvider) -> None:
    now = [1000.0]  # the provider's clock, moved by the test: no real time passes
    provider = make_provider(  # 100 tokens per second
        tpm=6000, refund_unused_output=False, clock=lambda: now[0]
    )
    prompt = chat_prompt_tokens("x")
    with oai(provider) as client:
        client.chat.completions.create(model="m", messages=user("x"), max_tokens=6000 - prompt)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=user("x"), max_tokens=1)
        now[0] += 0.25  # 25 tokens come back (0.25 s: exact in binary)
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=user("x"), max_tokens=1
        )
    # 0.25 s gave back 25 tokens, not a window
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 25 - prompt - 1


def test_anthropic_input_and_output_buckets(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=100, input_tpm=30, output_tpm=10_000)
    prompt = chat_prompt_tokens("hello there")  # 3 + 4 + 4
    with claude(provider) as client:
        first = client.messages.with_raw_response.create(
            model="c", max_tokens=4000, messages=user("hello there")
        )
        second = client.messages.with_raw_response.create(
            model="c", max_tokens=4000, messages=user("hello there")
        )
        with pytest.raises(anthropic.RateLimitError) as refused:
            client.messages.create(model="c", max_tokens=4000, messages=user("hello there"))
    # Token counts are "rounded to the nearest thousand"; requests are exact.
    assert first.headers["anthropic-ratelimit-output-tokens-remaining"] == "6000"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "99"
    # The first answer's unused 3988 reserved tokens came back when it was sent (Anthropic
    # adjusts OTPM to the actual output at the end): 5988 left, not 2000.
    assert second.headers["anthropic-ratelimit-output-tokens-remaining"] == "6000"
    assert second.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"  # 8, rounded
    headers = refused.value.response.headers
    assert headers["retry-after"] == str(math.ceil((prompt - (30 - 2 * prompt)) / 0.5))
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    # RFC 3339 with "Z", as Anthropic sends it (fromisoformat reads "Z" from Python 3.11 on)
    reset_text = headers["anthropic-ratelimit-input-tokens-reset"]
    assert reset_text.endswith("Z")
    reset = datetime.fromisoformat(reset_text.removesuffix("Z") + "+00:00")
    assert reset.tzinfo is not None
    assert headers["anthropic-ratelimit-requests-limit"] == "100"


def test_limits_change_at_runtime_and_per_model(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=1, model_limits={"big": Limits(rpm=100)})
    with oai(provider) as client:
        client.chat.completions.create(model="m", messages=user("x"))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=user("x"))
        client.chat.completions.create(model="big", messages=user("x"))  # its own limits
        client.chat.completions.create(model="n", messages=user("x"))  # its own bucket
        provider.set_limits(rpm=None)
        client.chat.completions.create(model="m", messages=user("x"))
        provider.set_limits(rpm=2, tpm=50)
        assert provider.limits() == Limits(rpm=2, tpm=50)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=user("x"), max_tokens=100)
        provider.set_limits(tpm=None)
        provider.refill()
        client.chat.completions.create(model="m", messages=user("x"), max_tokens=100)
    assert set(provider.stats().peak_usage) >= {
        "openai.requests[m]",
        "openai.requests[n]",
        "openai.requests[big]",
    }


def test_models_can_share_buckets(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=1, per_model=False, model_limits={"big": Limits(rpm=100)})
    with oai(provider) as client:
        client.chat.completions.create(model="m", messages=user("x"))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="n", messages=user("x"))  # m's bucket
        client.chat.completions.create(model="big", messages=user("x"))
    assert set(provider.stats().peak_usage) == {"openai.requests", "openai.requests[big]"}


# -- faults ------------------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except openai.InternalServerError:
        return "500"
    except openai.APIConnectionError:
        return "drop"
    except json.JSONDecodeError:
        return "malformed"
    return "ok"


def test_faults_are_seeded_and_reproducible(make_provider: MakeProvider) -> None:
    faults = Faults(error_500=0.2, malformed=0.2, drop=0.2)
    runs: list[list[str]] = []
    for seed in (3, 3, 4):
        provider = make_provider(faults=faults, seed=seed)
        with oai(provider) as client:
            runs.append(
                [
                    outcome(
                        lambda i=i: client.chat.completions.create(  # type: ignore[misc]
                            model="m",
                            messages=user(f"q{i % 20}"),  # each prompt twice
                        )
                    )
                    for i in range(40)
                ]
            )
        stats = provider.stats()
        kinds = {"500": "error_500", "drop": "drop", "malformed": "malformed"}
        expected = {kinds[o]: runs[-1].count(o) for o in kinds if o in runs[-1]}
        assert stats.faults == expected
        assert stats.admitted == 40 and stats.rejected == 0
        assert [e.fault for e in provider.request_log] == [kinds.get(o) for o in runs[-1]]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert set(runs[0]) == {"ok", "500", "drop", "malformed"}
    assert runs[0][:20] != runs[0][20:]  # a repeated request draws afresh


def test_faults_change_no_other_answer(make_provider: MakeProvider) -> None:
    clean = make_provider(seed=1, output_tokens=None)
    faulty = make_provider(seed=1, output_tokens=None, faults=Faults(error_500=0.5))
    answers: list[dict[str, str]] = []
    for provider in (clean, faulty):
        got: dict[str, str] = {}
        with oai(provider) as client:
            for i in range(20):
                try:
                    reply = client.chat.completions.create(model="m", messages=user(f"p{i}"))
                except openai.InternalServerError:
                    continue
                got[f"p{i}"] = reply.choices[0].message.content or ""
        answers.append(got)
    assert 0 < len(answers[1]) < 20
    assert all(answers[0][key] == text for key, text in answers[1].items())


def test_faulted_requests_keep_their_charge(make_provider: MakeProvider) -> None:
    provider = make_provider(tpm=1000, faults=Faults(error_500=1.0))
    with oai(provider) as client, pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="m", messages=user("x"), max_tokens=500)
    remaining = int(failed.value.response.headers["x-ratelimit-remaining-tokens"])
    assert remaining == 1000 - chat_prompt_tokens("x") - 500
    provider.set_faults(None)
    with oai(provider) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=user("x"), max_tokens=1
        )
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < remaining  # no refund came


def test_a_hang_longer_than_the_timeout_times_the_client_out(make_provider: MakeProvider) -> None:
    provider = make_provider(faults=Faults(hang=1.0, hang_seconds=30))
    with oai(provider, timeout=0.2) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=user("x"))
    provider.stop()  # does not wait for the hang's 30 s (pytest-timeout would catch it)
    assert provider.request_log[0].fault == "hang" and provider.request_log[0].status is None


# -- statistics and request log ----------------------------------------------------------


def test_stats_and_request_log(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=600, tpm=100_000)
    with oai(provider) as client:
        for text in ("same", "same", "other"):
            client.chat.completions.create(model="m", messages=user(text), max_tokens=100)
        client.embeddings.create(model="e", input="vector")
    stats = provider.stats()
    assert (stats.requests, stats.admitted, stats.rejected) == (4, 4, 0)
    assert stats.by_status == {200: 4}
    assert stats.prompt_tokens == 2 * chat_prompt_tokens("same") + chat_prompt_tokens(
        "other"
    ) + count_tokens("vector")
    assert stats.completion_tokens == 3 * 12
    assert stats.reserved_output_tokens == 300
    assert stats.first_admission is not None and stats.last_admission is not None
    assert 0 < stats.admission_span < 5
    assert 0 < stats.peak_usage["openai.tokens[m]"] <= 1
    assert stats.peak_in_flight == 1
    log = provider.request_log
    assert [e.endpoint for e in log] == ["chat.completions"] * 3 + ["embeddings"]
    assert log[0].body_hash == log[1].body_hash != log[2].body_hash
    assert [e.completion_tokens for e in log] == [12, 12, 12, 0]
    assert all(e.status == 200 and e.fault is None for e in log)
    assert log == sorted(log, key=lambda e: e.time)
    provider.reset_stats()
    assert provider.stats().requests == 0 and provider.request_log == []


async def _raw_requests(port: int, connections: int, per_connection: int) -> list[int]:
    body = json.dumps({"model": "m", "messages": user("hi"), "max_tokens": 5}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nauthorization: Bearer t\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def one_connection() -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        for _ in range(per_connection):
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = int(re.search(r"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            statuses.append(int(head.split()[1]))
        writer.close()
        await writer.wait_closed()
        return statuses

    results = await asyncio.gather(*(one_connection() for _ in range(connections)))
    return [status for statuses in results for status in statuses]


def test_serves_500_concurrent_connections(make_provider: MakeProvider) -> None:
    provider = make_provider(latency=1.0)
    statuses = asyncio.run(_raw_requests(provider.port, 500, 1))
    assert statuses == [200] * 500
    assert provider.stats().peak_in_flight == 500


def test_throughput_on_keep_alive_connections(make_provider: MakeProvider) -> None:
    provider = make_provider(log_requests=False)
    statuses = asyncio.run(_raw_requests(provider.port, 20, 100))  # 100 per connection
    assert statuses == [200] * 2000
    assert provider.request_log == []


# -- lifecycle and command line ----------------------------------------------------------


def test_lifecycle() -> None:
    provider = MockProvider()
    with pytest.raises(RuntimeError, match="not started"):
        _ = provider.base_url
    threads = threading.active_count()
    with provider:
        assert provider.base_url == f"http://127.0.0.1:{provider.port}/v1"
        assert provider.anthropic_base_url == f"http://127.0.0.1:{provider.port}"
        with pytest.raises(RuntimeError, match="already running"):
            provider.start()
    assert threading.active_count() == threads
    provider.stop()  # idempotent
    with pytest.raises(RuntimeError, match="restarted"):
        provider.start()
    with MockProvider() as taken, pytest.raises(OSError):
        MockProvider(port=taken.port).start()


def test_command_line_serves_until_interrupted() -> None:
    code = (
        "from rate_limited.cli.mock_provider import main; "
        "raise SystemExit(main(['--port', '0', '--rpm', '5', '--seed', '1']))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        with oai_url(base_url) as client:
            client.chat.completions.create(model="m", messages=user("x"))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "served 1 requests: 1 admitted" in err


def oai_url(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
