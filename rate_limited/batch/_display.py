"""The batch run's progress: calls answered, each batch's status beside them, an ETA.

Two views of the same numbers: a tqdm bar (a terminal, a script) whose postfix says where
the open batches are (``2 in_progress 340/1000, 1 validating``), or, in a notebook, the
package's dashboard (``DashboardProgress.show_batches``): the calls bar, one line per
batch, and the ETA. ``progress=None`` picks the dashboard in a Jupyter kernel (tqdm on
any doubt, as an online run does), ``"dashboard"`` asks for it (outside a notebook: one
warning, and the tqdm bar), ``True``/``"tqdm"`` the bar, ``False`` nothing; a
``DashboardProgress`` of your own is used as it is.

The ETA comes from the provider's own counts: the requests each batch has processed since
it was first seen in progress, over the time that took, for the requests it still has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rate_limited._format import format_seconds
from rate_limited.batch._providers import BatchState

__all__ = ["BatchDisplay"]


class BatchDisplay:
    """Progress of one ``BatchRunner.run()`` (see the module docstring)."""

    def __init__(
        self,
        total: int,
        done: int,
        enabled: object,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bar: Any = None
        self._dashboard: Any = None
        self._seen: dict[str, tuple[float, int]] = {}
        self._clock = clock
        self._started = clock()
        self._total = total
        self._last: tuple[int, Mapping[str, BatchState], int] = (done, {}, 0)
        if enabled is False:
            return
        self._dashboard = _dashboard(enabled)
        if self._dashboard is not None:
            self._dashboard_update(done, {}, 0, None)
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=done,
            unit="call",
            desc="batch",
            disable=None if enabled is None else False,
        )

    def eta(self, states: Mapping[str, BatchState], now: float | None = None) -> float | None:
        """Seconds until the slowest open batch has processed every request (None: not
        known yet: no batch has shown progress)."""
        now = self._clock() if now is None else now
        longest: float | None = None
        for batch_id, state in states.items():
            if state.phase != "in_progress":
                continue
            first = self._seen.setdefault(batch_id, (now, state.done))
            elapsed, processed = now - first[0], state.done - first[1]
            if elapsed <= 0 or processed <= 0:
                continue
            left = (state.total - state.done) * elapsed / processed
            longest = left if longest is None else max(longest, left)
        return longest

    @staticmethod
    def describe(states: Mapping[str, BatchState], waiting: int) -> str:
        by_status: dict[str, list[BatchState]] = {}
        for state in states.values():
            by_status.setdefault(state.status, []).append(state)
        parts = []
        for status, group in by_status.items():
            done = sum(s.done for s in group)
            total = sum(s.total for s in group)
            counts = f" {done}/{total}" if status == "in_progress" else ""
            parts.append(f"{len(group)} {status}{counts}")
        if waiting:
            parts.append(f"{waiting} waiting for the queue")
        return ", ".join(parts)

    def update(self, answered: int, states: Mapping[str, BatchState], waiting: int) -> None:
        self._last = (answered, dict(states), waiting)
        if self._dashboard is not None:
            self._dashboard_update(answered, states, waiting, self.eta(states))
            return
        if self._bar is None:
            return
        text = self.describe(states, waiting)
        eta = self.eta(states)
        if eta is not None:
            text += f" · eta {format_seconds(eta, tenths=False)}"
        self._bar.n = answered
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()

    def close(self, interrupted: bool = False) -> None:
        if self._dashboard is not None:
            answered, states, waiting = self._last
            end = "interrupted" if interrupted else "done"
            self._dashboard_update(answered, states, waiting, None, end)
        if self._bar is not None:
            self._bar.close()

    def _dashboard_update(
        self,
        answered: int,
        states: Mapping[str, BatchState],
        waiting: int,
        eta: float | None,
        end: str | None = None,
    ) -> None:
        rows = [(i, s.status, s.done, s.total) for i, s in states.items()]
        self._dashboard.show_batches(
            answered=answered,
            total=self._total,
            batches=rows,
            waiting=waiting,
            eta=eta,
            elapsed=self._clock() - self._started,
            end=end,
        )


def _dashboard(progress: object) -> Any:
    """The notebook dashboard ``progress`` asks for, or None (then: tqdm)."""
    if hasattr(progress, "show_batches"):
        return progress  # a DashboardProgress of the caller's
    from rate_limited import progress as progress_module

    if progress is None:
        if not progress_module._in_notebook():
            return None
        dashboard = progress_module._dashboard()
        return dashboard if hasattr(dashboard, "show_batches") else None
    if progress == "dashboard":
        if not progress_module._in_notebook():
            progress_module._warn_at_caller(
                "progress='dashboard' needs a Jupyter notebook to show its widgets; "
                "showing the tqdm bar instead."
            )
            return None
        from rate_limited._dashboard import DashboardProgress  # ImportError names the extra

        return DashboardProgress()
    return None
