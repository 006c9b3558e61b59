"""``RunResult.plot()``: a picture of a finished run, reconstructed from its outcomes.

After a run, a user would rather look at the run than read a table. Two panels share a
time axis in seconds since the run started:

* **usage**: each resource's usage over time as a percentage of its quota (100% is the
  limit), so it is plain which one was binding. It is rebuilt from the outcomes: a call's
  arguments usage is billed when its last attempt started, the rest of its usage when it
  finished, and usage then expires the way the resource refills (whole after the window,
  or draining at quota/window per second for a bucket). Reservations are not shown.
* **timeline**: one row per call: a thin grey line from the run's start until its last
  attempt started (waiting for quota, a free slot or a retry), a bar while that attempt
  ran (green: succeeded, red: failed, grey: cancelled or still running), and a cross
  where a call was retried after a failure.

The rebuilt usage is exact for calls that ran once; a retried call's earlier attempts are
drawn at its last attempt (outcomes keep no per-attempt times), so a run with many
billed failures can show more than the quota where the ledger never allowed it. The
ledger's own numbers, sampled while the run went (``history=``: a
``DashboardProgress.history``, or the result's ``usage_history``), are drawn instead
when given: used as a solid line and used + reserved dotted.

The time axis covers the run, from its start to its last call's end (a bucket that is
still draining after that is cut off at the edge), and a result with no call that ran
says so in the axes instead of leaving them empty. A limit the provider does not have
(a preset's placeholder quota) is named in the legend, not drawn at 0%.

The usage panel needs the resources (quota, window, refill): ``resources=``, else the
result's own ``resources`` attribute. matplotlib is optional (``pip install
'rate_limited[plot]'``) and imported only when a plot is drawn; the arithmetic
(``usage_events``, ``usage_curve``) is plain Python and tested without a figure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rate_limited.apis._limits import UNKNOWN_QUOTA  # a preset's "no such limit" quota

if TYPE_CHECKING:
    from rate_limited._outcome import Outcome
    from rate_limited.resources import Resource


class RunResult(Protocol):
    """What a picture of a run reads of its ``RunResult`` (a protocol: ``RunResult.plot()``
    calls this module). ``started_at``, ``resources`` and ``usage_history`` are read if
    present."""

    @property
    def outcomes(self) -> Sequence[Outcome]: ...

    @property
    def elapsed(self) -> float: ...


__all__ = ["PANELS", "plot_run", "run_end", "run_start", "usage_curve", "usage_events"]

#: The panels ``plot_run`` can draw, top to bottom.
PANELS = ("usage", "timeline")

#: Samples of the ledger: ``(loop time, {resource: (used, reserved, quota)})``.
UsageHistory = Sequence[tuple[float, dict[str, tuple[float, float, float]]]]

#: Margin on each side of the run on the time axis, as a fraction of its length.
X_MARGIN = 0.02

#: Bar colours of the timeline, by status.
STATUS_COLORS = {
    "succeeded": "tab:green",
    "failed": "tab:red",
    "cancelled": "tab:gray",
    "running": "tab:gray",
    "pending": "tab:gray",
}


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "RunResult.plot() needs matplotlib: pip install 'rate_limited[plot]'"
        ) from exc
    return plt


# -- the arithmetic ----------------------------------------------------------------------------
def run_start(result: RunResult, start: float | None = None) -> float:
    """Loop time the run started at: ``start``, else the result's ``started_at``, else an
    estimate (the last finish minus the elapsed time, no later than the first start)."""
    if start is not None:
        return float(start)
    own = getattr(result, "started_at", None)
    if isinstance(own, int | float) and not isinstance(own, bool):
        return float(own)
    starts = [o.started_at for o in result.outcomes if o.started_at is not None]
    ends = [o.finished_at for o in result.outcomes if o.finished_at is not None]
    candidates = []
    if starts:
        candidates.append(min(starts))
    if ends and result.elapsed:
        candidates.append(max(ends) - result.elapsed)
    return min(candidates) if candidates else 0.0


def run_end(result: RunResult, start: float) -> float:
    """Loop time the run ended: its start plus its elapsed time, or its last call's end
    (or start) if later (a sync call that finished after an interrupt)."""
    ends = [start + result.elapsed]
    for outcome in result.outcomes:
        if outcome.finished_at is not None:
            ends.append(outcome.finished_at)
        elif outcome.started_at is not None:
            ends.append(outcome.started_at)
    return max(ends)


def usage_events(
    outcomes: Sequence[Outcome], resources: Sequence[Resource]
) -> dict[str, list[tuple[float, float]]]:
    """Per resource name, the ``(loop time, amount)`` billings rebuilt from outcomes.

    A call's arguments usage (its demand, in the order of ``resources``: the runner's
    list) is billed at ``started_at`` and the rest of its recorded usage at
    ``finished_at`` (``started_at`` if it has not finished). Outcomes that did not run
    (pending, or read from a store) bill nothing.
    """
    events: dict[str, list[tuple[float, float]]] = {r.name: [] for r in resources}
    for outcome in outcomes:
        started = outcome.started_at
        if started is None or not outcome.usage or outcome.from_store:
            continue
        # Without its Call (an unpickled result), all its usage is billed at the finish.
        demand = outcome.call.demand if outcome.call is not None else ()
        end = outcome.finished_at if outcome.finished_at is not None else started
        for i, resource in enumerate(resources):
            total = outcome.usage.get(resource.name, 0.0)
            if total <= 0:
                continue
            arguments = min(demand[i][0], total) if i < len(demand) else 0.0
            if arguments > 0:
                events[resource.name].append((started, arguments))
            if total > arguments:
                events[resource.name].append((end, total - arguments))
    for billed in events.values():
        billed.sort()
    return events


def usage_curve(
    events: Sequence[tuple[float, float]],
    quota: float,
    window: float,
    refill: str = "window",
    start: float | None = None,
) -> tuple[list[float], list[float]]:
    """Usage counting against a quota over time, as the points of a line ``(xs, ys)``.

    ``"window"``: an amount counts from its time until ``window`` seconds later; each
    point is the value from then on (draw it with ``drawstyle="steps-post"``).
    ``"bucket"``: the level drains at ``quota / window`` per second; the points are exact
    corners of the (piecewise linear) level, a jump being two points at the same time.
    ``start``: a first point at zero usage there (if it is not after the first event).
    """
    merged: dict[float, float] = defaultdict(float)
    for when, amount in events:
        merged[when] += amount
    events = sorted(merged.items())
    xs: list[float] = []
    ys: list[float] = []
    if start is not None and (not events or start <= events[0][0]):
        xs.append(start)
        ys.append(0.0)
    noise = 1e-9 * quota
    if refill == "window":
        changes: dict[float, float] = defaultdict(float)
        for when, amount in events:
            changes[when] += amount
        for when, amount in events:
            changes[when + window] -= amount
        level = 0.0
        for when in sorted(changes):
            level += changes[when]
            if abs(level) < noise:
                level = 0.0  # float sums of expired amounts: no residue
            xs.append(when)
            ys.append(level)
        return xs, ys
    rate = quota / window
    level = 0.0
    last: float | None = None
    for when, amount in events:
        if last is not None:
            drained = level - rate * (when - last)
            if drained <= noise and level > 0 and when > last + level / rate:
                xs.append(last + level / rate)
                ys.append(0.0)
            level = max(0.0, drained)
        xs.append(when)
        ys.append(level)
        level += amount
        xs.append(when)
        ys.append(level)
        last = when
    if last is not None and level > 0:
        xs.append(last + level / rate)
        ys.append(0.0)
    return xs, ys


# -- the figure --------------------------------------------------------------------------------
def plot_run(
    result: RunResult,
    ax: Any = None,
    *,
    resources: Sequence[Resource] | None = None,
    start: float | None = None,
    history: UsageHistory | None = None,
    panels: Sequence[str] = PANELS,
    title: str | None = None,
) -> Any:
    """Draw a run's usage per resource and its calls' timeline; returns the Figure.

    Args:
        result: what ``run()`` returned.
        ax: None for a new figure, or one matplotlib Axes per panel (a list or an array;
            a single Axes for a single panel).
        resources: the runner's resources (``runner.resources``), needed for the usage
            panel; default: ``result.resources`` when the result carries them.
        start: loop time the run started (default: ``result.started_at``, or estimated).
        history: samples of the ledger taken during the run (``dashboard.history``);
            default: ``result.usage_history`` if present, else usage is rebuilt.
        panels: which panels, in order: ``"usage"``, ``"timeline"``.
        title: the figure's title.
    """
    panels = tuple(panels)
    unknown = [p for p in panels if p not in PANELS]
    if not panels or unknown:
        raise ValueError(f"panels must be a non-empty selection of {PANELS}, got {panels!r}.")
    if resources is None:
        resources = getattr(result, "resources", None)
    if history is None:
        history = getattr(result, "usage_history", None) or None
    if "usage" in panels and not resources:
        raise ValueError(
            "The usage panel needs the resources: result.plot(resources=runner.resources), "
            "or panels=('timeline',)."
        )
    if ax is None:
        plt = _pyplot()
        height = {"usage": 3.0, "timeline": 3.5}
        _, grid = plt.subplots(
            len(panels),
            1,
            sharex=True,
            squeeze=False,
            figsize=(10, sum(height[p] for p in panels)),
            layout="constrained",
        )
        axes = [row[0] for row in grid]
    else:
        axes = [ax] if hasattr(ax, "plot") else list(ax)  # one Axes, or a list / array
        if len(axes) != len(panels):
            raise ValueError(f"ax: give one Axes per panel ({len(panels)}), got {len(axes)}.")
    t0 = run_start(result, start)
    span = run_end(result, t0) - t0
    ran = sum(1 for o in result.outcomes if o.started_at is not None and not o.from_store)
    empty = _nothing_ran(result) if ran == 0 and not history else None
    for panel, axis in zip(panels, axes, strict=True):
        if empty is not None:
            axis.text(
                0.5, 0.5, empty, transform=axis.transAxes, ha="center", va="center", gid="empty"
            )
            axis.set_yticks([])
        elif panel == "usage":
            assert resources is not None
            if history:
                _draw_history(axis, history, resources, t0)
            else:
                _draw_usage(axis, result, resources, t0)
        else:
            _draw_timeline(axis, result, t0)
        # The run, not the time its buckets take to drain afterwards.
        margin = X_MARGIN * span if span > 0 else 0.5
        axis.set_xlim(-margin, span + margin)
    axes[-1].set_xlabel("seconds since the run started")
    figure = axes[0].figure
    if title is not None:
        figure.suptitle(title)
    return figure


def _nothing_ran(result: RunResult) -> str:
    """What to write in the axes of a run in which no call ran."""
    total = len(result.outcomes)
    if total == 0:
        return "No calls in this run: nothing to draw."
    stored = sum(1 for o in result.outcomes if o.from_store)
    if stored == total:
        return f"No call ran: all {total:,} came from the store."
    return f"No call ran in this run ({total:,} calls, {stored:,} from the store)."


def _label(resource: Resource, quota: float | None = None) -> str:
    quota = float(resource.quota) if quota is None else quota
    if quota >= UNKNOWN_QUOTA:
        return f"{resource.name}: no limit"
    window = f"{resource.time_window_seconds:g} s"
    return f"{resource.name}: {quota:,.10g} per {window} ({resource.refill})"


def _no_limit_entry(ax: Any, resource: Resource) -> None:
    """A legend entry (and nothing drawn) for a resource without a limit."""
    (line,) = ax.plot([], [], linestyle="none", label=_label(resource, UNKNOWN_QUOTA))
    line.set_gid(f"no-limit:{resource.name}")


def _finish_usage_axes(ax: Any, title: str) -> None:
    ax.axhline(100, color="black", linestyle="--", linewidth=0.8, gid="quota")
    ax.set_ylabel("% of quota")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title(title, fontsize="medium")


def _draw_history(ax: Any, history: UsageHistory, resources: Sequence[Resource], t0: float) -> None:
    xs = [when - t0 for when, _ in history]
    for resource in resources:
        name = resource.name
        # Each sample against the quota the ledger enforced then (a discovered limit).
        declared = float(resource.quota)
        quotas = [usage[name][2] if name in usage else declared for _, usage in history]
        if quotas[-1] >= UNKNOWN_QUOTA:
            _no_limit_entry(ax, resource)
            continue
        used = [
            100 * usage[name][0] / quota if name in usage else 0.0
            for (_, usage), quota in zip(history, quotas, strict=True)
        ]
        held = [
            100 * (usage[name][0] + usage[name][1]) / quota if name in usage else 0.0
            for (_, usage), quota in zip(history, quotas, strict=True)
        ]
        style = "steps-post" if resource.refill == "window" else "default"
        (line,) = ax.plot(xs, used, drawstyle=style, label=_label(resource, quotas[-1]))
        line.set_gid(f"usage:{name}")
        (dotted,) = ax.plot(
            xs, held, drawstyle=style, linestyle=":", color=line.get_color(), linewidth=1
        )
        dotted.set_gid(f"held:{name}")
    _finish_usage_axes(ax, "usage per resource (ledger; dotted: with reservations)")


def _draw_usage(ax: Any, result: RunResult, resources: Sequence[Resource], t0: float) -> None:
    events = usage_events(result.outcomes, resources)
    for resource in resources:
        quota = float(resource.quota)
        if quota >= UNKNOWN_QUOTA:
            _no_limit_entry(ax, resource)
            continue
        xs, ys = usage_curve(
            events[resource.name], quota, resource.time_window_seconds, resource.refill, t0
        )
        label = _label(resource)
        (line,) = ax.plot(
            [x - t0 for x in xs],
            [100 * y / quota for y in ys],
            drawstyle="steps-post" if resource.refill == "window" else "default",
            label=label,
        )
        line.set_gid(f"usage:{resource.name}")
    _finish_usage_axes(ax, "usage per resource (rebuilt from the outcomes)")


def _draw_timeline(ax: Any, result: RunResult, t0: float) -> None:
    from matplotlib.lines import Line2D

    outcomes = [o for o in result.outcomes if o.started_at is not None]
    end = max(
        [o.finished_at for o in outcomes if o.finished_at is not None]
        + [t0 + result.elapsed]
        + [o.started_at for o in outcomes if o.started_at is not None]
    )
    rows = max(1, len(result.outcomes))
    width = max(0.5, min(6.0, 250.0 / rows))
    waiting_y, waiting_from, waiting_to = [], [], []
    by_status: dict[str, tuple[list[int], list[float], list[float]]] = {}
    retried_x, retried_y = [], []
    for outcome in outcomes:
        assert outcome.started_at is not None
        started = outcome.started_at - t0
        if started > 0:
            waiting_y.append(outcome.index)
            waiting_from.append(0.0)
            waiting_to.append(started)
        finished = (outcome.finished_at if outcome.finished_at is not None else end) - t0
        ys, x0s, x1s = by_status.setdefault(outcome.status.value, ([], [], []))
        ys.append(outcome.index)
        x0s.append(started)
        x1s.append(finished)
        if outcome.attempts > 1 and outcome.exceptions:
            retried_x.append(started)
            retried_y.append(outcome.index)
    handles = []
    if waiting_y:
        ax.hlines(
            waiting_y, waiting_from, waiting_to, colors="lightgray", linewidth=0.6, gid="waiting"
        )
        handles.append(Line2D([], [], color="lightgray", label="waiting"))
    for status, (ys, x0s, x1s) in by_status.items():
        color = STATUS_COLORS.get(status, "tab:gray")
        ax.hlines(ys, x0s, x1s, colors=color, linewidth=width, gid=f"calls:{status}")
        handles.append(Line2D([], [], color=color, linewidth=4, label=status))
    if retried_x:
        ax.scatter(retried_x, retried_y, marker="x", color="black", s=12, gid="retried")
        handles.append(Line2D([], [], marker="x", color="black", linestyle="", label="retried"))
    ax.set_ylim(rows - 0.5, -0.5)  # call 0 on top
    ax.set_ylabel("call")
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title("calls: waiting, running (last attempt), status", fontsize="medium")
