"""The notebook dashboard of a batch run: each batch's status and an ETA from the
provider's counts, driven by a real BatchRunner against the MockProvider on a FakeClock
(a subclass of the dashboard records ``state()`` at every update)."""

from __future__ import annotations

from typing import Any

import pytest

from rate_limited.testing import FakeClock, MockProvider
from tests.batch.test_runner import Interrupt, chat, schedule

pytest.importorskip("ipywidgets")

from rate_limited._dashboard import DashboardProgress


class Recording(DashboardProgress):
    """Keeps ``state()`` after every update the batch run makes."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.seen: list[dict[str, Any]] = []

    def show_batches(self, **kwargs: Any) -> None:
        super().show_batches(**kwargs)
        self.seen.append(self.state())


def batch_runner(preset: Any, clock: FakeClock, **options: Any) -> Any:
    """A batch runner whose polls and ETA run on the fake clock."""
    options = {"store": "memory://", "sleep": clock.advance, "clock": clock.time, **options}
    return preset.runner(batch=True, **options)


def test_the_dashboard_shows_each_batch_and_an_eta(
    provider: MockProvider, clock: FakeClock
) -> None:
    dashboard = Recording()
    runner = batch_runner(chat(provider), clock, max_requests=100, progress=dashboard)
    schedule(runner, 200)
    result = runner.run()
    assert result.counts() == {"succeeded": 200}
    statuses = {b["status"] for s in dashboard.seen for b in s["batches"]}
    assert {"validating", "in_progress", "finalizing"} <= statuses
    in_progress = [
        (s, b) for s in dashboard.seen for b in s["batches"] if b["status"] == "in_progress"
    ]
    assert any(0 < b["done"] < b["total"] == 100 for _, b in in_progress)
    assert "in_progress" in in_progress[-1][0]["text"]["counts"]
    # The ETA comes from the provider's counts once a batch has shown progress.
    etas = [s["eta"] for s, _ in in_progress if s["eta"] is not None]
    assert etas and all(e > 0 for e in etas)
    assert "ETA" in in_progress[-1][0]["text"]["time"]
    final = dashboard.seen[-1]
    assert final["status"] == "done" and final["finished"] == final["total"] == 200
    assert final["bar"] == {"value": 200, "max": 200, "style": "success"}
    assert "200 / 200 calls answered" in dashboard.text()
    runner.close()


def test_an_interrupted_batch_run_ends_interrupted_on_the_dashboard(
    provider: MockProvider, clock: FakeClock
) -> None:
    dashboard = Recording()
    runner = batch_runner(chat(provider), clock, progress=dashboard, sleep=Interrupt(clock, 2))
    schedule(runner, 20)
    assert runner.run().interrupted
    assert dashboard.seen[-1]["status"] == "interrupted"
    assert dashboard.seen[-1]["eta"] is None
    runner.close()


def test_progress_dashboard_outside_a_notebook_warns_and_shows_tqdm(
    provider: MockProvider, clock: FakeClock
) -> None:
    runner = batch_runner(chat(provider), clock, progress="dashboard")
    schedule(runner, 3)
    with pytest.warns(UserWarning, match="needs a Jupyter notebook"):
        result = runner.run()
    assert result.counts() == {"succeeded": 3}
    runner.close()
