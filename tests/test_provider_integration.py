"""The presets with the real ``openai`` and ``anthropic`` clients against the MockProvider.

Sync and async clients, through the Runner: results right and in order, zero 429s at the
limit (RPM-, TPM- and output-bound), limits discovered from the headers, a key shared with
another client, and fault injection where nothing may hang.

Sync clients talk HTTP to a MockProvider server on 127.0.0.1, in real time: limits are
scaled so each test saturates its bucket (a MockProvider bucket starts full: a minute of
quota at once) within a few seconds. The async clients of the workloads at the limit talk
to the same MockProvider in-process (``MockProvider.transport()``) on the Runner's
``FakeClock``: the SDK, the preset and the Runner are the same, the clock is virtual, so
those tests take no real time and no load on the machine can change what they measure.
The HTTP path of async clients stays covered by the tests that need a socket (client
timeouts, results in order).
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from rate_limited import Runner, exponential_backoff
from rate_limited.apis.anthropic import AsyncMessages, Messages
from rate_limited.apis.openai import (
    AsyncChatCompletions,
    ChatCompletions,
    Embeddings,
    RequestTooLargeError,
    Responses,
    openai_chat_resources,
)
from rate_limited.testing import FakeClock, Faults, MockProvider
from tests.conftest import MakeProvider
from tests.shared import closed_after_test

# Made-up model names ("m", "c"...): their cost is None, and a PriceWarning says so once
# per preset (tests/test_spend.py checks it); here it is not the point.
pytestmark = pytest.mark.filterwarnings("ignore::rate_limited.exceptions.PriceWarning")

FAST_RETRIES = exponential_backoff(initial=0.02, maximum=0.2)

# Sync clients are closed after each test (``closed_after_test``). Async ones keep no
# connection open (their connections live on the Runner's loop, where nothing could close
# them afterwards).


def _no_keepalive(sdk: Any) -> Any:
    http = sys.modules[sdk.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]]
    return sdk.DefaultAsyncHttpxClient(limits=http.Limits(max_keepalive_connections=0))


def openai_client(provider: MockProvider, kind: str, **options: Any) -> Any:
    options.setdefault("timeout", 10.0)
    options.setdefault("api_key", "test")
    if kind == "async":
        options["http_client"] = _no_keepalive(openai)
        return openai.AsyncOpenAI(base_url=provider.base_url, **options)
    client = openai.OpenAI(base_url=provider.base_url, **options)
    return closed_after_test(client)


def anthropic_client(provider: MockProvider, kind: str, **options: Any) -> Any:
    options.setdefault("timeout", 10.0)
    options.setdefault("api_key", "test")
    base_url = provider.anthropic_base_url
    if kind == "async":
        options["http_client"] = _no_keepalive(anthropic)
        return anthropic.AsyncAnthropic(base_url=base_url, **options)
    client = anthropic.Anthropic(base_url=base_url, **options)
    return closed_after_test(client)


@dataclass
class Mock:
    """A MockProvider as a test of one client kind uses it: a real HTTP server for a sync
    client; for an async one, in-process on a FakeClock that the Runner shares."""

    provider: MockProvider
    clock: FakeClock | None

    def openai(self, kind: str, **options: Any) -> Any:
        if self.clock is None:
            return openai_client(self.provider, kind, **options)
        options.setdefault("api_key", "test")
        http = openai.DefaultAsyncHttpxClient(transport=self.provider.transport(openai))
        return warm(openai.AsyncOpenAI(base_url="http://mock/v1", http_client=http, **options))

    def anthropic(self, kind: str, **options: Any) -> Any:
        if self.clock is None:
            return anthropic_client(self.provider, kind, **options)
        options.setdefault("api_key", "test")
        http = anthropic.DefaultAsyncHttpxClient(transport=self.provider.transport(anthropic))
        return warm(anthropic.AsyncAnthropic(base_url="http://mock", http_client=http, **options))

    @property
    def runner_options(self) -> dict[str, Any]:
        return (
            {"progress": False} if self.clock is None else {"progress": False, "clock": self.clock}
        )


def mock(make_provider: MakeProvider, kind: str, **options: Any) -> Mock:
    if kind == "sync":
        return Mock(make_provider(**options), None)
    clock = FakeClock()
    options.setdefault("output_tokens", 12)
    return Mock(MockProvider(clock=clock.time, **options), clock)


def warm(client: Any) -> Any:
    """Make an async client's first request now: the SDKs read the platform in a thread on
    their first one, and a FakeClock loop jumps to its next timer while a thread works."""

    async def first() -> None:
        await client.models.list()

    asyncio.run(first())
    return client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


KINDS = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]


# -- results --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_chat_results_come_back_in_order(make_provider: MakeProvider, kind: str) -> None:
    provider = make_provider(rpm=6000, tpm=1_000_000, latency=0.01, jitter=0.05)
    chat = ChatCompletions(
        openai_client(provider, kind), requests_per_minute=6000, tokens_per_minute=1_000_000
    )
    assert isinstance(chat, AsyncChatCompletions) == (kind == "async")
    runner = chat.runner(progress=False)
    for i in range(40):
        runner.schedule(model="gpt-4o-mini", messages=user(f"question {i}"), max_tokens=20)
    result = runner.run()
    assert [r.choices[0].message.content.split()[:2] for r in result.results] == [
        ["question", str(i)] for i in range(40)
    ]
    assert not any(result.exceptions)
    first = result.outcomes[0]
    # OpenAI's rule: billed the prompt + max_tokens reserved, though 12 were generated
    assert first.call is not None
    estimate = first.call.demand[1][1]
    assert estimate >= 3 + 4 + 3 + 20
    assert first.usage == {"requests_per_minute": 1.0, "tokens_per_minute": estimate}
    assert provider.stats().requests == 40


@pytest.mark.parametrize("kind", KINDS)
def test_responses_and_embeddings(make_provider: MakeProvider, kind: str) -> None:
    provider = make_provider(rpm=6000, tpm=1_000_000)
    client = openai_client(provider, kind)
    responses = Responses(client, requests_per_minute=6000, tokens_per_minute=1_000_000)
    runner = Runner(responses, responses.resources, progress=False)
    for i in range(5):
        runner.schedule(model="gpt-4.1-mini", input=f"answer {i}", max_output_tokens=30)
    texts = [r.output_text.split()[:2] for r in runner.run().results]
    assert texts == [["answer", str(i)] for i in range(5)]
    embeddings = Embeddings(client, requests_per_minute=6000, tokens_per_minute=1_000_000)
    runner = embeddings.runner(progress=False)
    runner.schedule(model="text-embedding-3-small", input=["a", "b c"])
    result = runner.run()
    assert len(result.results[0].data) == 2
    assert result.outcomes[0].usage["tokens_per_minute"] == 3  # "a" and "b c"


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_messages(make_provider: MakeProvider, kind: str) -> None:
    provider = make_provider(rpm=6000, input_tpm=1_000_000, output_tpm=1_000_000)
    claude = Messages(
        anthropic_client(provider, kind),
        requests_per_minute=6000,
        input_tokens_per_minute=1_000_000,
        output_tokens_per_minute=1_000_000,
    )
    assert isinstance(claude, AsyncMessages) == (kind == "async")
    runner = claude.runner(progress=False)
    for i in range(10):
        runner.schedule(model="claude-haiku-4-5", max_tokens=50, messages=user(f"hi {i}"))
    result = runner.run()
    assert [r.content[0].text.split()[:2] for r in result.results] == [
        ["hi", str(i)] for i in range(10)
    ]
    assert result.outcomes[0].usage == {
        "requests_per_minute": 1.0,
        "input_tokens_per_minute": 3 + 4 + 1 + 1,
        "output_tokens_per_minute": 12,
    }


# -- at the limit: zero 429s ------------------------------------------------------------------
def _saturate(runner: Runner, count: int, **params: Any) -> tuple[Any, float]:
    for i in range(count):
        runner.schedule(model="gpt-4o-mini", messages=user(f"request {i}"), **params)
    started = time.monotonic()
    result = runner.run()
    return result, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_rpm_bound_workload_gets_no_429(make_provider: MakeProvider, kind: str) -> None:
    """600 RPM: the first 600 at once (a full bucket), the next 50 at 10 per second."""
    m = mock(make_provider, kind, rpm=600, latency=0.02)
    provider = m.provider
    chat = ChatCompletions(m.openai(kind), requests_per_minute=600)
    runner = chat.runner(**m.runner_options)
    result, _ = _saturate(runner, 650, max_tokens=20)
    assert all(r is not None for r in result.results)
    stats = provider.stats()
    assert stats.rejected == 0
    # Ran at the limit, as the provider itself measured (its bucket full at admission).
    assert stats.peak_usage["openai.requests[gpt-4o-mini]"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "refund"),
    [
        pytest.param("sync", None, id="sync-openai-rule"),
        pytest.param("async", None, id="async-openai-rule"),
        pytest.param("async", True, id="async-refunds"),
    ],
)
def test_tpm_bound_workload_gets_no_429(
    make_provider: MakeProvider, kind: str, refund: bool | None
) -> None:
    """60,000 TPM, each call ~520 tokens but reserving ~1,020 (max_tokens 1000): the
    provider keeps the 1,020 (OpenAI's rule: 59 at once, then one a second) or hands 500
    back (found from its headers: then about two a second)."""
    m = mock(
        make_provider,
        kind,
        tpm=60_000,
        rpm=10_000,
        output_tokens=500,
        latency=0.05,
        refund_unused_output=refund,
    )
    provider = m.provider
    chat = ChatCompletions(m.openai(kind), tokens_per_minute=60_000, requests_per_minute=10_000)
    runner = chat.runner(**m.runner_options)
    result, _ = _saturate(runner, 140 if refund else 70, max_tokens=1000)
    assert all(r is not None for r in result.results)
    stats = provider.stats()
    assert stats.rejected == 0
    assert stats.peak_usage["openai.tokens[gpt-4o-mini]"] >= 0.95  # by the provider's count


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_output_bound_workload_gets_no_429(
    make_provider: MakeProvider, kind: str
) -> None:
    m = mock(
        make_provider, kind, rpm=10_000, input_tpm=1_000_000, output_tpm=6_000, output_tokens=60
    )
    provider = m.provider
    claude = Messages(
        m.anthropic(kind),
        requests_per_minute=10_000,
        input_tokens_per_minute=1_000_000,
        output_tokens_per_minute=6_000,
    )
    runner = claude.runner(**m.runner_options)
    for i in range(103):
        runner.schedule(model="claude-haiku-4-5", max_tokens=200, messages=user(f"q {i}"))
    result = runner.run()
    assert all(r is not None for r in result.results)
    stats = provider.stats()
    assert stats.rejected == 0
    # At the limit; Anthropic's headers round to the thousand (500 of this 6,000 limit),
    # and the ledger reads them at their low end: the level may stay that much below.
    assert stats.peak_usage["anthropic.output_tokens[claude-haiku-4-5]"] >= 0.9


# -- unknown limits --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_limits_are_discovered_from_the_headers(make_provider: MakeProvider, kind: str) -> None:
    m = mock(make_provider, kind, tpm=60_000, rpm=6000, output_tokens=500, latency=0.2)
    provider = m.provider
    chat = ChatCompletions(m.openai(kind))
    assert chat.limits == {"requests_per_minute": None, "tokens_per_minute": None}
    runner = chat.runner(**m.runner_options)
    result, _ = _saturate(runner, 70, max_tokens=1000)
    assert all(r is not None for r in result.results)
    assert chat.limits == {"requests_per_minute": 6000, "tokens_per_minute": 60_000}
    assert provider.stats().rejected == 0
    log = [entry for entry in provider.request_log if entry.endpoint == "chat.completions"]
    assert log[1].time >= log[0].time + 0.2  # one probe first: no storm before the headers


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_limits_are_discovered(make_provider: MakeProvider, kind: str) -> None:
    provider = make_provider(rpm=3000, input_tpm=100_000, output_tpm=20_000)
    claude = Messages(anthropic_client(provider, kind))
    runner = claude.runner(progress=False)
    for i in range(20):
        runner.schedule(model="claude-haiku-4-5", max_tokens=100, messages=user(f"q {i}"))
    assert all(r is not None for r in runner.run().results)
    assert claude.limits == {
        "requests_per_minute": 3000,
        "input_tokens_per_minute": 100_000,
        "output_tokens_per_minute": 20_000,
    }


def test_a_limit_the_provider_does_not_have_is_unlimited(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=6000)  # no token limit: no token headers
    chat = ChatCompletions(openai_client(provider, "sync"))
    runner = chat.runner(progress=False)
    _saturate(runner, 30, max_tokens=20)
    assert chat.limits == {"requests_per_minute": 6000, "tokens_per_minute": float("inf")}


# -- a key shared with another client ---------------------------------------------------------
@pytest.mark.parametrize(
    "feedback", [pytest.param(True, id="headers-read"), pytest.param(False, id="headers-ignored")]
)
def test_headers_correct_the_ledger_on_a_shared_key(
    make_provider: MakeProvider, feedback: bool
) -> None:
    """Another client on the key has just used (almost) the whole token bucket with a long
    prompt; the preset believes it has 60,000 TPM to itself. Reading the headers, its
    ledger learns what is left from the first answers and paces itself on the refill.
    Ignoring them, it learns from the 429s instead: each one bills the ledger what it
    believed free (the provider had less than the call needed), so they do not go on.
    No call is lost either way: 429s do not use up retries (max_retries=0 here)."""
    provider = make_provider(tpm=60_000, output_tokens=100)
    other = openai_client(provider, "sync", max_retries=0)
    other.chat.completions.create(
        model="gpt-4o-mini", messages=user("word " * 59_800), max_tokens=10
    )
    chat = ChatCompletions(
        openai_client(provider, "sync"), requests_per_minute=10_000, tokens_per_minute=60_000
    )
    function: Any = chat if feedback else (lambda **params: chat(**params))
    runner = Runner(function, chat.resources, max_concurrent=4, max_retries=0, progress=False)
    result, _ = _saturate(runner, 20, max_tokens=100)  # ~110 tokens each, 1,000/s refill
    assert all(r is not None for r in result.results)
    ours = sum(isinstance(e, openai.RateLimitError) for errors in result.exceptions for e in errors)
    # Only the first attempts, sent before the ledger learned: from the headers of the
    # first answers, or from the first refusals.
    assert ours <= (4 if feedback else 8)


# -- faults: every call ends, nothing hangs ----------------------------------------------------
FAULTS = Faults(error_500=0.10, hang=0.02, malformed=0.02, hang_seconds=20.0)
#: Far above a 10 ms answer even on a stalled 2-core CI machine, far below a hang.
TIMEOUT = 4.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "where", [pytest.param("client", id="client-timeout"), pytest.param("runner", id="runner")]
)
def test_faults_end_every_call_and_nothing_hangs(
    make_provider: MakeProvider, kind: str, where: str
) -> None:
    """10% 500s, 2% hangs past the timeout, 2% malformed bodies: each call ends with its
    right result, every fault is one recorded attempt, and the run ends in seconds.

    The timeout is real wall-clock time (it is what is under test), so the counts allow
    for a machine stalled past it: an answered attempt cut short shows up as one more
    timeout, and a 500 or malformed body cut short is recorded as a timeout instead. Any
    other difference between what the server injected and what the Runner recorded is a
    fault lost or invented."""
    provider = make_provider(rpm=60_000, tpm=6_000_000, faults=FAULTS, latency=0.01)
    timeout = {"timeout": TIMEOUT} if where == "client" else {"timeout": 30.0}
    chat = ChatCompletions(
        openai_client(provider, kind, **timeout),
        requests_per_minute=60_000,
        tokens_per_minute=6_000_000,
    )
    runner = chat.runner(
        progress=False,
        max_concurrent=32,
        backoff=FAST_RETRIES,
        timeout=TIMEOUT if where == "runner" else 30.0,
    )
    result, _ = _saturate(runner, 300, max_tokens=20)  # pytest-timeout guards a hang
    for i, value in enumerate(result.results):
        assert value is not None, result.exceptions[i]
        assert value.choices[0].message.content.split()[:2] == ["request", str(i)]
    faults = provider.stats().faults
    assert set(faults) == {"error_500", "hang", "malformed"}
    errors = collections.Counter(type(e).__name__ for es in result.exceptions for e in es)
    hang_error = "APITimeoutError" if where == "client" else "CallTimeoutError"
    assert set(errors) <= {"InternalServerError", hang_error, "JSONDecodeError"}, errors
    timeouts = errors[hang_error]
    assert timeouts >= faults["hang"]  # every hang is a recorded timeout
    cut_short = timeouts - faults["hang"]  # 0 unless the machine stalled past TIMEOUT
    for error, fault in (("InternalServerError", "error_500"), ("JSONDecodeError", "malformed")):
        assert faults[fault] - cut_short <= errors[error] <= faults[fault]
    assert sum(errors.values()) >= sum(faults.values())


def test_client_errors_are_not_retried(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=6000, api_key="right")
    chat = ChatCompletions(openai_client(provider, "sync"), requests_per_minute=6000)
    runner = chat.runner(progress=False, backoff=FAST_RETRIES)
    runner.schedule(model="m", messages=[], max_tokens=5)  # 400: empty messages
    result = runner.run()
    assert [type(e) for e in result.exceptions[0]] == [openai.AuthenticationError]
    chat = ChatCompletions(
        openai_client(provider, "sync", api_key="right"), requests_per_minute=6000
    )
    runner = chat.runner(progress=False, backoff=FAST_RETRIES)
    runner.schedule(model="m", messages=[], max_tokens=5)
    assert [type(e) for e in runner.run().exceptions[0]] == [openai.BadRequestError]


def test_a_call_larger_than_a_discovered_limit(make_provider: MakeProvider) -> None:
    """Known from the headers, the limit refuses too large a call at schedule(); scheduled
    before, such a call is sent once and fails for good: the provider says no retry helps."""
    provider = make_provider(tpm=1000, rpm=600)
    chat = ChatCompletions(openai_client(provider, "sync"))
    runner = chat.runner(progress=False, backoff=FAST_RETRIES)
    runner.schedule(model="m", messages=user("small"), max_tokens=10)
    assert runner.run().results[0] is not None
    assert chat.limits == {"requests_per_minute": 600, "tokens_per_minute": 1000}
    with pytest.raises(ValueError, match="provider's limit for m is 1000"):
        runner.schedule(model="m", messages=user("too large"), max_tokens=5000)
    other = openai_client(provider, "sync", max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        other.chat.completions.create(model="m", messages=user("x"), max_tokens=5000)
    replacement = chat._failed(refused.value)
    assert isinstance(replacement, RequestTooLargeError)
    assert replacement.status_code == 429


def test_the_sdk_does_not_retry_behind_the_runner(make_provider: MakeProvider) -> None:
    provider = make_provider(rpm=6000, faults=Faults(error_500=1.0))
    client = openai_client(provider, "sync")
    assert client.max_retries == 2
    chat = ChatCompletions(client, requests_per_minute=6000)
    assert chat.client.max_retries == 0
    runner = chat.runner(progress=False, max_retries=1, backoff=FAST_RETRIES)
    runner.schedule(model="m", messages=user("x"), max_tokens=5)
    result = runner.run()
    assert len(result.exceptions[0]) == 2
    assert provider.stats().requests == 2  # one per Runner attempt, none hidden


# -- rate_limited 0.4's helper ---------------------------------------------------------------
@pytest.mark.parametrize(
    "as_dict", [pytest.param(True, id="dict-responses"), pytest.param(False, id="objects")]
)
def test_04_openai_chat_resources(make_provider: MakeProvider, as_dict: bool) -> None:
    provider = make_provider(rpm=600, tpm=20_000, output_tokens=40, latency=0.02)
    client = openai_client(provider, "sync", max_retries=0)

    def create(**params: Any) -> Any:
        response = client.chat.completions.create(**params)
        return response.model_dump() if as_dict else response

    resources = openai_chat_resources(600, 20_000, model_max_len=4096)
    assert [(r.name, r.quota, r.refill) for r in resources] == [
        ("requests_per_minute", 600, "bucket"),
        ("tokens_per_minute", 20_000, "bucket"),  # no 5% margin any more
    ]
    runner = Runner(create, resources, progress=False)
    for i in range(60):  # 60 x (~10 + 200 reserved): a saturated bucket after the first ~90
        runner.schedule(model="m", messages=user(f"q {i}"), max_tokens=200)
    result = runner.run()
    assert all(r is not None for r in result.results)
    assert provider.stats().rejected == 0
    # OpenAI's rule: the prompt + max_tokens (200) reserved, though 40 were generated
    assert result.outcomes[0].usage == {"requests_per_minute": 1.0, "tokens_per_minute": 210.0}
