"""``plot_run`` (``RunResult.plot()``): the drawn data match the outcomes, on Agg.

Runs use a FakeClock and async functions, so every start and finish is an exact instant
and the expected curves are written down by hand.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from rate_limited import Resource, Runner
from rate_limited._plot import plot_run, run_start, usage_curve, usage_events
from rate_limited.testing import FakeClock

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def resources() -> list[Resource]:
    return [
        Resource("requests", 2, 10, arguments_usage_extractor=lambda call: 1),
        Resource(
            "tokens",
            100,
            10,
            results_usage_extractor=lambda call, result: result["tokens"],
            max_results_usage_estimator=lambda call: 50,
            refill="bucket",
        ),
    ]


async def work(i: int, fail: bool = False) -> dict[str, int]:
    await asyncio.sleep(1)
    if fail:
        raise HttpError(400)  # permanent: not retried
    return {"tokens": 10 * (i + 1)}


def finished_run(**kwargs: Any) -> tuple[Runner, Any]:
    """Calls 0..4: two requests per 10 s, so they start at 0, 0, 10, 10, 20; call 3 fails."""
    kwargs.setdefault("progress", False)
    runner = Runner(work, resources(), clock=FakeClock(), **kwargs)
    for i in range(5):
        runner.schedule(i, fail=i == 3)
    return runner, runner.run()


def lines_by_gid(figure: Any) -> dict[str, Any]:
    return {line.get_gid(): line for ax in figure.axes for line in ax.get_lines()}


def collections_by_gid(figure: Any) -> dict[str, Any]:
    return {c.get_gid(): c for ax in figure.axes for c in ax.collections}


# -- the arithmetic ---------------------------------------------------------------------------
def test_window_curve_counts_each_amount_for_one_window() -> None:
    xs, ys = usage_curve([(0.0, 1.0), (0.0, 1.0), (4.0, 3.0)], quota=5, window=10, start=0.0)
    assert xs == [0.0, 0.0, 4.0, 10.0, 14.0]
    assert ys == [0.0, 2.0, 5.0, 3.0, 0.0]


def test_bucket_curve_drains_at_quota_per_window() -> None:
    # 100 per 10 s drains 10 per second: 50 at 0 -> 40 at 1 (+50) -> 90 -> 0 at 10.
    xs, ys = usage_curve([(0.0, 50.0), (1.0, 50.0)], quota=100, window=10, refill="bucket")
    assert xs == [0.0, 0.0, 1.0, 1.0, 10.0]
    assert ys == pytest.approx([0.0, 50.0, 40.0, 90.0, 0.0])
    # It empties between two events: the curve touches zero where it does.
    xs, ys = usage_curve([(0.0, 20.0), (5.0, 10.0)], quota=100, window=10, refill="bucket")
    assert xs == [0.0, 0.0, 2.0, 5.0, 5.0, 6.0]
    assert ys == pytest.approx([0.0, 20.0, 0.0, 0.0, 10.0, 0.0])


def test_usage_events_bill_arguments_at_start_and_results_at_finish() -> None:
    runner, result = finished_run()
    events = usage_events(result.outcomes, runner.resources)
    assert events["requests"] == [(0.0, 1.0), (0.0, 1.0), (10.0, 1.0), (10.0, 1.0), (20.0, 1.0)]
    # Results usage lands at the finish; the failed call 3 keeps its estimate (50).
    assert events["tokens"] == [(1.0, 10.0), (1.0, 20.0), (11.0, 30.0), (11.0, 50.0), (21.0, 50.0)]
    assert run_start(result) == 0.0
    assert run_start(result, start=-2.0) == -2.0


# -- the figure ----------------------------------------------------------------------------------
def test_plot_draws_usage_against_quota_and_the_calls_timeline() -> None:
    runner, result = finished_run()
    figure = plot_run(result, resources=runner.resources, title="five calls")
    assert isinstance(figure, matplotlib.figure.Figure)
    assert len(figure.axes) == 2
    figure.canvas.draw()  # renders without error

    lines = lines_by_gid(figure)
    requests = lines["usage:requests"]
    assert list(requests.get_xdata()) == [0.0, 0.0, 10.0, 20.0, 30.0]
    # Percent of the quota (2): two requests per window, one in the last.
    assert list(requests.get_ydata()) == [0.0, 100.0, 100.0, 50.0, 0.0]
    assert requests.get_drawstyle() == "steps-post"
    tokens = lines["usage:tokens"]
    assert list(tokens.get_xdata()) == pytest.approx([0, 1, 1, 4, 11, 11, 19, 21, 21, 26])
    assert list(tokens.get_ydata()) == pytest.approx([0, 0, 30, 0, 0, 80, 0, 0, 50, 0])
    assert list(lines["quota"].get_ydata()) == [100, 100]

    collections = collections_by_gid(figure)
    running = {
        int(seg[0][1]): (seg[0][0], seg[1][0])
        for status in ("succeeded", "failed")
        for seg in collections[f"calls:{status}"].get_segments()
    }
    assert running == {
        o.index: (o.started_at, o.finished_at) for o in result.outcomes
    }  # the run started at 0.0, so times are the outcomes' own
    failed = [int(seg[0][1]) for seg in collections["calls:failed"].get_segments()]
    assert failed == [3]
    waiting = {
        int(seg[0][1]): (seg[0][0], seg[1][0]) for seg in collections["waiting"].get_segments()
    }
    assert waiting == {2: (0.0, 10.0), 3: (0.0, 10.0), 4: (0.0, 20.0)}


def test_retried_calls_are_marked() -> None:
    attempts: dict[int, int] = {}

    async def flaky(i: int) -> int:
        attempts[i] = attempts.get(i, 0) + 1
        await asyncio.sleep(1)
        if i == 1 and attempts[i] == 1:
            raise HttpError(500)
        return i

    runner = Runner(flaky, [], progress=False, clock=FakeClock(), backoff=lambda n, e: 2.0)
    for i in range(3):
        runner.schedule(i)
    result = runner.run()
    figure = plot_run(result, panels=("timeline",))
    retried = collections_by_gid(figure)["retried"]
    assert retried.get_offsets().tolist() == [[3.0, 1.0]]  # the retry started at 1 + 2


def test_plot_prefers_the_ledger_history_when_given() -> None:
    pytest.importorskip("ipywidgets")
    from rate_limited._dashboard import DashboardProgress

    dashboard = DashboardProgress(display=False)
    runner, result = finished_run(progress=dashboard, progress_interval=0)
    history = dashboard.history
    assert len(history) >= 5
    figure = plot_run(result, resources=runner.resources, history=history)
    lines = lines_by_gid(figure)
    for name, quota in (("requests", 2), ("tokens", 100)):
        used = [100 * usage[name][0] / quota for _, usage in history]
        held = [100 * (usage[name][0] + usage[name][1]) / quota for _, usage in history]
        assert list(lines[f"usage:{name}"].get_ydata()) == pytest.approx(used)
        assert list(lines[f"held:{name}"].get_ydata()) == pytest.approx(held)
        assert list(lines[f"usage:{name}"].get_xdata()) == [t for t, _ in history]


def test_plot_into_given_axes() -> None:
    runner, result = finished_run()
    figure, (top, bottom) = plt.subplots(2, 1)
    assert plot_run(result, ax=[top, bottom], resources=runner.resources) is figure
    assert top.get_lines() and bottom.collections
    assert plot_run(result, ax=top, panels=("timeline",)) is figure
    figure, grid = plt.subplots(2, 1)  # an array of Axes works too
    assert plot_run(result, ax=grid, resources=runner.resources) is figure


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({}, "needs the resources", id="usage-without-resources"),
        pytest.param({"panels": ("pie",)}, "panels must be", id="unknown-panel"),
        pytest.param({"panels": ()}, "panels must be", id="no-panel"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs: dict[str, Any], message: str) -> None:
    _, result = finished_run()
    result.resources = ()  # e.g. a RunResult built by hand: nothing says what the quotas are
    with pytest.raises(ValueError, match=message):
        plot_run(result, **kwargs)


def test_wrong_number_of_axes() -> None:
    runner, result = finished_run()
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="one Axes per panel"):
        plot_run(result, ax=ax, resources=runner.resources)


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    runner, result = finished_run()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"rate_limited\[plot\]"):
        plot_run(result, resources=runner.resources)


# -- the time axis and empty runs ------------------------------------------------------------------
def assert_x_covers_the_run(figure: Any, span: float) -> None:
    for axis in figure.axes:
        left, right = axis.get_xlim()
        assert -0.05 * span <= left <= 0 and span <= right <= 1.05 * span, (left, right, span)


@pytest.mark.parametrize(
    "window",
    [pytest.param(10.0, id="10-s-bucket"), pytest.param(3600.0, id="1-hour-bucket")],
)
def test_the_time_axis_covers_the_run_not_the_drain(window: float) -> None:
    """Two seconds of calls against an hour's bucket: the axis is the 2 s, not the hour."""
    tokens = Resource(
        "tokens",
        1000,
        window,
        results_usage_extractor=lambda call, result: result["tokens"],
        max_results_usage_estimator=lambda call: 50,
        refill="bucket",
    )
    runner = Runner(work, [tokens], progress=False, clock=FakeClock(), max_concurrent=2)
    for i in range(4):
        runner.schedule(i)
    result = runner.run()
    span = max(o.finished_at for o in result.outcomes) - run_start(result)
    assert span == pytest.approx(2.0)
    figure = plot_run(result, resources=runner.resources)
    assert_x_covers_the_run(figure, span)
    # The bucket's curve goes on draining past the run; it is cut at the edge, not shown.
    tokens_line = lines_by_gid(figure)["usage:tokens"]
    assert max(tokens_line.get_xdata()) > 1.05 * span


def test_the_time_axis_with_the_ledger_history() -> None:
    pytest.importorskip("ipywidgets")
    from rate_limited._dashboard import DashboardProgress

    dashboard = DashboardProgress(display=False)
    runner, result = finished_run(progress=dashboard, progress_interval=0)
    figure = plot_run(result, resources=runner.resources, history=dashboard.history)
    assert_x_covers_the_run(figure, 21.0)


def texts_in(figure: Any) -> list[str]:
    return [text.get_text() for axis in figure.axes for text in axis.texts]


def test_an_empty_result_says_so() -> None:
    runner = Runner(work, resources(), progress=False, clock=FakeClock())
    result = runner.run()
    figure = plot_run(result)
    assert texts_in(figure) == ["No calls in this run: nothing to draw."] * 2
    assert not lines_by_gid(figure).get("usage:requests")


def test_a_result_read_from_the_store_says_no_call_ran(tmp_path: Any) -> None:
    store = str(tmp_path / "runs.db")
    for _ in range(2):
        runner = Runner(work, resources(), progress=False, clock=FakeClock(), store=store)
        for i in range(3):
            runner.schedule(i)
        result = runner.run()
        runner.close()
    assert all(o.from_store for o in result.outcomes)
    figure = plot_run(result, panels=("timeline",))
    assert texts_in(figure) == ["No call ran: all 3 came from the store."]


def test_usage_is_drawn_against_the_quota_the_ledger_enforced() -> None:
    """A limit discovered mid-run (quota 1 while probing, then 10) and one the provider
    does not have (the presets' placeholder quota): each sample against its own quota,
    and the unlimited one named in the legend, not drawn at 0%."""
    requests = Resource("requests", 1e15, 60, arguments_usage_extractor=lambda call: 1)
    tokens = Resource("tokens", 1e15, 60, arguments_usage_extractor=lambda call: 1)
    runner = Runner(work, [requests, tokens], progress=False, clock=FakeClock())
    runner.schedule(0)
    result = runner.run()
    history = [
        (0.0, {"requests": (1.0, 0.0, 1.0), "tokens": (5.0, 0.0, 1e15)}),
        (1.0, {"requests": (5.0, 0.0, 10.0), "tokens": (9.0, 0.0, 1e15)}),
    ]
    figure = plot_run(result, resources=runner.resources, history=history)
    lines = lines_by_gid(figure)
    assert list(lines["usage:requests"].get_ydata()) == [100.0, 50.0]
    assert "usage:tokens" not in lines and "no-limit:tokens" in lines
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["requests: 10 per 60 s (window)", "tokens: no limit"]
    # Rebuilt from the outcomes, a resource without a limit is named the same way.
    rebuilt = plot_run(result, resources=runner.resources)
    assert "no-limit:requests" in lines_by_gid(rebuilt)
