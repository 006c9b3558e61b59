"""Resuming a run in a fresh Runner (a fresh ledger, as in a new process) on the same store:
the usage the earlier run was billed recently still counts, so the new run does not burst
into a provider whose buckets the earlier one drained (``rate_limited._checkpoint``).

The MockProvider enforces OpenAI's documented accounting with its own buckets ("the
provider keeps max_tokens": prompt + ``max_tokens`` charged at arrival, nothing handed
back) and counts its 429s; everything runs on one FakeClock shared by the provider, both
Runners and the store, so a minute of refill costs no real time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited import Runner
from rate_limited.apis.openai import ChatCompletions
from rate_limited.stores import SqliteStore
from rate_limited.testing import FakeClock, MockProvider
from tests.test_provider_accounting import openai_client, prompts, provider, warm

EPOCH = 1_790_000_000.0  # the store's wall clock: this epoch plus the FakeClock's time
TPM = 60_000
MAX_TOKENS = 1000
CALLS = 160  # ~1,060 tokens charged each: about 2.8 minutes of the TPM limit in all


def run_half(
    clock: FakeClock, mp: MockProvider, path: Path, params: list[dict[str, Any]]
) -> list[Any]:
    """A fresh Runner on a fresh ledger (as a new process would have) runs ``params``."""
    store = SqliteStore(path, clock=lambda: EPOCH + clock.time())
    function = ChatCompletions(openai_client(mp), requests_per_minute=10_000, tokens_per_minute=TPM)
    warm(function.client)
    with Runner(
        function, function.resources, clock=clock, progress=False, store=store, max_concurrent=64
    ) as runner:
        for one in params:
            runner.schedule(max_tokens=MAX_TOKENS, **one)
        results = list(runner.run().results)
    store.close()
    return results


@pytest.mark.parametrize(
    "pause",
    [
        pytest.param(0.0, id="at-once"),
        pytest.param(20.0, id="20s-later"),  # part of the bucket refilled meanwhile
    ],
)
def test_a_fresh_runner_resuming_after_the_bucket_was_drained_sends_no_429(
    tmp_path: Path, pause: float
) -> None:
    clock = FakeClock()
    mp = provider(clock, None, rpm=10_000, tpm=TPM)  # None: OpenAI's documented rule
    params = prompts(CALLS)
    path = tmp_path / "outcomes.db"
    first = run_half(clock, mp, path, params[: CALLS // 2])  # drains the TPM bucket, stops
    assert all(r is not None for r in first)
    drained = sum(entry.endpoint == "chat.completions" for entry in mp.request_log)
    clock.advance(pause)

    second = run_half(clock, mp, path, params)  # resumes: the first half comes from the store

    log = [entry for entry in mp.request_log if entry.endpoint == "chat.completions"]
    refused = sum(entry.status == 429 for entry in log)
    assert refused == 0, f"{refused} requests answered 429 after the resume"
    assert all(r is not None for r in second), "a call was lost"
    answered = Counter(entry.body_hash for entry in log if entry.status == 200)
    assert len(answered) == CALLS and set(answered.values()) == {1}, "a call paid twice"
    assert len(log) - drained == CALLS - CALLS // 2  # only the second half was sent
