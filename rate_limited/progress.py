"""Showing a run's progress: a tqdm bar in a terminal, log lines elsewhere, or nothing.

The engine calls a ``Progress`` on its loop thread at most every ``progress_interval``
seconds, when calls finish, and when admission starts a long wait for quota. Progress
counts *calls*, not attempts: a retried call moves the bar once, when it ends.

``progress=`` of the Runner chooses:

* ``None`` (default): in a notebook, a live ipywidgets dashboard (calls, usage of each
  resource against its quota, 429s and cool-downs, ETA), falling back to the tqdm bar on
  any doubt (as ``tqdm.autonotebook`` does); a tqdm bar when stderr is a terminal;
  otherwise ``logging`` lines on the ``rate_limited`` logger at INFO (silent unless the
  application configures logging), so CI logs and cron jobs stay clean;
* ``"dashboard"``: the notebook dashboard (outside a notebook, where no widget can be
  shown, the tqdm bar, with a one-line ``UserWarning`` saying so); ``True`` /
  ``"tqdm"``: the tqdm bar (``tqdm.auto``); ``"log"``: log lines;
* ``False``: nothing at all; or any object implementing ``Progress``.

Plain scripts never import ipywidgets nor the dashboard module.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import warnings
from typing import Any

from rate_limited._format import format_usd
from rate_limited._redact import get_logger
from rate_limited._stats import Progress, RunStats

__all__ = ["LogProgress", "Progress", "TqdmProgress", "check_progress", "make_progress"]

logger = get_logger("rate_limited")


def _describe_wait(seconds: float, resource: str | None) -> str:
    what = resource or "capacity"
    if math.isinf(seconds):
        return f"waiting for {what} (until a running call settles)"
    return f"waiting {seconds:.1f} s for {what}"


class TqdmProgress:
    """A ``tqdm.auto`` bar of finished calls; its description says what it waits for."""

    def __init__(self, desc: str | None = None) -> None:
        self._desc = desc
        self._bar: Any = None

    def start(self, stats: RunStats) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=stats.total, initial=stats.finished, desc=self._desc, unit="call", leave=True
        )

    def update(self, stats: RunStats) -> None:
        bar = self._bar
        if bar is None:
            return
        if bar.total != stats.total:
            bar.total = stats.total
        bar.update(stats.finished - bar.n)
        postfix: dict[str, object] = {}
        if stats.failed:
            postfix["failed"] = stats.failed
        if stats.retries:
            postfix["retries"] = stats.retries
        if stats.rate_limited:
            postfix["429s"] = stats.rate_limited
        if stats.time_to_first_token is not None:
            postfix["first token"] = f"{stats.time_to_first_token:.2f}s"
        if stats.store_failures:
            postfix["not stored"] = stats.store_failures
        if stats.semantic is not None and stats.semantic.hits:
            postfix["semantic hits"] = stats.semantic.hits
        if stats.cost is not None:
            postfix["cost"] = format_usd(stats.cost)
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        if stats.waiting_until is None and bar.desc != (self._desc or ""):
            bar.set_description_str(self._desc or "", refresh=False)

    def waiting(self, stats: RunStats, seconds: float, resource: str | None) -> None:
        if self._bar is not None:
            self._bar.set_description_str(_describe_wait(seconds, resource))

    def finish(self, stats: RunStats, interrupted: bool) -> None:
        if self._bar is None:
            return
        self.update(stats)
        if interrupted:
            self._bar.set_description_str("interrupted")
        else:
            self._bar.set_description_str(self._desc or "", refresh=False)
        self._bar.close()
        self._bar = None


class LogProgress:
    """INFO lines on the ``rate_limited`` logger, at most one every ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = -math.inf
        self._t0 = 0.0

    def start(self, stats: RunStats) -> None:
        self._t0 = time.monotonic()
        logger.info("Running %d calls (%d already finished)", stats.total, stats.finished)

    def _line(self, stats: RunStats) -> str:
        parts = [f"{stats.finished}/{stats.total} calls finished"]
        if stats.failed:
            parts.append(f"{stats.failed} failed")
        if stats.retries:
            parts.append(f"{stats.retries} retries")
        if stats.rate_limited:
            parts.append(f"{stats.rate_limited} HTTP 429")
        if stats.time_to_first_token is not None:
            parts.append(f"first token after {stats.time_to_first_token:.2f} s on average")
        if stats.store_failures:
            parts.append(f"{stats.store_failures} not stored")
        if stats.semantic is not None and stats.semantic.hits:
            parts.append(f"{stats.semantic.hits} answered by the semantic cache")
        if stats.cost is not None:
            parts.append(f"{format_usd(stats.cost)} spent")
        parts.append(f"{stats.elapsed:.1f} s")
        return ", ".join(parts)

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            logger.info(self._line(stats))

    def waiting(self, stats: RunStats, seconds: float, resource: str | None) -> None:
        logger.info("%s (%s)", _describe_wait(seconds, resource).capitalize(), self._line(stats))

    def finish(self, stats: RunStats, interrupted: bool) -> None:
        logger.info("%s: %s", "Interrupted" if interrupted else "Done", self._line(stats))


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ipython = shell.get_ipython()
    except Exception:
        return False
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def check_progress(progress: object) -> None:
    """Raise ConfigurationError now if ``progress=`` is not something make_progress takes."""
    if progress is None or progress is True or progress is False:
        return
    if progress in ("tqdm", "log", "dashboard") or isinstance(progress, Progress):
        return
    from rate_limited.exceptions import ConfigurationError

    raise ConfigurationError(
        f"progress must be None (automatic), True, False, 'dashboard', 'tqdm', 'log' or a "
        f"Progress object; got {progress!r}."
    )


def _dashboard() -> Progress | None:
    """The notebook dashboard, or None on any doubt (the caller falls back to tqdm)."""
    if importlib.util.find_spec("ipywidgets") is None:
        return None
    try:
        from rate_limited._dashboard import DashboardProgress

        return DashboardProgress()
    except Exception:
        logger.debug("No notebook dashboard; using the tqdm bar", exc_info=True)
        return None


def __getattr__(name: str) -> Any:
    """``DashboardProgress`` on demand: plain scripts never import the dashboard."""
    if name == "DashboardProgress":
        from rate_limited._dashboard import DashboardProgress

        return DashboardProgress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_progress(progress: object) -> Progress | None:
    """The Progress a Runner's ``progress=`` argument asks for (None: nothing).

    Called in the thread that starts the run, so that a notebook display appears in the
    cell that started it.
    """
    check_progress(progress)
    if progress is False:
        return None
    if progress is None:
        if _in_notebook():
            return _dashboard() or TqdmProgress()
        stream = sys.stderr
        is_tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        return TqdmProgress() if is_tty else LogProgress()
    if progress == "dashboard":
        if not _in_notebook():
            _warn_at_caller(
                "progress='dashboard' needs a Jupyter notebook to show its widgets; "
                "showing the tqdm bar instead."
            )
            return TqdmProgress()
        from rate_limited._dashboard import DashboardProgress  # ImportError names the extra

        return DashboardProgress()
    if progress is True or progress == "tqdm":
        return TqdmProgress()
    if progress == "log":
        return LogProgress()
    assert isinstance(progress, Progress)
    return progress


def _warn_at_caller(message: str) -> None:
    """A UserWarning attributed to the first frame outside this package (the user's
    ``run()`` or ``apply()`` line), so Python shows it once per line that asks."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(0)
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package + os.sep
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)
