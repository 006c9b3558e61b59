"""The ledger judged by a server it has never seen: ``tests/openai_bucket_server.py``.

That server shares no code with the package (nor with its MockProvider): continuous-refill
token buckets per model, prompts estimated from their characters, ``max_tokens`` charged on
arrival and never handed back, as OpenAI documents. The issue that asked for this measured
478-490 429s and lost calls for ``openai_chat_resources`` against such a server, and about
70 429s for the preset: here, none, and every call succeeds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from rate_limited import Runner
from rate_limited.apis.openai import ChatCompletions, openai_chat_resources
from tests.openai_bucket_server import BucketServer

TPM, RPM, MAX_TOKENS = 30_000, 10_000, 100
#: A minute of quota at once, then about ten more seconds at the refill rate.
CALLS = 270

_TEXT = [
    "Summarise",
    "the",
    "following",
    "customer",
    "review",
    "in",
    "one",
    "sentence",
    "and",
    "say",
    "whether",
    "it",
    "is",
    "positive",
    "or",
    "negative.",
    "The",
    "delivery",
    "was",
    "late",
    "by",
    "two",
    "days",
    "but",
    "the",
    "support",
    "team",
    "answered",
    "quickly",
    "and",
    "the",
    "replacement",
    "works",
    "perfectly",
    "well",
]


def prompt(i: int) -> str:
    rng = random.Random(i)
    return f"Review {i}: " + " ".join(rng.choices(_TEXT, k=rng.randint(10, 30)))


@pytest.fixture
def server() -> Iterator[BucketServer]:
    with BucketServer(rpm=RPM, tpm=TPM) as running:
        yield running


def client_of(server: BucketServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=10)


def schedule(runner: Runner) -> None:
    for i in range(CALLS):
        runner.schedule(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt(i)}],
            max_tokens=MAX_TOKENS,
        )


@pytest.mark.slow
def test_openai_chat_resources_gets_no_429(server: BucketServer) -> None:
    """rate_limited 0.4's helper, as 0.4 code uses it: a sync function returning dicts."""
    with client_of(server) as client:

        def create(**params: Any) -> Any:
            return client.chat.completions.create(**params).model_dump()

        runner = Runner(create, openai_chat_resources(RPM, TPM, 4096), progress=False)
        schedule(runner)
        result = runner.run()
    assert all(r is not None for r in result.results)
    assert server.statuses().count(429) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "given", [pytest.param(True, id="limits-given"), pytest.param(False, id="from-headers")]
)
def test_the_preset_gets_no_429(server: BucketServer, given: bool) -> None:
    with client_of(server) as client:
        limits = {"requests_per_minute": RPM, "tokens_per_minute": TPM} if given else {}
        chat = ChatCompletions(client, **limits)
        runner = chat.runner(progress=False)
        schedule(runner)
        result = runner.run()
    assert all(r is not None for r in result.results)
    assert server.statuses().count(429) == 0
    assert chat.limits == {"requests_per_minute": RPM, "tokens_per_minute": TPM}
