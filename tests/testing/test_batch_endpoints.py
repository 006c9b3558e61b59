"""The MockProvider's batch endpoints, driven with the real openai and anthropic clients.

Batch time is a ``FakeClock`` the test advances (``batch_clock=clock.time``): a 24-hour
window passes with no real time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from rate_limited.testing import BatchSettings, FakeClock, Faults, MockProvider
from tests.shared import closed_after_test

FAST = BatchSettings(validating_seconds=10, seconds_per_request=1, finalizing_seconds=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def start(clock: FakeClock, settings: BatchSettings = FAST, **options: Any) -> MockProvider:
    options.setdefault("output_tokens", 5)
    return MockProvider(batch=settings, batch_clock=clock.time, **options)


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    with start(clock) as mp:
        yield mp


def oai(mp: MockProvider) -> openai.OpenAI:
    client = openai.OpenAI(base_url=mp.base_url, api_key="k", max_retries=0)
    closed_after_test(client)
    return client


def line(i: int, model: str = "gpt-4o-mini") -> str:
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": f"q{i}"}]}
    return json.dumps(
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def submit(client: openai.OpenAI, lines: list[str]) -> Any:
    file = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_openai_batch_goes_through_its_statuses_and_answers_by_custom_id(
    provider: MockProvider, clock: FakeClock
) -> None:
    client = oai(provider)
    batch = submit(client, [line(i) for i in range(20)])
    seen = [batch.status]
    counts = []
    for _ in range(8):
        clock.advance(5)
        batch = client.batches.retrieve(batch.id)
        seen.append(batch.status)
        counts.append(batch.request_counts.completed)
    assert seen[0] == "validating"
    assert "in_progress" in seen
    assert counts == sorted(counts)  # request_counts only grow
    clock.advance(60)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts.total == batch.request_counts.completed == 20
    lines = jsonl(client, batch.output_file_id)
    ids = [x["custom_id"] for x in lines]
    assert sorted(ids) == sorted(f"r{i}" for i in range(20))
    assert ids != [f"r{i}" for i in range(20)]  # in any order: clients map by custom_id
    answer = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "q7"}]
    )
    by_id = {x["custom_id"]: x["response"]["body"] for x in lines}
    assert by_id["r7"]["choices"][0]["message"]["content"] == answer.choices[0].message.content
    assert [b.id for b in client.batches.list()] == [batch.id]
    assert provider.batch_stats().files_uploaded == 1


@pytest.mark.parametrize(
    ("settings", "lines", "code"),
    [
        pytest.param(
            BatchSettings(openai_max_requests=3),
            [line(i) for i in range(4)],
            "too_many_requests",
            id="requests",
        ),
        pytest.param(FAST, [line(0), line(1, model="gpt-4o")], "mismatched_model", id="model"),
        pytest.param(FAST, [line(0), line(0)], "duplicate_custom_id", id="duplicate"),
        pytest.param(
            BatchSettings(openai_enqueued_tokens=20),
            [line(i) for i in range(5)],
            "token_limit_exceeded",
            id="enqueued-tokens",
        ),
    ],
)
def test_openai_batch_over_a_documented_limit_fails_validation(
    clock: FakeClock, settings: BatchSettings, lines: list[str], code: str
) -> None:
    with start(clock, settings) as mp:
        client = oai(mp)
        batch = submit(client, lines)
        clock.advance(settings.validating_seconds + 1)
        batch = client.batches.retrieve(batch.id)
        assert batch.status == "failed"
        assert batch.errors is not None and batch.errors.data[0].code == code
        assert mp.batch_stats().batches_failed == {code: 1}


def test_openai_enqueued_tokens_count_unfinished_batches_of_the_model(clock: FakeClock) -> None:
    with start(clock, BatchSettings(openai_enqueued_tokens={"gpt-4o-mini": 80})) as mp:
        client = oai(mp)
        first = submit(client, [line(i) for i in range(5)])  # 8 tokens each
        other_model = submit(client, [line(i, model="gpt-4o") for i in range(20)])
        refused = submit(client, [line(i + 5) for i in range(6)])
        clock.advance(61)
        assert client.batches.retrieve(refused.id).status == "failed"
        assert client.batches.retrieve(other_model.id).status == "in_progress"  # no limit
        clock.advance(24 * 3600)
        assert client.batches.retrieve(first.id).status == "completed"
        accepted = submit(client, [line(i + 5) for i in range(6)])
        clock.advance(61)
        assert client.batches.retrieve(accepted.id).status == "in_progress"


def test_openai_file_over_the_size_limit_is_refused_at_upload(clock: FakeClock) -> None:
    with (
        start(clock, BatchSettings(openai_max_file_bytes=1000)) as mp,
        pytest.raises(openai.BadRequestError, match="up to 1000 bytes"),
    ):
        oai(mp).files.create(file=("in.jsonl", b"x" * 1001), purpose="batch")


def test_openai_batch_past_its_window_expires_with_partial_output(clock: FakeClock) -> None:
    settings = BatchSettings(validating_seconds=0, seconds_per_request=3600, time_scale=3600)
    with start(clock, settings) as mp:
        client = oai(mp)
        batch = submit(client, [line(i) for i in range(30)])
        clock.advance(23)  # 23 h of provider time
        assert client.batches.retrieve(batch.id).status == "in_progress"
        clock.advance(2)
        batch = client.batches.retrieve(batch.id)
        assert batch.status == "expired"
        output, errors = jsonl(client, batch.output_file_id), jsonl(client, batch.error_file_id)
        assert len(output) == 24
        assert len(errors) == 6
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert batch.request_counts.failed == 6


def test_openai_cancel_and_per_request_errors(clock: FakeClock) -> None:
    with start(clock, faults=Faults(error_500=0.5), seed=3) as mp:
        client = oai(mp)
        bad = json.dumps(
            {
                "custom_id": "bad",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": "not a list"},
            }
        )
        batch = submit(client, [bad, *(line(i) for i in range(10))])
        clock.advance(10 + 6.5)  # 6 requests processed
        assert client.batches.cancel(batch.id).status == "cancelling"
        clock.advance(11)
        batch = client.batches.retrieve(batch.id)
        assert batch.status == "cancelled"
        errors = {e["custom_id"]: e for e in jsonl(client, batch.error_file_id)}
        output = jsonl(client, batch.output_file_id)
        assert errors["bad"]["response"]["status_code"] == 400
        statuses = {e["response"]["status_code"] for e in errors.values() if e["response"]}
        assert 500 in statuses  # seeded faults strike batch requests too
        cancelled = [e for e in errors.values() if e["error"]]
        assert {e["error"]["code"] for e in cancelled} == {"batch_cancelled"}
        assert len(cancelled) == 5
        assert len(output) + len(errors) == 11
        assert mp.batch_stats().batches_cancelled == 1


def anth(mp: MockProvider) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=mp.anthropic_base_url, api_key="k", max_retries=0)
    closed_after_test(client)
    return client


def request(i: int, **params: Any) -> dict[str, Any]:
    body = {"model": "claude-haiku-4-5", "max_tokens": 5}
    body["messages"] = [{"role": "user", "content": f"q{i}"}]
    body.update(params)
    return {"custom_id": f"r{i}", "params": body}


def test_anthropic_message_batch_results_and_counts(
    provider: MockProvider, clock: FakeClock
) -> None:
    client = anth(provider)
    bad = request(99)
    del bad["params"]["max_tokens"]
    batch = client.messages.batches.create(requests=[*(request(i) for i in range(8)), bad])
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 9
    assert batch.results_url is None
    clock.advance(100)
    batch = client.messages.batches.retrieve(batch.id)
    assert batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 8
    assert batch.request_counts.errored == 1
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["r99"].type == "errored"
    message = results["r3"].message  # type: ignore[union-attr]
    online = client.messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "q3"}]
    )
    assert message.content == online.content
    assert message.usage.service_tier == "batch"


@pytest.mark.parametrize(
    ("settings", "requests", "status"),
    [
        pytest.param(
            BatchSettings(anthropic_max_requests=2), [request(i) for i in range(3)], 400, id="count"
        ),
        pytest.param(
            BatchSettings(anthropic_max_bytes=500), [request(i) for i in range(10)], 413, id="size"
        ),
        pytest.param(FAST, [request(0), request(0)], 400, id="duplicate"),
        pytest.param(FAST, [{**request(0), "custom_id": "has space"}], 400, id="custom-id"),
    ],
)
def test_anthropic_batch_over_a_documented_limit_is_refused(
    clock: FakeClock, settings: BatchSettings, requests: list[dict[str, Any]], status: int
) -> None:
    with start(clock, settings) as mp:
        with pytest.raises(anthropic.APIStatusError) as caught:
            anth(mp).messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert caught.value.status_code == status
        assert mp.batch_stats().batches_created == {}


def test_anthropic_cancel_and_expiry(clock: FakeClock) -> None:
    settings = BatchSettings(validating_seconds=0, seconds_per_request=10_000, time_scale=1.0)
    with start(clock, settings) as mp:
        client = anth(mp)
        expiring = client.messages.batches.create(requests=[request(i) for i in range(12)])
        cancelled = client.messages.batches.create(requests=[request(i) for i in range(3)])
        clock.advance(15_000)
        assert client.messages.batches.cancel(cancelled.id).processing_status == "canceling"
        clock.advance(24 * 3600)
        kinds = [r.result.type for r in client.messages.batches.results(cancelled.id)]
        assert sorted(kinds) == ["canceled", "canceled", "succeeded"]
        ended = client.messages.batches.retrieve(expiring.id)
        assert ended.request_counts.succeeded == 8  # 86,400 s at 10,000 s each
        assert ended.request_counts.expired == 4
