"""The providers' accounting, end to end on a FakeClock: presets and ``openai_chat_resources``
against the MockProvider under both settle rules, limits given and read from the headers,
RPM- and TPM-bound, one model and two.

The MockProvider answers in-process (``MockProvider.transport()``) through the real
``openai`` and ``anthropic`` async clients, on the Runner's FakeClock: its buckets, its
latency and the clients' timeouts are all virtual, so a five-minute run costs a second.
Utilization is measured the provider's way, from its request log: the tokens (or
requests) it charged for the requests that arrived in the steady state, over what its
limit allowed in that time. The provider enforces its limits with its own code
(``rate_limited.testing._limits``), never the package's ledger.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from rate_limited import Runner
from rate_limited.apis.anthropic import Messages
from rate_limited.apis.openai import ChatCompletions, openai_chat_resources
from rate_limited.testing import FakeClock, Limits, MockProvider, RequestLogEntry

#: Seconds after the first admission left out of the steady state (the initial burst of a
#: full bucket, and learning the limits and the rule).
SETTLE = 30.0


def provider(clock: FakeClock, refund: bool | None, **options: Any) -> MockProvider:
    options.setdefault("latency", 0.3)
    options.setdefault("jitter", 0.4)
    options.setdefault("latency_per_token", 0.001)
    options.setdefault("median_output_tokens", 150)
    return MockProvider(clock=clock.time, refund_unused_output=refund, seed=3, **options)


def warm(client: Any) -> Any:
    """Make the client's first request now: the SDKs read the platform in a thread on their
    first one, and a FakeClock loop moves time on while a thread works (to the next timer,
    which with a waiting ledger may be a minute away)."""

    async def first() -> None:
        await client.models.list()

    asyncio.run(first())
    return client


def openai_client(mp: MockProvider) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(transport=mp.transport(openai))
    return openai.AsyncOpenAI(
        base_url="http://mock/v1", api_key="test", http_client=http, max_retries=0
    )


def prompts(count: int, models: tuple[str, ...] = ("gpt-4o-mini",)) -> list[dict[str, Any]]:
    rng = random.Random(7)
    words = [
        "rate",
        "limit",
        "token",
        "bucket",
        "quota",
        "refill",
        "request",
        "answer",
        "model",
        "prompt",
        "data",
    ]
    return [
        {
            "model": models[i % len(models)],
            "messages": [
                {"role": "user", "content": f"{i}: " + " ".join(rng.choices(words, k=40))}
            ],
        }
        for i in range(count)
    ]


@dataclass
class Measure:
    """What the provider saw of one model's requests."""

    utilization: float  # steady-state charge / what the limit allowed then
    refused: int
    sent: int


def measure(
    log: list[RequestLogEntry],
    model: str,
    limit: float,
    charge: Callable[[RequestLogEntry], float],
    refunds: bool,
) -> Measure:
    entries = [e for e in log if e.model == model]
    admitted = [e for e in entries if e.status != 429]
    start = admitted[0].time + SETTLE
    end = admitted[-1].time - 2.0
    assert end - start >= 100.0, "too short a steady state to measure"

    def final(e: RequestLogEntry) -> float:
        if not refunds:
            return charge(e)
        return charge(e) - e.reserved_output_tokens + e.completion_tokens

    charged = sum(final(e) for e in admitted if start <= e.time < end)
    return Measure(
        utilization=charged / (limit / 60.0 * (end - start)),
        refused=sum(e.status == 429 for e in entries),
        sent=len(entries),
    )


def tokens_of(entry: RequestLogEntry) -> float:
    return entry.prompt_tokens + entry.reserved_output_tokens


def one_request(entry: RequestLogEntry) -> float:
    return 1.0


#: (limits at the provider, max_tokens, calls, what binds and how it is charged)
WORKLOADS = {
    "rpm": ({"rpm": 120, "tpm": 1_000_000}, 300, 760, "requests"),
    "tpm": ({"rpm": 10_000, "tpm": 60_000}, 1000, 0, "tokens"),
}
RULES = [
    pytest.param(None, id="openai-rule"),  # the provider keeps max_tokens (documented)
    pytest.param(True, id="refunds"),  # a compatible server that hands it back
]


def calls_for(workload: str, refund: bool | None) -> int:
    limits, max_tokens, calls, _ = WORKLOADS[workload]
    if calls:
        return calls
    per_call = 10 + 50 + (230 if refund else max_tokens)  # framing, prompt, output charged
    return int((limits["tpm"] + limits["tpm"] / 60 * (SETTLE + 150)) / per_call)


def run_openai(
    workload: str, refund: bool | None, how: str
) -> tuple[list[RequestLogEntry], Any, Any]:
    clock = FakeClock()
    limits, max_tokens, _, _ = WORKLOADS[workload]
    mp = provider(clock, refund, **limits)
    client = openai_client(mp)
    rpm, tpm = limits["rpm"], limits["tpm"]
    function: Any
    if how == "openai_chat_resources":
        settle = "actual" if refund else "reserved"  # declared to match the provider

        warm(client)

        async def create(**params: Any) -> Any:
            return await client.chat.completions.create(**params)

        function, resources = create, openai_chat_resources(rpm, tpm, 4096, settle=settle)
    else:
        given = {"requests_per_minute": rpm, "tokens_per_minute": tpm} if how == "given" else {}
        function = ChatCompletions(client, **given)
        warm(function.client)
        resources = function.resources
    runner = Runner(function, resources, clock=clock, progress=False, max_concurrent=64)
    for params in prompts(calls_for(workload, refund)):
        runner.schedule(max_tokens=max_tokens, **params)
    result = runner.run()
    return mp.request_log, result, function


@pytest.mark.slow
@pytest.mark.parametrize("refund", RULES)
@pytest.mark.parametrize("workload", [pytest.param("rpm"), pytest.param("tpm")])
@pytest.mark.parametrize(
    "how",
    [
        pytest.param("given", id="preset-limits-given"),
        pytest.param("openai_chat_resources"),
        pytest.param("headers", id="preset-limits-from-headers"),
    ],
)
def test_steady_state_at_the_limit_without_429s(
    workload: str, refund: bool | None, how: str
) -> None:
    log, result, function = run_openai(workload, refund, how)
    assert all(r is not None for r in result.results), "a call was lost"
    limits, _, _, binding = WORKLOADS[workload]
    limit = limits["rpm"] if binding == "requests" else limits["tpm"]
    charge = one_request if binding == "requests" else tokens_of
    seen = measure(log, "gpt-4o-mini", limit, charge, bool(refund) and binding == "tokens")
    if how == "headers":
        assert seen.utilization >= 0.97
        assert seen.refused < 0.005 * seen.sent
        assert function.limits == {
            "requests_per_minute": limits["rpm"],
            "tokens_per_minute": limits["tpm"],
        }
    else:
        assert seen.utilization >= 0.99
        assert seen.refused == 0
    assert seen.utilization <= 1.02  # the measure, not the provider: its bucket moves


@pytest.mark.slow
@pytest.mark.parametrize("refund", RULES)
@pytest.mark.parametrize(
    "given", [pytest.param(True, id="limits-given"), pytest.param(False, id="from-headers")]
)
def test_two_models_each_at_its_own_limit(refund: bool | None, given: bool) -> None:
    """gpt-4o-mini at 60,000 TPM and gpt-4o at 30,000, mixed in one run: neither waits for
    the other's bucket, and each runs at its own limit."""
    clock = FakeClock()
    mp = provider(
        clock,
        refund,
        rpm=10_000,
        tpm=60_000,
        model_limits={"gpt-4o": Limits(rpm=10_000, tpm=30_000)},
    )
    options: dict[str, Any] = {}
    if given:
        options = {
            "requests_per_minute": 10_000,
            "tokens_per_minute": 60_000,
            "model_limits": {"gpt-4o": {"tokens_per_minute": 30_000}},
        }
    chat = ChatCompletions(openai_client(mp), **options)
    warm(chat.client)
    runner = chat.runner(clock=clock, progress=False)
    # Enough calls for the faster model (half of them) to run 160 s past its first minute.
    per_call = 60 + (230 if refund else 1000)
    count = int(2 * (60_000 + 1000 * 160) / per_call)
    for params in prompts(count, ("gpt-4o", "gpt-4o-mini")):
        runner.schedule(max_tokens=1000, **params)
    result = runner.run()
    assert all(r is not None for r in result.results)
    log = mp.request_log
    for model, limit in (("gpt-4o-mini", 60_000), ("gpt-4o", 30_000)):
        seen = measure(log, model, limit, tokens_of, bool(refund))
        assert seen.utilization >= 0.97, model
        assert seen.utilization <= 1.02
        if given:
            assert seen.refused == 0, model
        else:
            assert seen.refused < 0.005 * seen.sent, model
    assert chat.limits_for("gpt-4o")["tokens_per_minute"] == 30_000


def anthropic_client(mp: MockProvider) -> anthropic.AsyncAnthropic:
    http = anthropic.DefaultAsyncHttpxClient(transport=mp.transport(anthropic))
    return anthropic.AsyncAnthropic(
        base_url="http://mock", api_key="test", http_client=http, max_retries=0
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "refund",
    [
        pytest.param(None, id="anthropic-rule"),  # output adjusted to the actual (documented)
        pytest.param(False, id="keeps-max-tokens"),
    ],
)
def test_anthropic_output_bound(refund: bool | None) -> None:
    """Anthropic's documented rule: 0 429s at the output limit. A server that keeps
    max_tokens instead: the first refusals correct the ledger and reveal the rule, then
    none; no call is lost either way."""
    clock = FakeClock()
    mp = provider(clock, refund, rpm=10_000, input_tpm=1_000_000, output_tpm=12_000)
    claude = Messages(
        anthropic_client(mp),
        requests_per_minute=10_000,
        input_tokens_per_minute=1_000_000,
        output_tokens_per_minute=12_000,
    )
    warm(claude.client)
    runner = claude.runner(clock=clock, progress=False)
    count = 900 if refund is None else 300
    for params in prompts(count, ("claude-haiku-4-5",)):
        runner.schedule(max_tokens=400, **params)
    result = runner.run()
    assert all(r is not None for r in result.results)
    log = mp.request_log

    def output(entry: RequestLogEntry) -> float:
        return entry.reserved_output_tokens

    seen = measure(log, "claude-haiku-4-5", 12_000, output, refund is None)
    if refund is None:
        assert seen.refused == 0
        assert seen.utilization >= 0.99
    else:
        refusals = [e.time for e in log if e.status == 429]
        assert refusals and max(refusals) < log[0].time + 60  # they stop
        assert seen.utilization >= 0.97
