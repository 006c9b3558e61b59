"""The batch progress line and its ETA from the provider's counts."""

from __future__ import annotations

from rate_limited.batch import BatchState
from rate_limited.batch._display import BatchDisplay


def state(status: str, done: int, total: int = 100) -> BatchState:
    phase = status if status in ("validating", "in_progress", "finalizing") else "ended"
    return BatchState(phase, status, total, done, 0)  # type: ignore[arg-type]


def test_the_line_says_where_each_batch_is() -> None:
    states = {
        "a": state("in_progress", 30),
        "b": state("in_progress", 10),
        "c": state("validating", 0),
    }
    assert BatchDisplay.describe(states, waiting=2) == (
        "2 in_progress 40/200, 1 validating, 2 waiting for the queue"
    )


def test_eta_comes_from_the_requests_processed_since_first_seen() -> None:
    display = BatchDisplay(100, 0, enabled=False)
    assert display.eta({"a": state("in_progress", 10)}, now=0.0) is None
    # 20 more requests in 10 s: the 70 left take 35 s.
    assert display.eta({"a": state("in_progress", 30)}, now=10.0) == 35.0
    assert display.eta({"a": state("validating", 0)}, now=20.0) is None
