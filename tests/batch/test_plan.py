"""Splitting requests into batches: pure functions, no provider."""

from __future__ import annotations

import pytest

from rate_limited import ConfigurationError
from rate_limited.batch import Request, split
from rate_limited.batch._plan import ENVELOPE_BYTES


def requests(count: int, model: str = "m", size: int = 10, tokens: float = 1.0) -> list[Request]:
    return [Request(f"{model}{i}", b"x" * size, model, tokens) for i in range(count)]


def ids(batches: list[list[Request]]) -> list[list[str]]:
    return [[r.custom_id for r in batch] for batch in batches]


@pytest.mark.parametrize(
    ("options", "sizes"),
    [
        pytest.param({"max_requests": 4, "max_bytes": 10**6}, [4, 4, 2], id="count"),
        pytest.param(
            {"max_requests": 100, "max_bytes": 30 + ENVELOPE_BYTES}, [3, 3, 3, 1], id="bytes"
        ),
        pytest.param(
            {"max_requests": 100, "max_bytes": 10**6, "max_tokens": {"m": 5.0}}, [5, 5], id="tokens"
        ),
    ],
)
def test_batches_are_as_full_as_each_limit_allows(
    options: dict[str, object], sizes: list[int]
) -> None:
    batches = split(requests(10), one_model=True, **options)  # type: ignore[arg-type]
    assert [len(b) for b in batches] == sizes
    assert [i for batch in ids(batches) for i in batch] == [f"m{i}" for i in range(10)]


def test_one_model_per_batch_only_where_the_provider_says_so() -> None:
    mixed = [r for pair in zip(requests(3, "a"), requests(3, "b"), strict=True) for r in pair]
    assert ids(split(mixed, max_requests=10, max_bytes=10**6, one_model=True)) == [
        ["a0", "a1", "a2"],
        ["b0", "b1", "b2"],
    ]
    assert len(split(mixed, max_requests=10, max_bytes=10**6, one_model=False)) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"max_bytes": 5 + ENVELOPE_BYTES}, "bytes", id="bytes"),
        pytest.param(
            {"max_bytes": 10**6, "max_tokens": {"m": 0.5}}, "enqueued-token limit", id="tokens"
        ),
    ],
)
def test_a_request_no_batch_can_hold_is_refused(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        split(requests(1), max_requests=10, one_model=True, **options)  # type: ignore[arg-type]
