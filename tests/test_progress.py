"""Progress: counts calls (not attempts), says what a long wait is for, stays quiet when told.

Runs use ``FakeClock`` and async functions, so a 60 s quota window costs no real time.
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import tqdm
import tqdm.auto

from rate_limited import (
    LogProgress,
    Resource,
    Runner,
    StoreWarning,
    TqdmProgress,
    constant_backoff,
)
from rate_limited.progress import make_progress
from rate_limited.testing import FakeClock


class Recorder:
    """A Progress that records what the engine tells it."""

    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []
        self.updates: list[tuple[int, int]] = []
        self.waits: list[tuple[str | None, float]] = []
        self.finished: list[tuple[int, int, int, bool]] = []

    def start(self, stats: Any) -> None:
        self.started.append((stats.finished, stats.total))

    def update(self, stats: Any) -> None:
        self.updates.append((stats.finished, stats.total))

    def waiting(self, stats: Any, seconds: float, resource: str | None) -> None:
        self.waits.append((resource, seconds))

    def finish(self, stats: Any, interrupted: bool) -> None:
        self.finished.append((stats.finished, stats.total, stats.retries, interrupted))


def per_minute(quota: float) -> Resource:
    return Resource("requests", quota, 60, arguments_usage_extractor=lambda call: 1)


async def echo(x: int) -> int:
    return x


def fails_once_each() -> Any:
    seen: set[int] = set()

    async def function(x: int) -> int:
        if x not in seen:
            seen.add(x)
            raise ConnectionError("reset")
        return x

    return function


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[tqdm.tqdm[Any]], io.StringIO]]:
    """Every tqdm.auto bar the package makes, writing to a buffer instead of stderr."""
    made: list[tqdm.tqdm[Any]] = []
    buffer = io.StringIO()

    class RecordingTqdm(tqdm.tqdm):  # type: ignore[type-arg]
        monitor_interval = 0  # no monitor thread

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = buffer
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingTqdm)
    yield made, buffer
    for bar in made:
        bar.close()


# -- counting calls ------------------------------------------------------------------------------
def test_progress_counts_calls_not_attempts() -> None:
    recorder = Recorder()
    runner = Runner(
        fails_once_each(),
        [],
        clock=FakeClock(),
        progress=recorder,
        backoff=constant_backoff(0),
    )
    for x in range(7):
        runner.schedule(x)
    result = runner.run()
    runner.close()
    assert [o.attempts for o in result.outcomes] == [2] * 7
    assert recorder.started == [(0, 7)]
    assert recorder.finished == [(7, 7, 7, False)]  # 7 calls, 7 retries
    assert all(finished <= total == 7 for finished, total in recorder.updates)


@pytest.mark.parametrize("spec", [pytest.param(True, id="True"), pytest.param("tqdm", id="tqdm")])
def test_tqdm_bar_ends_full_with_retries(
    spec: object, bars: tuple[list[tqdm.tqdm[Any]], io.StringIO]
) -> None:
    made, buffer = bars
    runner = Runner(
        fails_once_each(), [], clock=FakeClock(), progress=spec, backoff=constant_backoff(0)
    )
    for x in range(12):
        runner.schedule(x)
    runner.run()
    runner.close()
    assert len(made) == 1
    bar = made[0]
    assert bar.n == bar.total == 12  # calls, not the 24 attempts
    assert "12/12" in buffer.getvalue()


def test_tqdm_total_grows_with_calls_scheduled_during_the_run(
    bars: tuple[list[tqdm.tqdm[Any]], io.StringIO],
) -> None:
    made, _ = bars
    runner: Runner

    async def crawl(depth: int) -> int:
        if depth < 3:
            runner.schedule(depth + 1)
        return depth

    runner = Runner(crawl, [], clock=FakeClock(), progress=True)
    runner.schedule(0)
    assert runner.run().results == [0, 1, 2, 3]
    runner.close()
    assert made[-1].n == made[-1].total == 4


def test_a_second_run_gets_its_own_full_bar(bars: tuple[list[tqdm.tqdm[Any]], io.StringIO]) -> None:
    made, _ = bars
    runner = Runner(echo, [], clock=FakeClock(), progress=True)
    for runs, size in enumerate((3, 5), start=1):
        for x in range(size):
            runner.schedule(x)
        runner.run()
        assert len(made) == runs
        assert made[-1].n == made[-1].total == size
    runner.close()


# -- choosing the display ------------------------------------------------------------------------
async def unpicklable(x: int) -> Any:
    return (lambda: x) if x % 2 else x  # a local lambda can't be pickled into the store


def test_the_tqdm_summary_shows_the_results_not_stored(
    bars: tuple[list[tqdm.tqdm[Any]], io.StringIO], tmp_path: Any
) -> None:
    made, buffer = bars
    with Runner(
        unpicklable, [], clock=FakeClock(), progress=True, store=str(tmp_path / "runs.db")
    ) as runner:
        for x in range(6):
            runner.schedule(x)
        with pytest.warns(StoreWarning, match="^3 finished"):
            runner.run()
    assert made[-1].n == 6
    assert "not stored=3" in buffer.getvalue()


def test_log_progress_says_how_many_results_were_not_stored(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="rate_limited"),
        Runner(
            unpicklable, [], clock=FakeClock(), progress="log", store=str(tmp_path / "runs.db")
        ) as runner,
    ):
        for x in range(6):
            runner.schedule(x)
        with pytest.warns(StoreWarning):
            runner.run()
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Done")]
    assert len(done) == 1 and "3 not stored" in done[0]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_automatic_progress_is_log_lines_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(make_progress(None), LogProgress)


def test_automatic_progress_is_a_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, bars: tuple[list[tqdm.tqdm[Any]], io.StringIO]
) -> None:
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    assert isinstance(make_progress(None), TqdmProgress)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        pytest.param(False, type(None), id="False"),
        pytest.param("log", LogProgress, id="log"),
        pytest.param(True, TqdmProgress, id="True"),
        pytest.param("tqdm", TqdmProgress, id="tqdm"),
    ],
)
def test_make_progress_choices(
    spec: object, kind: type, bars: tuple[list[tqdm.tqdm[Any]], io.StringIO]
) -> None:
    assert type(make_progress(spec)) is kind


def test_dashboard_outside_a_notebook_is_the_tqdm_bar_with_a_notice(
    bars: tuple[list[tqdm.tqdm[Any]], io.StringIO],
) -> None:
    runner = Runner(echo, [], progress="dashboard", clock=FakeClock())
    runner.schedule(1)
    with pytest.warns(UserWarning, match=r"needs a Jupyter notebook.*tqdm bar instead") as seen:
        assert runner.run().results == [1]
    assert len(seen) == 1
    assert seen[0].filename == __file__  # points at the user's run() line
    made, _ = bars
    assert len(made) == 1 and made[0].n == 1


DASHBOARD_SCRIPT = textwrap.dedent(
    """
    import sys
    from rate_limited import Runner

    runner = Runner(lambda x: 2 * x, [], progress="dashboard")
    for i in range(5):
        runner.schedule(i)
    print(runner.run().results)
    print("loaded:", [m for m in ("ipywidgets", "rate_limited._dashboard") if m in sys.modules])
    """
)


def test_dashboard_in_a_plain_script_prints_the_bar_and_one_line_notice() -> None:
    child = subprocess.run(
        [sys.executable, "-c", DASHBOARD_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["[0, 2, 4, 6, 8]", "loaded: []"]  # no widget repr
    notices = [line for line in child.stderr.splitlines() if "UserWarning" in line]
    assert len(notices) == 1 and "showing the tqdm bar instead" in notices[0]
    assert "5/5" in child.stderr


def test_a_progress_object_is_used_as_is() -> None:
    recorder = Recorder()
    assert make_progress(recorder) is recorder


def test_automatic_progress_prints_nothing_when_stderr_is_not_a_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    runner = Runner(echo, [], clock=FakeClock())  # progress=None; stderr is captured: no TTY
    for x in range(20):
        runner.schedule(x)
    runner.run()
    runner.close()
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_false_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    runner = Runner(
        fails_once_each(), [], clock=FakeClock(), progress=False, backoff=constant_backoff(0)
    )
    for x in range(20):
        runner.schedule(x)
    runner.run()
    runner.close()
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


QUIET_CHILD = textwrap.dedent(
    """
    import asyncio
    from rate_limited import Resource, Runner
    from rate_limited.testing import FakeClock

    async def echo(x):
        return x

    requests = Resource("requests", 1, 60, arguments_usage_extractor=lambda call: 1)
    runner = Runner(echo, [requests], clock=FakeClock(), progress={progress})
    runner.schedule(1)
    runner.schedule(2)  # waits 60 s (virtual) for the quota
    assert runner.run().results == [1, 2]
    """
)


@pytest.mark.parametrize(
    "progress",
    [
        pytest.param("False", id="False"),
    ],
)
def test_a_quiet_run_with_a_long_wait_prints_nothing_in_a_plain_script(progress: str) -> None:
    """In a fresh interpreter with no logging configured (pytest's handlers hide this)."""
    child = subprocess.run(
        [sys.executable, "-c", QUIET_CHILD.format(progress=progress)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "" and child.stderr == ""


# -- long waits ----------------------------------------------------------------------------------
def test_a_long_wait_for_quota_is_reported_once_with_resource_and_length() -> None:
    recorder = Recorder()
    runner = Runner(
        echo,
        [per_minute(1)],
        clock=FakeClock(),
        progress=recorder,
        long_wait_warning_seconds=2,
    )
    runner.schedule(1)
    runner.schedule(2)
    result = runner.run()
    runner.close()
    assert [o.started_at for o in result.outcomes] == [0.0, 60.0]
    assert recorder.waits == [("requests", 60.0)]


def test_each_long_wait_is_reported() -> None:
    recorder = Recorder()
    runner = Runner(
        echo, [per_minute(1)], clock=FakeClock(), progress=recorder, long_wait_warning_seconds=2
    )
    for x in range(3):
        runner.schedule(x)
    runner.run()
    runner.close()
    assert recorder.waits == [("requests", 60.0), ("requests", 60.0)]


@pytest.mark.parametrize(
    ("threshold", "window"),
    [
        pytest.param(None, 60.0, id="warnings-off"),
        pytest.param(2.0, 1.0, id="short-wait"),
    ],
)
def test_short_waits_or_disabled_warnings_report_nothing(
    threshold: float | None, window: float
) -> None:
    recorder = Recorder()
    requests = Resource("requests", 1, window, arguments_usage_extractor=lambda call: 1)
    runner = Runner(
        echo, [requests], clock=FakeClock(), progress=recorder, long_wait_warning_seconds=threshold
    )
    runner.schedule(1)
    runner.schedule(2)
    assert [o.started_at for o in runner.run().outcomes] == [0.0, window]
    runner.close()
    assert recorder.waits == []


def test_the_tqdm_bar_says_what_it_waits_for(
    bars: tuple[list[tqdm.tqdm[Any]], io.StringIO],
) -> None:
    made, buffer = bars
    runner = Runner(
        echo, [per_minute(1)], clock=FakeClock(), progress=True, long_wait_warning_seconds=2
    )
    runner.schedule(1)
    runner.schedule(2)
    runner.run()
    runner.close()
    assert "waiting 60.0 s for requests" in buffer.getvalue()
    assert made[-1].n == 2


# -- log lines -----------------------------------------------------------------------------------
def test_log_progress_writes_info_lines(caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(
        fails_once_each(), [], clock=FakeClock(), progress="log", backoff=constant_backoff(0)
    )
    for x in range(3):
        runner.schedule(x)
    with caplog.at_level(logging.INFO, logger="rate_limited"):
        runner.run()
    runner.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "rate_limited"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "rate_limited")
    assert lines[0] == "Running 3 calls (0 already finished)"
    assert lines[-1].startswith("Done: 3/3 calls finished, 3 retries")


def test_log_progress_reports_a_long_wait(caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(
        echo, [per_minute(1)], clock=FakeClock(), progress="log", long_wait_warning_seconds=2
    )
    runner.schedule(1)
    runner.schedule(2)
    with caplog.at_level(logging.INFO, logger="rate_limited"):
        runner.run()
    runner.close()
    assert any("Waiting 60.0 s for requests" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_no_progress_output_in_a_notebook_like_running_loop(
    capfd: pytest.CaptureFixture[str],
) -> None:
    runner = Runner(echo, [], clock=FakeClock(), progress=False)

    async def cell() -> list[Any]:
        runner.schedule(1)
        return runner.run().results

    assert asyncio.run(cell()) == [1]
    runner.close()
    assert capfd.readouterr().err == ""


def test_time_to_first_token_is_shown_when_calls_stream() -> None:
    from rate_limited._stats import RunStats
    from rate_limited.progress import LogProgress

    stats = RunStats(total=2, done=2, failed=0, now=0.0)
    assert stats.time_to_first_token is None
    stats.first_tokens, stats.first_token_total = 2, 0.5
    assert stats.time_to_first_token == 0.25
    assert "first token after 0.25 s on average" in LogProgress()._line(stats)
