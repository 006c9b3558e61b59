"""``DashboardProgress``: a live ipywidgets dashboard of a run, for Jupyter notebooks.

A bare counter does not tell a notebook user what they want to know while thousands of
calls go by: whether requests or tokens are the limit, how close to each quota the run
is, what fails, whether the provider answers 429, and when it will be done. This panel
shows all of it and updates while the cell blocks (or while other cells run, after
``runner.start()``):

* calls finished / total as a bar; succeeded, failed, in flight, backing off, retries,
  and the calls the semantic cache answered with the usage they saved;
* one bar per resource: used + reserved against its quota, the one admission waits for
  highlighted, and how long the run has waited for each;
* HTTP 429s, cool-downs ("cooling down for N s"), what admission waits for and how long;
* elapsed time, and an ETA from the completion rate of the last half minute;
* the final state: done or interrupted.

A batch run (``BatchRunner``) has no quotas to show: ``show_batches`` draws the calls
answered, each open batch's status (validating, in_progress n/m, finalizing) and an ETA
from the provider's own counts, in the same panel.

It is created (and displayed) in ``__init__``, in the thread that starts the run, so it
appears in that cell; the engine then calls ``start``/``update``/``waiting``/``finish``
on its loop thread, at most every ``progress_interval`` plus a ticker. A widget value is
set only when it changed. ``state()`` returns what the widgets show as a plain dict, so
tests (and users) can read it without a screenshot.

Amounts are shown in whole units against a quota of 100 or more (a bucket refilling
continuously holds fractions of a request, which tell nobody anything), with cents
below that; a limit the provider does not have (a preset's placeholder quota) reads
"no limit". The quota shown is the one the ledger enforces, so a limit discovered from
the provider's headers appears as soon as it is known.

Static renders: a saved notebook, nbconvert's HTML or GitHub have no live widgets (no
kernel, often no widget manager). The dashboard is displayed as a bundle with a
``display_id``: the widget, plus an HTML and a plain-text copy of what it shows. When
the run ends, that output is replaced by the HTML and text of the final state alone,
so the notebook keeps a readable record of the run; a new run brings the widget back.

What it works out from the stats over time (rate, ETA, waits, history) is
``rate_limited._dashboard_model.RunTracker``; this module draws.

ipywidgets is optional (``pip install 'rate_limited[notebook]'``) and imported only here.
"""

from __future__ import annotations

import html
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._dashboard_model import RunTracker, Usage
from rate_limited._dashboard_widgets import (
    GREY,
    ResourceRow,
    load_widgets,
    publish,
    set_line,
    set_value,
)
from rate_limited._format import format_amount, format_seconds, format_usd, plain_text
from rate_limited.apis._limits import UNKNOWN_QUOTA

if TYPE_CHECKING:
    from rate_limited._stats import RunStats

__all__ = ["DashboardProgress"]


class DashboardProgress:
    """A live ipywidgets panel of a run (a ``Progress``), displayed where it is created.

    ``Runner(..., progress=DashboardProgress())`` shows it in the cell that creates it;
    ``state()`` returns what it shows as a dict. ``display=False`` builds it without
    showing it (show it yourself with ``IPython.display.display(dashboard.widget)``).
    """

    def __init__(self, title: str | None = None, *, display: bool = True) -> None:
        widgets = load_widgets()
        self._widgets = widgets
        self._lock = threading.Lock()
        self._title = title
        self.title = widgets.HTML(value="")
        self.bar = widgets.IntProgress(
            value=0, min=0, max=1, bar_style="info", layout=widgets.Layout(width="450px")
        )
        self.calls = widgets.HTML(value="")
        self.counts = widgets.HTML(value="")
        self.resources = widgets.VBox([])
        hidden = {"display": "none"}
        self.limits = widgets.HTML(value="", layout=widgets.Layout(**hidden))
        self.wait = widgets.HTML(value="", layout=widgets.Layout(**hidden))
        self.time = widgets.HTML(value="")
        #: A batch run's batches, one line each (hidden for an online run).
        self.batches = widgets.HTML(value="", layout=widgets.Layout(**hidden))
        #: The whole panel (an ipywidgets VBox).
        self.widget = widgets.VBox(
            [
                self.title,
                widgets.HBox([self.bar, self.calls]),
                self.counts,
                self.resources,
                self.batches,
                self.limits,
                self.wait,
                self.time,
            ]
        )
        self._rows: dict[str, ResourceRow] = {}
        self._values: dict[str, Any] = {}
        self._tracker = RunTracker()
        self._status = "not started"
        self._render_title()
        #: Outputs showing this dashboard share it (``IPython.display.update_display``).
        self.display_id = f"rate_limited-{uuid.uuid4().hex}"
        self._shown = False  # displayed at least once
        self._static = False  # the outputs show the final state, not the widget
        if display:
            self._ipython_display_()

    def _ipython_display_(self) -> None:
        with self._lock:
            self._shown = True
            publish(self._bundle(live=not self._static), self.display_id)

    def _bundle(self, live: bool) -> dict[str, Any]:
        """What the outputs show: the widget (``live``) with HTML and text copies of it
        for renderers without widgets, or only those copies (the final state)."""
        data: dict[str, Any] = {"text/plain": self.text(), "text/html": self.html()}
        if live:
            bundle = self.widget._repr_mimebundle_()
            data.update((k, v) for k, v in bundle.items() if k != "text/plain")
        return data

    def _republish(self, live: bool) -> None:
        if self._shown:
            self._static = not live
            publish(self._bundle(live), self.display_id, update=True)

    # -- Progress --------------------------------------------------------------------------
    def start(self, stats: RunStats) -> None:
        with self._lock:
            self._status = "running"
            self._tracker.start(stats.now, stats.finished)
            self._values = {}
            self._render_title()
            set_value(self.bar, "bar_style", "info")
            self._refresh(stats)
            if self._static:  # the dashboard shown again for a new run: live again
                self._republish(live=True)

    def update(self, stats: RunStats) -> None:
        with self._lock:
            self._refresh(stats)

    def waiting(self, stats: RunStats, seconds: float, resource: str | None) -> None:
        with self._lock:
            self._refresh(stats)

    def finish(self, stats: RunStats, interrupted: bool) -> None:
        with self._lock:
            self._refresh(stats, final=True)
            self._status = "interrupted" if interrupted else "done"
            if interrupted:
                style = "warning"
            elif stats.failed:
                style = "danger"
            else:
                style = "success"
            set_value(self.bar, "bar_style", style)
            self._render_title()
            self._republish(live=False)  # the record a saved notebook keeps

    # -- a batch run -------------------------------------------------------------------------
    def show_batches(
        self,
        *,
        answered: int,
        total: int,
        batches: Sequence[tuple[str, str, int, int]],
        waiting: int,
        eta: float | None,
        elapsed: float,
        end: str | None = None,
    ) -> None:
        """A batch run's progress: ``answered`` of ``total`` calls, each open batch as
        ``(batch id, status, requests processed, requests)``, batches ``waiting`` for
        the provider's queue, the ``eta`` (seconds, None: not known yet) from the
        provider's counts; ``end``: "done" or "interrupted" when the run has ended.

        ``state()`` then has ``total``, ``finished``, ``batches`` (a dict per batch:
        ``id``, ``status``, ``done``, ``total``), ``waiting_batches``, ``eta`` and
        ``elapsed``."""
        with self._lock:
            if self._status != "running" and end is None:
                self._status = "running"
                self._render_title()
                set_value(self.bar, "bar_style", "info")
                if self._static:
                    self._republish(live=True)
            set_value(self.bar, "max", max(total, 1))
            set_value(self.bar, "value", min(answered, max(total, 1)))
            percent = f" · {100 * answered / total:.0f}%" if total else ""
            set_value(
                self.calls, "value", f"<b>{answered:,}</b> / {total:,} calls answered{percent}"
            )
            by_status: dict[str, list[tuple[str, str, int, int]]] = {}
            for row in batches:
                by_status.setdefault(row[1], []).append(row)
            parts = []
            for status, group in by_status.items():
                counts = ""
                if status == "in_progress":
                    counts = f" {sum(r[2] for r in group):,}/{sum(r[3] for r in group):,}"
                parts.append(f"{len(group)} {html.escape(status)}{counts}")
            if waiting:
                parts.append(f"{waiting} waiting for the provider's queue")
            summary = " · ".join(parts) if parts else "no batch open"
            set_value(self.counts, "value", f"batches: {summary}")
            lines = []
            for batch_id, status, done, size in batches:
                counts = f" {done:,}/{size:,}" if status == "in_progress" else ""
                lines.append(
                    f"<span style='{GREY}'>{html.escape(batch_id)}</span> "
                    f"{html.escape(status)}{counts}"
                )
            set_line(self.batches, "<br>".join(lines))
            time_text = f"elapsed {format_seconds(elapsed, tenths=end is not None)}"
            if end is None and answered < total:
                time_text += " · ETA " + ("?" if eta is None else format_seconds(eta, tenths=False))
            set_value(self.time, "value", f"<span style='{GREY}'>{time_text}</span>")
            self._values = {
                "total": total,
                "finished": answered,
                "batches": [
                    {"id": b, "status": s, "done": d, "total": n} for b, s, d, n in batches
                ],
                "waiting_batches": waiting,
                "eta": None if end is not None else eta,
                "elapsed": elapsed,
                "failed": 0,
            }
            if end is not None:
                self._status = end
                set_value(self.bar, "bar_style", "warning" if end == "interrupted" else "success")
                self._render_title()
                self._republish(live=False)

    # -- reading it --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What the dashboard shows now, as plain (JSON-able) values.

        Keys: ``status`` (not started / running / done / interrupted), the counters
        (``total``, ``finished``, ``succeeded``, ``failed``, ``in_flight``, ``backing_off``,
        ``retries``, ``rate_limited``, ``cooldowns``, ``store_failures``), ``semantic_hits``
        and ``semantic_saved`` (calls the semantic cache answered, and the usage per resource
        they did not spend), ``cost`` (USD the run's responses cost so far, None if the
        calls are not priced), ``cooling_down`` and
        ``waiting_seconds`` (seconds left, or None), ``waiting_for``, ``waited``
        (seconds per resource), ``elapsed``, ``rate`` (calls/s) and ``eta`` (seconds or
        None), ``usage`` (per resource: used, reserved, quota, and the bar's value and
        max), ``bar`` (the calls bar's value, max and style) and ``text`` (each line).
        """
        with self._lock:
            state = dict(self._values)
            state["status"] = self._status
            state["waited"] = dict(self._tracker.waited)
            usage = {}
            for name, row in self._rows.items():
                entry = dict(state.get("usage", {}).get(name, {}))
                entry.update(bar_value=row.bar.value, bar_max=row.bar.max, text=row.text.value)
                entry["bar_style"] = row.bar.bar_style
                usage[name] = entry
            state["usage"] = usage
            state["bar"] = {
                "value": self.bar.value,
                "max": self.bar.max,
                "style": self.bar.bar_style,
            }
            state["text"] = {
                "title": self.title.value,
                "calls": self.calls.value,
                "counts": self.counts.value,
                "limits": self.limits.value,
                "waiting": self.wait.value,
                "time": self.time.value,
                "batches": self.batches.value,
            }
        return state

    def _lines(self) -> list[tuple[str, str]]:
        """``(kind, HTML)`` of each line shown, top to bottom (empty lines left out)."""
        lines = [("title", self.title.value), ("calls", self.calls.value)]
        lines.append(("counts", self.counts.value))
        for row in self._rows.values():
            lines.append((f"resource:{row.name}", f"{row.label.value}: {row.text.value}"))
        lines.append(("batches", self.batches.value))
        lines += [("limits", self.limits.value), ("waiting", self.wait.value)]
        lines.append(("time", self.time.value))
        return [(kind, markup) for kind, markup in lines if markup]

    def text(self) -> str:
        """What the dashboard shows, as plain text (one line each)."""
        return "\n".join(plain_text(markup) for _, markup in self._lines())

    def html(self) -> str:
        """What the dashboard shows, as static HTML (bars as ``<progress>`` elements)."""
        parts = []
        bars = {f"resource:{name}": row.bar for name, row in self._rows.items()}
        bars["calls"] = self.bar
        for kind, markup in self._lines():
            bar = bars.get(kind)
            if bar is not None and bar.layout.visibility != "hidden":
                width = "450px" if kind == "calls" else "260px"
                markup = (
                    f"<progress value='{bar.value:g}' max='{bar.max:g}' "
                    f"style='width: {width}; vertical-align: middle'></progress> {markup}"
                )
            parts.append(f"<div>{markup}</div>")
        return f"<div class='rate-limited-dashboard'>{''.join(parts)}</div>"

    def __repr__(self) -> str:
        values = self._values
        if not values:
            return f"<DashboardProgress ({self._status})>"
        return (
            f"<DashboardProgress ({self._status}): {values['finished']}/{values['total']} "
            f"calls, {values['failed']} failed>"
        )

    @property
    def history(self) -> list[tuple[float, Usage]]:
        """``(loop time, {resource: (used, reserved, quota)})`` at each update of the
        current run: the ledger's own numbers, for ``plot_run(..., history=...)``."""
        return self._tracker.history

    # -- drawing -----------------------------------------------------------------------------
    def _render_title(self) -> None:
        name = f" · {html.escape(self._title)}" if self._title else ""
        colors = {"done": "#2e7d32", "interrupted": "#ef6c00", "running": "#1565c0"}
        color = colors.get(self._status, "#666")
        set_value(
            self.title,
            "value",
            f"<b>rate_limited</b>{name} · <b style='color: {color}'>{self._status}</b>",
        )

    def _refresh(self, stats: RunStats, final: bool = False) -> None:
        now = stats.now
        total, finished = stats.total, stats.finished
        values: dict[str, Any] = {
            "total": total,
            "finished": finished,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "in_flight": stats.in_flight,
            "backing_off": 0 if final else stats.backing_off,
            "retries": stats.retries,
            "rate_limited": stats.rate_limited,
            "cooldowns": stats.cooldowns,
            "elapsed": stats.elapsed,
            "store_failures": stats.store_failures,
        }

        # Calls: the bar and its numbers.
        set_value(self.bar, "max", max(total, 1))
        set_value(self.bar, "value", min(finished, max(total, 1)))
        percent = f" · {100 * finished / total:.0f}%" if total else ""
        set_value(self.calls, "value", f"<b>{finished:,}</b> / {total:,} calls{percent}")
        parts = [f"✔ {stats.succeeded:,} succeeded"]
        parts.append(f"✖ {stats.failed:,} failed" if stats.failed else "0 failed")
        if not final:
            parts.append(f"{values['in_flight']:,} in flight")
        elif values["in_flight"]:  # sync calls in threads, after an interrupt
            parts.append(f"{values['in_flight']:,} still running (their results will be kept)")
        if values["backing_off"]:
            parts.append(f"{values['backing_off']:,} backing off before a retry")
        if stats.retries:
            parts.append(f"{stats.retries:,} retries")
        first_token = values["time_to_first_token"] = stats.time_to_first_token
        if first_token is not None:
            parts.append(f"first token after {format_seconds(first_token)} on average")
        semantic = stats.semantic
        values["semantic_hits"] = 0 if semantic is None else semantic.hits
        values["semantic_saved"] = {} if semantic is None else dict(semantic.saved)
        if semantic is not None and semantic.hits:
            # The usage not spent (in each resource's own unit).
            saved = ", ".join(
                f"{format_amount(v)} {html.escape(k)}" for k, v in semantic.saved.items()
            )
            parts.append(
                f"⤳ {semantic.hits:,} answered by the semantic cache"
                + (f" (saved {saved})" if saved else "")
            )
        cost = stats.cost
        values["cost"] = cost
        if cost is not None:
            parts.append(f"{format_usd(cost)} spent")
        if stats.store_failures:
            parts.append(f"⚠ {stats.store_failures:,} not stored (see the StoreWarning)")
        set_value(self.counts, "value", " · ".join(parts))

        # What admission waits for, and for how long in total per resource.
        tracker = self._tracker
        binding, seconds_left = tracker.wait(stats, final)
        values["waiting_for"] = binding
        values["waiting_seconds"] = seconds_left
        if binding is None:
            wait_text = ""
        else:
            how_long = (
                "until a running call settles"
                if seconds_left is None
                else f"{format_seconds(seconds_left)} left"
            )
            so_far = tracker.waited.get(binding, 0.0)
            so_far_text = f", {format_seconds(so_far)} waited for it so far" if so_far >= 1 else ""
            wait_text = f"⏳ waiting for <b>{html.escape(binding)}</b>: {how_long}{so_far_text}"
        set_line(self.wait, wait_text)

        # Resources: used + reserved against the quota.
        usage = stats.usage()
        tracker.record(now, usage, final)
        values["usage"] = {}
        for name, (used, reserved, quota) in usage.items():
            row = self._rows.get(name)
            if row is None:
                row = self._rows[name] = ResourceRow(self._widgets, name, quota)
                self.resources.children = tuple(r.box for r in self._rows.values())
            held = used + reserved
            unlimited = quota >= UNKNOWN_QUOTA
            fraction = held / quota if quota and not unlimited else 0.0
            values["usage"][name] = {
                "used": used,
                "reserved": reserved,
                "quota": None if unlimited else quota,
                "fraction": fraction,
            }
            set_value(row.bar, "max", 1.0 if unlimited else quota)
            set_value(row.bar, "value", 0.0 if unlimited else min(max(held, 0.0), quota))
            set_value(row.bar.layout, "visibility", "hidden" if unlimited else None)
            is_binding = binding == name
            style = "danger" if is_binding else "warning" if fraction >= 0.9 else "info"
            set_value(row.bar, "bar_style", style)
            scale = None if unlimited else quota
            text = f"{format_amount(used, scale)} used"
            if reserved:
                text += f" + {format_amount(reserved, scale)} reserved"
            if unlimited:
                text += " · no limit"
            else:
                text += f" / {format_amount(quota)} ({100 * fraction:.0f}%)"
            waited_here = tracker.waited.get(name, 0.0)
            if waited_here >= 1:
                text += f" · waited {format_seconds(waited_here)}"
            if is_binding:
                text += " · <b>the limit now</b>"
            set_value(row.text, "value", text)

        # HTTP 429s and cool-downs.
        paused = None if final else stats.paused_until
        cooling = None if paused is None else paused - now
        values["cooling_down"] = cooling
        limit_parts = []
        if stats.rate_limited:
            limit_parts.append(f"{stats.rate_limited:,} HTTP 429s")
        if stats.cooldowns:
            limit_parts.append(f"{stats.cooldowns:,} cool-downs")
        if cooling is not None:
            limit_parts.append(f"<b>cooling down for {format_seconds(cooling)}</b>")
        set_line(self.limits, " · ".join(limit_parts))

        # Elapsed and ETA from the recent completion rate.
        rate, eta = tracker.rate(now, finished, total, final)
        remaining = total - finished
        values["rate"] = rate if rate > 0 else None
        values["eta"] = eta
        time_text = f"elapsed {format_seconds(values['elapsed'], tenths=final)}"
        if not final and remaining > 0:
            time_text += " · ETA " + ("?" if eta is None else format_seconds(eta, tenths=False))
        if rate > 0:
            time_text += f" · {rate:,.1f} calls/s"
        set_value(self.time, "value", f"<span style='{GREY}'>{time_text}</span>")
        self._values = values
