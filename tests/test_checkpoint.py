"""Checkpointing a run to its store (``rate_limited._checkpoint``).

* Calls with the same key in one batch are sent once (one leader, the others follow it),
  and a key shared by different arguments warns.
* Resuming a run in a fresh Runner (a fresh ledger, as in a new process) on the same
  store: the usage the earlier run was billed recently still counts, so the new run does
  not burst into a provider whose buckets the earlier one drained.

The MockProvider enforces OpenAI's documented accounting with its own buckets ("the
provider keeps max_tokens": prompt + ``max_tokens`` charged at arrival, nothing handed
back) and counts its 429s; everything runs on one FakeClock shared by the provider, both
Runners and the store, so a minute of refill costs no real time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited import Runner
from rate_limited.apis.openai import ChatCompletions
from rate_limited.stores import SqliteStore
from rate_limited.testing import FakeClock, MockProvider
from tests.test_provider_accounting import openai_client, prompts, provider, warm

REPO = Path(__file__).resolve().parents[1]
EPOCH = 1_790_000_000.0  # the store's wall clock: this epoch plus the FakeClock's time
TPM = 60_000
MAX_TOKENS = 1000
CALLS = 160  # ~1,060 tokens charged each: about 2.8 minutes of the TPM limit in all


def test_duplicate_calls_in_one_batch_are_sent_once_with_a_store() -> None:
    sent: list[int] = []

    def square(x: int) -> int:
        sent.append(x)
        return x * x

    runner = Runner(square, [], store="memory://", progress=False)
    for x in (1, 2, 1, 1, 3):
        runner.schedule(x)
    result = runner.run()
    assert result.results == [1, 4, 1, 1, 9]
    assert sorted(sent) == [1, 2, 3]
    assert result.counts() == {"succeeded": 5}


def test_a_key_shared_by_different_calls_warns(caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(lambda x: x, [], store="memory://", key=lambda call: "same", progress=False)
    runner.schedule(1)
    runner.schedule(2)
    with caplog.at_level(logging.WARNING, logger="rate_limited"):
        result = runner.run()
    assert result.results == [1, 1]
    assert "same store key but different arguments" in caplog.text


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


CHILD = textwrap.dedent(
    """
    import sys

    import openai

    from rate_limited import Runner
    from rate_limited.apis.openai import ChatCompletions
    from rate_limited.stores import SqliteStore

    base_url, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    function = ChatCompletions(client, requests_per_minute=10_000, tokens_per_minute=60_000)
    with Runner(function, function.resources, store=SqliteStore(path), progress=False) as runner:
        for i in range(count):
            runner.schedule(
                model="gpt-4o-mini",
                max_tokens=1900,
                messages=[{"role": "user", "content": f"question {i}"}],
            )
        result = runner.run()
    assert all(r is not None for r in result.results), result
    """
)


@pytest.mark.slow
def test_a_new_process_resuming_on_the_same_store_sends_no_429(tmp_path: Path) -> None:
    """Process A drains a 60,000 TPM bucket (30 calls of ~2,000 tokens, OpenAI's rule) and
    exits; process B on the same store resumes with 5 calls more. Without the earlier
    usage charged, B sends them at once into the empty bucket (10,000 tokens where its
    ~1,000 per second refill has put back a process start's worth). Real time: B waits
    about 10 s for the refill; a stalled machine only makes it wait less."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = str(tmp_path / "outcomes.db")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with MockProvider(rpm=10_000, tpm=TPM, median_output_tokens=20, seed=2) as mp:
        for count in (30, 35):
            subprocess.run(
                [sys.executable, str(script), mp.base_url, path, str(count)],
                env=env,
                check=True,
                timeout=300,
            )
        log = [entry for entry in mp.request_log if entry.endpoint == "chat.completions"]
    refused = sum(entry.status == 429 for entry in log)
    assert refused == 0, f"{refused} requests answered 429 after the resume"
    answered = Counter(entry.body_hash for entry in log if entry.status == 200)
    assert len(answered) == 35 and set(answered.values()) == {1}, "lost or paid twice"
