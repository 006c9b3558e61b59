"""BatchRunner against the MockProvider's batch endpoints, with the real SDK clients.

Batch time is a ``FakeClock``: the mock's batches progress on ``clock.time`` and the
runner's polls wait with ``clock.advance``, so a day of batch processing costs no real
time and no test sleeps. Counts at the mock (files uploaded, batches created, online
requests) are the evidence.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from rate_limited import BatchRequestError, ConfigurationError, Status
from rate_limited.apis.anthropic import Messages
from rate_limited.apis.openai import ChatCompletions
from rate_limited.batch import AnthropicBatches, BatchRunner, OpenAIBatches
from rate_limited.cost import PriceTable
from rate_limited.testing import BatchSettings, FakeClock, Faults, MockProvider
from tests.batch.conftest import FAST
from tests.shared import closed_after_test

ROOT = Path(__file__).resolve().parents[2]


def chat(mp: MockProvider, client: Any = None) -> ChatCompletions:
    if client is None:
        client = openai.OpenAI(base_url=mp.base_url, api_key="k")
        closed_after_test(client)
    return ChatCompletions(client, requests_per_minute=100_000, tokens_per_minute=10_000_000)


def batch_runner(preset: Any, clock: FakeClock, **options: Any) -> BatchRunner:
    options.setdefault("store", "memory://")
    options.setdefault("progress", False)
    options.setdefault("sleep", clock.advance)
    return preset.runner(batch=True, **options)  # type: ignore[no-any-return]


def schedule(runner: Any, count: int, model: str = "gpt-4o-mini", start: int = 0) -> None:
    for i in range(start, start + count):
        runner.schedule(
            model=model, max_tokens=8, messages=[{"role": "user", "content": f"question {i}"}]
        )


def texts(result: Any) -> list[str | None]:
    return [r.choices[0].message.content if r is not None else None for r in result.results]


@pytest.mark.slow
def test_a_thousand_calls_by_batch_answer_as_online_at_half_the_cost(
    provider: MockProvider, clock: FakeClock
) -> None:
    runner = batch_runner(chat(provider), clock)
    schedule(runner, 1000)
    batched = runner.run()
    assert batched.counts() == {"succeeded": 1000}
    assert provider.stats().admitted == 0  # nothing online
    online_runner = chat(provider).runner(progress=False)
    schedule(online_runner, 1000)
    online = online_runner.run()
    assert texts(batched) == texts(online)
    assert all(type(a) is type(b) for a, b in zip(batched.results, online.results, strict=True))
    online_cost = math.fsum(PriceTable().cost(r) or 0.0 for r in online.results)
    assert batched.cost == pytest.approx(online_cost / 2)  # type: ignore[attr-defined]
    assert batched.outcomes[0].cost == batched.outcomes[0].usage["cost_usd"] > 0
    frame = batched.to_pandas()
    assert list(frame["status"]) == ["succeeded"] * 1000


def test_calls_are_split_by_count_size_model_and_queue(
    provider: MockProvider, clock: FakeClock
) -> None:
    runner = batch_runner(
        chat(provider),
        clock,
        max_requests=30,
        max_bytes=4_000,
        enqueued_token_limit={"gpt-4o": 100},
    )
    schedule(runner, 50)
    schedule(runner, 20, model="gpt-4o")
    result = runner.run()
    assert result.counts() == {"succeeded": 70}
    stats = provider.batch_stats()
    # gpt-4o-mini: 50 requests of ~170 bytes in batches of <= 4,000 bytes (23 lines);
    # gpt-4o: 20 requests of ~10 tokens in batches of <= 100 tokens, queued in turn.
    assert stats.batches_created["openai"] == stats.files_uploaded >= 3 + 2
    assert stats.batches_failed == {}  # the queue limit was never exceeded at the mock
    assert stats.requests_submitted == 70


def test_a_batch_run_needs_a_store(provider: MockProvider) -> None:
    with pytest.raises(ConfigurationError, match="store="):
        chat(provider).runner(batch=True)


def test_a_store_answers_before_any_batch_and_keeps_the_answers(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    online = chat(provider).runner(store=store, progress=False)
    schedule(online, 10)
    online.run()
    online.close()
    runner = batch_runner(chat(provider), clock, store=store)
    schedule(runner, 20)
    result = runner.run()
    assert result.counts() == {"succeeded": 20}
    assert sum(o.from_store for o in result.outcomes) == 10
    assert provider.batch_stats().requests_submitted == 10
    runner.close()
    again = chat(provider).runner(store=store, progress=False)
    schedule(again, 20)
    before = provider.stats().admitted
    assert again.run().counts() == {"succeeded": 20}
    assert provider.stats().admitted == before  # the batch's answers, from the store
    again.close()


class Interrupt:
    """A sleep that raises KeyboardInterrupt at its n-th wait (Ctrl-C while polling)."""

    def __init__(self, clock: FakeClock, at: int) -> None:
        self.clock, self.at, self.waits = clock, at, 0

    def __call__(self, seconds: float) -> None:
        self.waits += 1
        if self.waits == self.at:
            raise KeyboardInterrupt
        self.clock.advance(seconds)


@pytest.mark.parametrize(
    "fresh", [pytest.param(False, id="same-runner"), pytest.param(True, id="new-process")]
)
def test_ctrl_c_while_polling_then_rerun_resubmits_nothing(
    provider: MockProvider, clock: FakeClock, tmp_path: Path, fresh: bool
) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    runner = batch_runner(
        chat(provider), clock, store=store, max_requests=40, sleep=Interrupt(clock, 2)
    )
    schedule(runner, 100)
    partial = runner.run()
    assert partial.interrupted
    assert partial.counts() == {"pending": 100}
    submitted = provider.batch_stats()
    assert submitted.batches_created == {"openai": 3}
    if fresh:
        runner.close()
        runner = batch_runner(chat(provider), clock, store=store, max_requests=40)
        schedule(runner, 100)
    else:
        runner.sleep = clock.advance
    result = runner.run()
    assert result.counts() == {"succeeded": 100}
    after = provider.batch_stats()
    assert after.batches_created == submitted.batches_created  # 0 resubmitted
    assert after.files_uploaded == submitted.files_uploaded
    runner.close()


def test_failed_and_expired_requests_go_into_a_next_batch(clock: FakeClock) -> None:
    settings = BatchSettings(
        validating_seconds=0, seconds_per_request=1000, finalizing_seconds=0
    )  # 86 of 100 requests fit in the 24 h window
    with MockProvider(batch=settings, batch_clock=clock.time, faults=Faults(error_500=0.1)) as mp:
        runner = batch_runner(chat(mp), clock, max_batch_retries=3)
        schedule(runner, 100)
        bad = runner.schedule(model="gpt-4o-mini", max_tokens=8, messages="not a list")
        result = runner.run()
    assert result.counts() == {"succeeded": 100, "failed": 1}
    error = result.outcomes[bad.index].error
    assert isinstance(error, BatchRequestError) and error.code == "400" and not error.retryable
    assert mp.batch_stats().batches_created["openai"] >= 2
    retried = [o for o in result.outcomes if o.attempts > 1 and o.status is Status.SUCCEEDED]
    assert retried
    assert all(isinstance(e, BatchRequestError) for o in retried for e in o.exceptions)


def test_fallback_online_sends_what_the_batch_did_not_answer(clock: FakeClock) -> None:
    with MockProvider(
        batch=FAST, batch_clock=clock.time, faults=Faults(error_500=0.2), seed=1
    ) as mp:
        runner = batch_runner(chat(mp), clock, fallback="online", max_retries=10)
        schedule(runner, 50)
        result = runner.run()
        failed_in_batch = sum(
            1
            for o in result.outcomes
            if o.exceptions and isinstance(o.exceptions[0], BatchRequestError)
        )
        assert result.counts() == {"succeeded": 50}
        assert failed_in_batch > 0
        assert mp.stats().admitted >= failed_in_batch  # sent online, retried there
        assert mp.batch_stats().batches_created == {"openai": 1}


def test_cancel_batches(provider: MockProvider, clock: FakeClock) -> None:
    runner = batch_runner(chat(provider), clock, sleep=Interrupt(clock, 1))
    schedule(runner, 100)
    assert runner.run().interrupted
    clock.advance(30 + 20)  # validated, then 40 requests processed
    cancelled = runner.cancel_batches()
    assert len(cancelled) == 1
    assert runner.batches()[0]["batch_id"] == cancelled[0]
    runner.sleep = clock.advance
    result = runner.run()
    counts = result.counts()
    assert counts["succeeded"] == 40 and counts["failed"] == 60
    codes = {o.error.code for o in result.outcomes if isinstance(o.error, BatchRequestError)}
    assert codes == {"batch_cancelled"}
    assert provider.batch_stats().batches_cancelled == 1


def test_anthropic_messages_by_batch(provider: MockProvider, clock: FakeClock) -> None:
    client = anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k")
    closed_after_test(client)
    claude = Messages(
        client, requests_per_minute=1000, input_tokens_per_minute=1e6, output_tokens_per_minute=1e6
    )
    runner = claude.runner(
        batch=True, store="memory://", sleep=clock.advance, progress=False, max_requests=15
    )
    for i in range(40):
        runner.schedule(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": f"q{i}"}]
        )
    result = runner.run()
    assert result.counts() == {"succeeded": 40}
    assert provider.batch_stats().batches_created == {"anthropic": 3}
    online = client.messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "q7"}]
    )
    assert result.results[7].content == online.content
    price = PriceTable().require("claude-haiku-4-5", batch=True).batch
    assert price is not None
    usage = result.results[7].usage
    expected = (
        usage.input_tokens * price.input_per_mtok + usage.output_tokens * price.output_per_mtok
    )
    expected /= 1e6  # the batch rates: half the online ones
    assert result.outcomes[7].usage["cost_usd"] == pytest.approx(expected)


def test_an_async_client_works_too(provider: MockProvider, clock: FakeClock) -> None:
    """The batch endpoints go out on a sync client made with the async one's settings;
    its connections are closed at the end of each run (the user's client stays theirs),
    and the next run connects again."""
    preset = chat(provider, openai.AsyncOpenAI(base_url=provider.base_url, api_key="k"))
    runner = batch_runner(preset, clock)
    schedule(runner, 5)
    made = runner.api.client
    assert not made.is_closed()
    assert runner.run().counts() == {"succeeded": 5}
    assert made.is_closed()
    schedule(runner, 3, start=5)
    assert runner.run().counts() == {"succeeded": 3}  # the calls scheduled since
    assert not preset.client.is_closed()
    runner.close()
    assert runner.api.client is not made


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"fallback": "later"}, "fallback", id="fallback"),
        pytest.param({"poll_interval": 0}, "poll_interval", id="poll"),
        pytest.param({"max_batch_retries": -1}, "max_batch_retries", id="retries"),
        pytest.param({"max_requests": 50_001}, "max_requests", id="max-requests"),
        pytest.param({"enqueued_token_limit": {"gpt-4o": -5}}, "enqueued_token_limit", id="queue"),
        pytest.param({"ttl": 3600}, "ttl=3600", id="ttl"),
    ],
)
def test_bad_options_are_refused_early(
    provider: MockProvider, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        chat(provider).runner(batch=True, store="memory://", **options)


@pytest.mark.slow
def test_kill_9_while_polling_then_a_new_process_resumes_the_same_batches(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    """The mock's batches do not move until the test advances its clock, so the first
    process is killed (SIGKILL: no handler, no flush) for sure while it polls."""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    command = [sys.executable, "-m", "tests.batch.kill_run", store, provider.base_url]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as first:
        try:
            assert first.stdout is not None
            assert first.stdout.readline().strip() == "POLLING"
        finally:
            first.kill()  # SIGKILL
            first.wait(timeout=60)
    submitted = provider.batch_stats()
    assert submitted.batches_created == {"openai": 3}
    assert submitted.files_uploaded == 3
    clock.advance(24 * 3600)  # the batches finish at the provider meanwhile
    second = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(second.stdout.strip().splitlines()[-1]) == {"succeeded": 60}
    after = provider.batch_stats()
    assert after.batches_created == submitted.batches_created  # resumed, not resubmitted
    assert after.files_uploaded == submitted.files_uploaded  # no second upload


def test_a_queue_smaller_than_known_is_learned_from_the_refusals(clock: FakeClock) -> None:
    """No enqueued_token_limit given, the provider's queue holds ~20 of the requests: the
    refused batch is split in halves until the batches fit, and they take turns."""
    settings = BatchSettings(openai_enqueued_tokens=200, validating_seconds=10)
    with MockProvider(batch=settings, batch_clock=clock.time) as mp:
        runner = batch_runner(chat(mp), clock)
        schedule(runner, 60)
        result = runner.run()
        stats = mp.batch_stats()
    assert result.counts() == {"succeeded": 60}
    assert stats.batches_failed.get("token_limit_exceeded", 0) >= 1
    assert stats.batches_created["openai"] > stats.batches_failed["token_limit_exceeded"]
    # The refused batches were never processed: each call was answered by its first batch.
    assert all(o.attempts == 1 for o in result.outcomes)


@pytest.mark.parametrize(
    "family", [pytest.param("openai", id="openai"), pytest.param("anthropic", id="anthropic")]
)
def test_interrupted_inside_the_create_call_then_rerun_finds_the_batch(
    provider: MockProvider, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    """The provider created the batch, but the process stopped before it read the answer:
    the rerun finds the batch at the provider (by its input file or tag, or as the only
    one of its size since) instead of creating a second one."""
    if family == "openai":
        preset: Any = chat(provider)
        api_class: Any = OpenAIBatches
    else:
        client = anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="k")
        closed_after_test(client)
        preset = Messages(
            client,
            requests_per_minute=10,
            input_tokens_per_minute=1e6,
            output_tokens_per_minute=1e6,
        )
        api_class = AnthropicBatches
    create = api_class.create

    def create_then_die(self: Any, *args: Any) -> str:
        create(self, *args)
        raise KeyboardInterrupt

    runner = batch_runner(preset, clock)
    model = "gpt-4o-mini" if family == "openai" else "claude-haiku-4-5"
    schedule(runner, 10, model=model)
    monkeypatch.setattr(api_class, "create", create_then_die)
    assert runner.run().interrupted
    monkeypatch.setattr(api_class, "create", create)
    assert runner.run().counts() == {"succeeded": 10}
    assert provider.batch_stats().batches_created == {family: 1}
