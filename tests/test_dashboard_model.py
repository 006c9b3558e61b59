"""RunTracker: what the dashboard works out from a series of RunStats, as pure functions
of the snapshots it is given (no widgets, no clock)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from rate_limited._dashboard_model import MAX_HISTORY, RATE_WINDOW, RunTracker


def stats(now: float, until: float | None = None, binding: str | None = None) -> Any:
    return SimpleNamespace(now=now, waiting_until=until, binding=binding)


def test_the_rate_is_over_the_recent_window_and_gives_the_eta() -> None:
    tracker = RunTracker()
    tracker.start(0.0, 0)
    assert tracker.rate(0.0, 0, 100, final=False) == (0.0, None)  # no rate yet
    rate, eta = tracker.rate(10.0, 20, 100, final=False)
    assert rate == 2.0 and eta == 40.0
    # Later, the rate is measured from the last sample before the window, not the start.
    tracker.rate(10.0 + 2 * RATE_WINDOW, 30, 100, final=False)
    rate, eta = tracker.rate(20.0 + 2 * RATE_WINDOW, 50, 100, final=False)
    assert rate == pytest.approx((50 - 20) / (20.0 + 2 * RATE_WINDOW - 10.0))
    assert eta == pytest.approx(50 / rate)
    assert tracker.rate(30.0 + 2 * RATE_WINDOW, 60, 100, final=True)[1] is None


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        pytest.param(15.0, ("tokens", 5.0), id="a-timer"),
        pytest.param(math.inf, ("tokens", None), id="until-a-call-settles"),
        pytest.param(None, (None, None), id="not-waiting"),
    ],
)
def test_what_admission_waits_for(until: float | None, expected: tuple[Any, Any]) -> None:
    tracker = RunTracker()
    tracker.start(0.0, 0)
    assert tracker.wait(stats(10.0, until, "tokens"), final=False) == expected


def test_waits_add_up_per_resource_to_their_announced_end() -> None:
    tracker = RunTracker()
    tracker.start(0.0, 0)
    tracker.wait(stats(0.0, 3.0, "requests"), final=False)
    tracker.wait(stats(10.0, 12.0, None), final=False)  # the first wait ended at 3.0
    tracker.wait(stats(11.0), final=False)
    assert tracker.waited == {"requests": 3.0, "capacity": 1.0}
    assert tracker.wait(stats(11.5, 20.0, "requests"), final=True) == (None, None)
    tracker.start(20.0, 0)  # a new run forgets the last one
    assert tracker.waited == {}


def test_the_history_keeps_the_final_sample_and_thins_itself() -> None:
    tracker = RunTracker()
    tracker.start(0.0, 0)
    usage = {"requests": (1.0, 0.0, 10.0)}
    for step in range(MAX_HISTORY + 1):
        tracker.record(float(step), usage, final=False)
    assert len(tracker.history) <= MAX_HISTORY // 2 + 1
    tracker.record(tracker.history[-1][0], usage, final=False)  # too close: dropped
    size = len(tracker.history)
    tracker.record(tracker.history[-1][0], usage, final=True)  # the final one: kept
    assert len(tracker.history) == size + 1
