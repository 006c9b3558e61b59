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

ipywidgets is optional (``pip install 'rate_limited[notebook]'``) and imported only here.
"""

from __future__ import annotations

import html
import math
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._format import format_amount, format_seconds, format_usd, plain_text
from rate_limited.apis._limits import UNKNOWN_QUOTA

if TYPE_CHECKING:
    from rate_limited._stats import RunStats

__all__ = ["DashboardProgress"]

#: Seconds of completions the ETA's rate is measured over.
RATE_WINDOW = 30.0
#: Most samples kept in ``history`` (past it, every other one is dropped).
MAX_HISTORY = 4000

_GREY = "color: var(--jp-ui-font-color2, #666)"


def _widgets() -> Any:
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(
            "The notebook dashboard needs ipywidgets: pip install 'rate_limited[notebook]'"
        ) from exc
    return ipywidgets


def _publish(data: dict[str, Any], display_id: str, *, update: bool = False) -> None:
    """Display a mime bundle in the current cell's output, or replace the outputs shown
    under ``display_id`` (IPython comes with ipywidgets)."""
    from IPython import display

    publish: Callable[..., object] = display.update_display if update else display.display
    publish(data, raw=True, display_id=display_id)


def _set(widget: Any, name: str, value: Any) -> None:
    """Set a widget trait only if it changed: each change is a message to the browser."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)


def _set_line(widget: Any, text: str) -> None:
    """Set a line of text; an empty line is hidden rather than left as a blank gap."""
    _set(widget, "value", text)
    _set(widget.layout, "display", None if text else "none")


class _ResourceRow:
    """One resource: its name, a bar of used + reserved against the quota, the numbers."""

    def __init__(self, widgets: Any, name: str, quota: float) -> None:
        self.name = name
        self.label = widgets.HTML(
            value=f"<code>{html.escape(name)}</code>", layout=widgets.Layout(width="190px")
        )
        self.bar = widgets.FloatProgress(
            value=0.0, min=0.0, max=quota, layout=widgets.Layout(width="260px")
        )
        self.text = widgets.HTML(value="")
        self.box = widgets.HBox([self.label, self.bar, self.text])


class DashboardProgress:
    """A live ipywidgets panel of a run (a ``Progress``), displayed where it is created.

    ``Runner(..., progress=DashboardProgress())`` shows it in the cell that creates it;
    ``state()`` returns what it shows as a dict. ``display=False`` builds it without
    showing it (show it yourself with ``IPython.display.display(dashboard.widget)``).
    """

    def __init__(self, title: str | None = None, *, display: bool = True) -> None:
        widgets = _widgets()
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
        self._rows: dict[str, _ResourceRow] = {}
        self._values: dict[str, Any] = {}
        self._samples: deque[tuple[float, int]] = deque()
        self._waited: dict[str, float] = {}
        self._last_binding: str | None = None
        self._last_now = 0.0
        self._last_until = 0.0
        self._status = "not started"
        #: ``(loop time, {resource: (used, reserved, quota)})`` at each update of the
        #: current run: the ledger's own numbers, for ``plot_run(..., history=...)``.
        self.history: list[tuple[float, dict[str, tuple[float, float, float]]]] = []
        self._history_every = 0.0
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
            _publish(self._bundle(live=not self._static), self.display_id)

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
            _publish(self._bundle(live), self.display_id, update=True)

    # -- Progress --------------------------------------------------------------------------
    def start(self, stats: RunStats) -> None:
        with self._lock:
            now = stats.now
            self._status = "running"
            self._samples = deque([(now, stats.finished)])
            self._waited = {}
            self._last_binding = None
            self._last_now = now
            self._values = {}
            self.history = []
            self._history_every = 0.0
            self._render_title()
            _set(self.bar, "bar_style", "info")
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
            _set(self.bar, "bar_style", style)
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
                _set(self.bar, "bar_style", "info")
                if self._static:
                    self._republish(live=True)
            _set(self.bar, "max", max(total, 1))
            _set(self.bar, "value", min(answered, max(total, 1)))
            percent = f" · {100 * answered / total:.0f}%" if total else ""
            _set(self.calls, "value", f"<b>{answered:,}</b> / {total:,} calls answered{percent}")
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
            _set(self.counts, "value", f"batches: {summary}")
            lines = []
            for batch_id, status, done, size in batches:
                counts = f" {done:,}/{size:,}" if status == "in_progress" else ""
                lines.append(
                    f"<span style='{_GREY}'>{html.escape(batch_id)}</span> "
                    f"{html.escape(status)}{counts}"
                )
            _set_line(self.batches, "<br>".join(lines))
            time_text = f"elapsed {format_seconds(elapsed, tenths=end is not None)}"
            if end is None and answered < total:
                time_text += " · ETA " + ("?" if eta is None else format_seconds(eta, tenths=False))
            _set(self.time, "value", f"<span style='{_GREY}'>{time_text}</span>")
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
                _set(self.bar, "bar_style", "warning" if end == "interrupted" else "success")
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
            state["waited"] = dict(self._waited)
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

    def _record(
        self, now: float, usage: dict[str, tuple[float, float, float]], final: bool
    ) -> None:
        history = self.history
        if history and not final and now - history[-1][0] < self._history_every:
            return
        history.append((now, usage))
        if len(history) > MAX_HISTORY:
            del history[1::2]
            self._history_every = (now - history[0][0]) / len(history)

    # -- drawing -----------------------------------------------------------------------------
    def _render_title(self) -> None:
        name = f" · {html.escape(self._title)}" if self._title else ""
        colors = {"done": "#2e7d32", "interrupted": "#ef6c00", "running": "#1565c0"}
        color = colors.get(self._status, "#666")
        _set(
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
        _set(self.bar, "max", max(total, 1))
        _set(self.bar, "value", min(finished, max(total, 1)))
        percent = f" · {100 * finished / total:.0f}%" if total else ""
        _set(self.calls, "value", f"<b>{finished:,}</b> / {total:,} calls{percent}")
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
        _set(self.counts, "value", " · ".join(parts))

        # What admission waits for, and for how long in total per resource.
        # (The last wait seen lasted until now, or until its announced end if sooner.)
        last = self._last_binding
        if last is not None:
            waited = min(now, self._last_until) - self._last_now
            self._waited[last] = self._waited.get(last, 0.0) + max(0.0, waited)
        until = stats.waiting_until
        waiting = not final and until is not None and until > now
        binding = (stats.binding or "capacity") if waiting else None
        self._last_binding, self._last_now = binding, now
        self._last_until = until if until is not None else now
        seconds_left = None if not waiting or until is None or math.isinf(until) else until - now
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
            so_far = self._waited.get(binding, 0.0)
            so_far_text = f", {format_seconds(so_far)} waited for it so far" if so_far >= 1 else ""
            wait_text = f"⏳ waiting for <b>{html.escape(binding)}</b>: {how_long}{so_far_text}"
        _set_line(self.wait, wait_text)

        # Resources: used + reserved against the quota.
        usage = stats.usage()
        self._record(now, usage, final)
        values["usage"] = {}
        for name, (used, reserved, quota) in usage.items():
            row = self._rows.get(name)
            if row is None:
                row = self._rows[name] = _ResourceRow(self._widgets, name, quota)
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
            _set(row.bar, "max", 1.0 if unlimited else quota)
            _set(row.bar, "value", 0.0 if unlimited else min(max(held, 0.0), quota))
            _set(row.bar.layout, "visibility", "hidden" if unlimited else None)
            is_binding = binding == name
            style = "danger" if is_binding else "warning" if fraction >= 0.9 else "info"
            _set(row.bar, "bar_style", style)
            scale = None if unlimited else quota
            text = f"{format_amount(used, scale)} used"
            if reserved:
                text += f" + {format_amount(reserved, scale)} reserved"
            if unlimited:
                text += " · no limit"
            else:
                text += f" / {format_amount(quota)} ({100 * fraction:.0f}%)"
            waited_here = self._waited.get(name, 0.0)
            if waited_here >= 1:
                text += f" · waited {format_seconds(waited_here)}"
            if is_binding:
                text += " · <b>the limit now</b>"
            _set(row.text, "value", text)

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
        _set_line(self.limits, " · ".join(limit_parts))

        # Elapsed and ETA from the recent completion rate.
        samples = self._samples
        if not samples or finished != samples[-1][1]:
            samples.append((now, finished))
        while len(samples) > 2 and samples[1][0] < now - RATE_WINDOW:
            samples.popleft()
        first_time, first_done = samples[0]
        rate = (finished - first_done) / (now - first_time) if now > first_time else 0.0
        remaining = total - finished
        eta = None
        if not final and remaining > 0 and rate > 0:
            eta = remaining / rate
        values["rate"] = rate if rate > 0 else None
        values["eta"] = eta
        time_text = f"elapsed {format_seconds(values['elapsed'], tenths=final)}"
        if not final and remaining > 0:
            time_text += " · ETA " + ("?" if eta is None else format_seconds(eta, tenths=False))
        if rate > 0:
            time_text += f" · {rate:,.1f} calls/s"
        _set(self.time, "value", f"<span style='{_GREY}'>{time_text}</span>")
        self._values = values
