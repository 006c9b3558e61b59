"""The ipywidgets dashboard: its values follow the run, in-process and in a real kernel.

* Unit: ``DashboardProgress`` driven by real Runners on a FakeClock (exact times, no real
  waiting); a subclass records ``state()`` at every call the engine makes.
* Kernel: a run is started with ``runner.start()`` in a real Jupyter kernel and later
  cells read ``dashboard.state()`` while it goes on: the values move, then end "done".
* Plain scripts: a Runner with the default progress never imports ipywidgets or the
  dashboard module.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from rate_limited import Budget, Resource, Runner
from rate_limited.testing import FakeClock

pytest.importorskip("ipywidgets")

from rate_limited import _dashboard
from rate_limited._dashboard import DashboardProgress
from rate_limited._format import format_amount

if TYPE_CHECKING:
    from rate_limited._stats import RunStats


class Recording(DashboardProgress):
    """Keeps ``state()`` after every call of the engine, with the stats it was given."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.seen: list[tuple[str, dict[str, Any], dict[str, tuple[float, float, float]]]] = []

    def _keep(self, what: str, stats: RunStats) -> None:
        self.seen.append((what, self.state(), stats.usage()))

    def start(self, stats: RunStats) -> None:
        super().start(stats)
        self._keep("start", stats)

    def update(self, stats: RunStats) -> None:
        super().update(stats)
        self._keep("update", stats)

    def waiting(self, stats: RunStats, seconds: float, resource: str | None) -> None:
        super().waiting(stats, seconds, resource)
        self._keep("waiting", stats)

    def finish(self, stats: RunStats, interrupted: bool) -> None:
        super().finish(stats, interrupted)
        self._keep("finish", stats)


class HttpError(Exception):
    def __init__(self, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = {} if retry_after is None else {"retry-after": str(retry_after)}


def requests_per(quota: float, window: float) -> Resource:
    return Resource("requests", quota, window, arguments_usage_extractor=lambda call: 1)


async def one_second(i: int) -> int:
    await asyncio.sleep(1)
    return i


def fake_run(function: Any, resources: list[Resource], n: int, **kwargs: Any) -> Recording:
    dashboard = Recording()
    kwargs.setdefault("progress_interval", 0)
    with Runner(function, resources, progress=dashboard, clock=FakeClock(), **kwargs) as runner:
        for i in range(n):
            runner.schedule(i)
        runner.run()
    return dashboard


# -- unit: values follow the run -------------------------------------------------------------------
def test_counts_and_bar_follow_the_run_to_done() -> None:
    dashboard = fake_run(one_second, [requests_per(3, 10)], 9)
    finished = [state["finished"] for _, state, _ in dashboard.seen]
    assert finished == sorted(finished) and finished[0] == 0 and finished[-1] == 9
    assert len(set(finished)) > 3  # it moved in steps, not only at the end
    what, final, _ = dashboard.seen[-1]
    assert what == "finish"
    assert final["status"] == "done" and final["succeeded"] == 9 and final["failed"] == 0
    assert final["bar"] == {"value": 9, "max": 9, "style": "success"}
    assert "<b>9</b> / 9 calls" in final["text"]["calls"] and "done" in final["text"]["title"]
    assert final["in_flight"] == 0 and final["eta"] is None
    assert final["elapsed"] == pytest.approx(21.0)  # windows at 0, 10, 20; each call 1 s


def test_usage_bars_show_the_ledger() -> None:
    tokens = Resource(
        "tokens",
        100,
        10,
        results_usage_extractor=lambda call, result: 10,
        max_results_usage_estimator=lambda call: 40,
        refill="bucket",
    )
    dashboard = fake_run(one_second, [requests_per(3, 10), tokens], 9)
    moved = set()
    for _, state, ledger in dashboard.seen:
        assert set(state["usage"]) == {"requests", "tokens"}
        for name, (used, reserved, quota) in ledger.items():
            bar = state["usage"][name]
            assert (bar["used"], bar["reserved"], bar["quota"]) == (used, reserved, quota)
            assert bar["bar_max"] == quota
            assert bar["bar_value"] == pytest.approx(min(used + reserved, quota))
            assert f"/ {format_amount(quota)}" in bar["text"]
            moved.add((name, bar["bar_value"]))
    assert {value for name, value in moved if name == "requests"} >= {0.0, 3.0}
    # While calls are in flight their token estimates are held as reservations.
    assert any(state["usage"]["tokens"]["reserved"] > 0 for _, state, _ in dashboard.seen)


def test_cost_and_budget_are_shown() -> None:
    budget = Budget(2.0, cost=lambda call, result: 0.25, max_cost=lambda call: 0.5)
    dashboard = fake_run(one_second, [requests_per(3, 10)], 6, budget=budget)
    _, final, _ = dashboard.seen[-1]
    assert final["cost"] == pytest.approx(1.5)
    assert "$1.50 spent" in final["text"]["counts"]
    row = final["usage"]["budget_usd"]
    assert (row["used"], row["reserved"], row["quota"]) == (pytest.approx(1.5), 0.0, 2.0)
    held = [state["usage"]["budget_usd"]["reserved"] for _, state, _ in dashboard.seen]
    assert max(held) == pytest.approx(1.5)  # three calls in flight hold $0.50 each


def test_waiting_for_a_quota_is_shown() -> None:
    dashboard = fake_run(one_second, [requests_per(3, 10)], 9)
    waits = [state for what, state, _ in dashboard.seen if what == "waiting"]
    assert waits, "admission waited 10 s for the requests window"
    state = waits[0]
    assert state["waiting_for"] == "requests"
    assert state["waiting_seconds"] == pytest.approx(10.0)
    assert "waiting for <b>requests</b>: 10 s left" in state["text"]["waiting"]
    assert state["usage"]["requests"]["bar_style"] == "danger"
    assert "the limit now" in state["usage"]["requests"]["text"]
    final = dashboard.seen[-1][1]
    assert final["text"]["waiting"] == "" and final["waiting_for"] is None
    assert final["waited"]["requests"] == pytest.approx(20.0)  # from 0 to 10 and 10 to 20
    assert "waited" in final["usage"]["requests"]["text"]


def test_failures_retries_429s_and_cooldowns() -> None:
    attempts: dict[int, int] = {}

    async def flaky(i: int) -> int:
        attempts[i] = attempts.get(i, 0) + 1
        if i == 0 and attempts[i] == 1:
            await asyncio.sleep(0.1)
            raise HttpError(429, retry_after=5)
        await asyncio.sleep(1)
        if i == 1:
            raise HttpError(400)  # permanent
        return i

    dashboard = fake_run(flaky, [], 4, max_concurrent=4, backoff=lambda n, e: 0.0)
    cooling = [s for _, s, _ in dashboard.seen if s["cooling_down"] is not None]
    # Seen when admission starts waiting (0.1 s: 5 s left) and when calls 1-3 end (1 s).
    assert sorted({round(s["cooling_down"], 6) for s in cooling}) == [4.1, 5.0]
    assert "cooling down for 4.1 s" in cooling[-1]["text"]["limits"]
    assert cooling[0]["waiting_for"] == "cool-down after HTTP 429"
    final = dashboard.seen[-1][1]
    assert final["rate_limited"] == 1 and final["cooldowns"] == 1 and final["retries"] == 1
    assert final["failed"] == 1 and final["succeeded"] == 3
    assert "1 HTTP 429s" in final["text"]["limits"] and "cooling" not in final["text"]["limits"]
    assert "✖ 1 failed" in final["text"]["counts"] and "1 retries" in final["text"]["counts"]
    assert final["bar"]["style"] == "danger"


def test_eta_from_the_recent_completion_rate() -> None:
    dashboard = fake_run(one_second, [], 10, max_concurrent=1)
    by_finished = {s["finished"]: s for what, s, _ in dashboard.seen if what == "update"}
    halfway = by_finished[5]  # one call a second for 5 s: 5 more take 5 s
    assert halfway["rate"] == pytest.approx(1.0)
    assert halfway["eta"] == pytest.approx(5.0)
    assert "ETA 5 s" in halfway["text"]["time"] and "elapsed 5 s" in halfway["text"]["time"]


def test_interrupted_is_the_final_state() -> None:
    gate = threading.Event()

    def wait_for_gate(i: int) -> int:
        gate.wait(10)
        return i

    dashboard = Recording()
    runner = Runner(wait_for_gate, [], max_concurrent=2, progress=dashboard)
    for i in range(6):
        runner.schedule(i)
    handle = runner.start()
    deadline = time.monotonic() + 5
    while dashboard.state().get("in_flight", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    running = dashboard.state()
    assert running["status"] == "running" and running["in_flight"] == 2
    partial = handle.stop(timeout=10)
    assert partial.interrupted
    final = dashboard.state()
    assert final["status"] == "interrupted" and final["bar"]["style"] == "warning"
    assert "interrupted" in final["text"]["title"]
    # The two sync calls in threads could not be stopped (the gate is still closed).
    assert "2 still running (their results will be kept)" in final["text"]["counts"]
    gate.set()
    runner.run()  # the same dashboard again: it resets, then ends done
    assert dashboard.state()["status"] == "done"
    assert dashboard.state()["finished"] == 6


async def unpicklable(i: int) -> Any:
    return (lambda: i) if i % 2 else i  # a local lambda can't be pickled into the store


def test_results_not_stored_are_shown(tmp_path: Any) -> None:
    from rate_limited import StoreWarning

    with pytest.warns(StoreWarning, match="^3 finished"):
        dashboard = fake_run(unpicklable, [], 6, store=str(tmp_path / "runs.db"))
    final = dashboard.state()
    assert final["status"] == "done" and final["store_failures"] == 3
    assert "3 not stored" in final["text"]["counts"]


def test_a_run_that_had_nothing_to_do() -> None:
    dashboard = fake_run(one_second, [], 0)
    assert dashboard.state()["status"] == "done"
    assert dashboard.state()["bar"]["max"] == 1  # an empty bar, not a division by zero


def test_whole_units_against_a_large_quota() -> None:
    """A requests bucket drains continuously: 160.51 requests is shown as 161."""
    requests = Resource(
        "requests", 600, 60, arguments_usage_extractor=lambda call: 1, refill="bucket"
    )

    async def a_third(i: int) -> int:
        await asyncio.sleep(0.33)
        return i

    dashboard = fake_run(a_third, [requests], 20, max_concurrent=5)
    texts = [state["usage"]["requests"]["text"] for _, state, _ in dashboard.seen]
    used = [state["usage"]["requests"]["used"] for _, state, _ in dashboard.seen]
    assert any(u != int(u) for u in used)  # the ledger does hold fractions
    assert all(re.fullmatch(r"[\d,]+ used / 600 \(\d+%\).*", text) for text in texts), texts


def test_a_limit_the_provider_does_not_have_reads_no_limit() -> None:
    unlimited = Resource("tokens", 1e15, 60, arguments_usage_extractor=lambda call: 3)
    dashboard = fake_run(one_second, [requests_per(3, 10), unlimited], 3)
    final = dashboard.state()["usage"]["tokens"]
    assert final["text"] == "9 used · no limit"
    assert final["quota"] is None and final["fraction"] == 0.0
    assert "1,000,000,000,000,000" not in dashboard.text()
    assert "tokens: 9 used · no limit" in dashboard.text()


def test_limits_discovered_from_the_headers_are_shown(make_provider: Any) -> None:
    openai = pytest.importorskip("openai")
    from rate_limited.apis.openai import ChatCompletions

    provider = make_provider(rpm=600, tpm=12_000)
    with openai.OpenAI(base_url=provider.base_url, api_key="sk-test") as client:
        chat = ChatCompletions(client)
        dashboard = Recording()
        runner = chat.runner(progress=dashboard, progress_interval=0)
        for i in range(5):
            runner.schedule(
                model="gpt-4o-mini",
                max_tokens=20,
                messages=[{"role": "user", "content": f"hi {i}"}],
            )
        runner.run()
        runner.close()
    final = dashboard.state()["usage"]
    assert final["requests_per_minute"]["quota"] == 600
    assert final["tokens_per_minute"]["quota"] == 12_000
    # The bucket refills continuously (10 requests a second): what the 5 requests left in
    # it at the end depends on how long the run took, so count whole units, not the time.
    used = re.match(r"(\d+) used / 600 \(", final["requests_per_minute"]["text"])
    assert used is not None, final["requests_per_minute"]["text"]
    assert 0 <= int(used.group(1)) <= 5
    assert "/ 12,000 (" in final["tokens_per_minute"]["text"]


class Published:
    """Records what the dashboard publishes to the notebook (instead of IPython)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[dict[str, Any], str, bool]] = []
        monkeypatch.setattr(_dashboard, "publish", self.publish)

    def publish(self, data: dict[str, Any], display_id: str, *, update: bool = False) -> None:
        self.calls.append((data, display_id, update))


WIDGET = "application/vnd.jupyter.widget-view+json"


def test_the_final_state_replaces_the_widget_for_static_renders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published = Published(monkeypatch)
    dashboard = DashboardProgress(title="static")
    (shown, display_id, update), *_ = published.calls
    assert display_id == dashboard.display_id and not update
    assert set(shown) == {WIDGET, "text/html", "text/plain"}  # live, with copies of it
    assert shown[WIDGET]["model_id"] == dashboard.widget.model_id

    runner = Runner(
        one_second, [requests_per(3, 10)], progress=dashboard, clock=FakeClock(), name="job"
    )
    for i in range(6):
        runner.schedule(i)
    runner.run()
    final, final_id, update = published.calls[-1]
    assert final_id == display_id and update
    assert set(final) == {"text/html", "text/plain"}  # no widget: readable anywhere
    assert final["text/plain"].splitlines() == [
        "rate_limited · static · done",
        "6 / 6 calls · 100%",
        "✔ 6 succeeded · 0 failed",
        "requests: 3 used / 3 (100%) · waited 10 s",
        "elapsed 11 s · 0.5 calls/s",
    ]
    html = final["text/html"]
    assert "<b>6</b> / 6 calls" in html and "<progress value='6' max='6'" in html
    assert "<progress value='3' max='3'" in html and "<code>requests</code>" in html

    # The same dashboard for another run: the widget comes back, then the final state.
    runner.schedule(6)
    runner.run()
    kinds = [(WIDGET in data, update) for data, _, update in published.calls]
    assert kinds[-2:] == [(True, True), (False, True)]
    assert "1 / 1 calls" in published.calls[-1][0]["text/plain"]


def test_a_dashboard_never_shown_publishes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    published = Published(monkeypatch)
    fake_run(one_second, [], 2)
    assert published.calls == []


def test_missing_ipywidgets_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match=r"rate_limited\[notebook\]"):
        DashboardProgress(display=False)


# -- a real kernel --------------------------------------------------------------------------
KERNEL_SETUP = textwrap.dedent(
    """
    import asyncio, json
    from rate_limited import Runner, Resource
    from rate_limited._dashboard import DashboardProgress

    stage = 0  # calls 10-19 wait for stage 1, calls 20-49 for stage 2 (the test sets it)

    async def work(i):
        await asyncio.sleep(0.05)
        while stage < (i >= 10) + (i >= 20):
            await asyncio.sleep(0.01)
        return i

    dashboard = DashboardProgress(title="kernel test")
    runner = Runner(
        work,
        [Resource("requests", 5, 0.5, arguments_usage_extractor=lambda call: 1)],
        progress=dashboard,
    )
    for i in range(50):
        runner.schedule(i)
    handle = runner.start()
    """
)


@pytest.fixture
def kernel_client() -> Iterator[Any]:
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client: Any, code: str) -> tuple[str, list[str]]:
    """Run a cell: what it printed (or its traceback) and the mime types it displayed."""
    printed: list[str] = []
    displayed: list[str] = []

    def on_output(msg: dict[str, Any]) -> None:
        kind = msg["msg_type"]
        if kind == "stream":
            printed.append(msg["content"]["text"])
        elif kind == "error":
            printed.append("\n".join(msg["content"]["traceback"]))
        elif kind == "display_data":
            displayed.extend(msg["content"]["data"])

    reply = client.execute_interactive(code, timeout=60, output_hook=on_output)
    assert reply["content"]["status"] == "ok", "".join(printed)
    return "".join(printed), displayed


def read_state(client: Any) -> dict[str, Any]:
    printed, _ = execute(client, "print(json.dumps(dashboard.state()))")
    return json.loads(printed.strip().splitlines()[-1])  # type: ignore[no-any-return]


def state_when(client: Any, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The dashboard's state, read until ``condition`` holds (the run is gated: it does)."""
    deadline = time.monotonic() + 60
    while not condition(state := read_state(client)):
        assert time.monotonic() < deadline, state
    return state


@pytest.mark.slow
def test_dashboard_values_move_in_a_real_kernel(kernel_client: Any) -> None:
    """50 calls at 5 per 0.5 s, gated in three stages: the widgets read at 10 and at 20
    calls finished, then at the end."""
    _, displayed = execute(kernel_client, KERNEL_SETUP)
    assert "application/vnd.jupyter.widget-view+json" in displayed  # shown in that cell
    # (no "finished" in the state until the dashboard first updates: a loaded machine)
    first = state_when(kernel_client, lambda state: state.get("finished") == 10)
    execute(kernel_client, "stage = 1")
    second = state_when(kernel_client, lambda state: state.get("finished") == 20)
    assert first["status"] == second["status"] == "running"
    assert 0 < first["finished"] < second["finished"] < 50
    assert first["bar"]["value"] == first["finished"] and first["bar"]["max"] == 50
    assert second["usage"]["requests"]["bar_max"] == 5
    assert second["elapsed"] > first["elapsed"]
    printed, _ = execute(
        kernel_client, "stage = 2\nresult = handle.result()\nprint(json.dumps(dashboard.state()))"
    )
    final = json.loads(printed.strip().splitlines()[-1])
    assert final["status"] == "done" and final["finished"] == final["succeeded"] == 50
    assert final["bar"] == {"value": 50, "max": 50, "style": "success"}
    assert final["waited"].get("requests", 0) > 1  # the quota was the limit


# -- plain scripts ---------------------------------------------------------------------------
PLAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from rate_limited import Budget, Resource, Runner

    def double(x):
        return 2 * x

    for progress in (None, True, "log"):
        runner = Runner(
            double,
            [Resource("requests", 100, 1, arguments_usage_extractor=lambda call: 1)],
            progress=progress,
        )
        for i in range(20):
            runner.schedule(i)
        assert runner.run().results == [2 * i for i in range(20)]
        runner.close()
    loaded = [m for m in ("ipywidgets", "rate_limited._dashboard") if m in sys.modules]
    print("loaded:", loaded)
    """
)


def test_plain_scripts_never_import_the_dashboard() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"


def test_time_to_first_token_of_streamed_calls() -> None:
    from rate_limited._feedback import LedgerControl

    class Streamed:
        """Reads its admission as the presets do (a FeedbackSource: the Runner attaches
        its ledger, and puts each attempt's admission in the attempt's context)."""

        def attach_ledger(self, control: LedgerControl) -> None:
            self.control = control

        async def __call__(self, i: int) -> int:
            admission = LedgerControl.admission()  # what the presets report a TTFT on
            assert admission is not None
            admission.first_token = 0.25 * (i + 1)
            await asyncio.sleep(1)
            return i

    dashboard = fake_run(Streamed(), [requests_per(10, 10)], 3)
    final = dashboard.seen[-1][1]
    assert final["time_to_first_token"] == pytest.approx(0.5)  # (0.25 + 0.5 + 0.75) / 3
    assert "first token after 0.5 s on average" in final["text"]["counts"]
