"""The batch run's progress: a tqdm bar of calls answered, each batch's status beside it.

The bar counts calls (from the store, from batches collected); its postfix says where the
open batches are (``2 in_progress 340/1000, 1 validating``) and an ETA from the
provider's own counts: the requests each batch has processed since it was first seen in
progress, over the time that took, for the requests it still has.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rate_limited._format import format_seconds
from rate_limited.batch._providers import BatchState

__all__ = ["BatchDisplay"]


class BatchDisplay:
    """Progress of one ``BatchRunner.run()``; ``enabled=None`` shows it on a terminal or
    in a notebook (tqdm.auto), as tqdm's ``disable=None`` does."""

    def __init__(self, total: int, done: int, enabled: bool | None) -> None:
        self._bar: Any = None
        self._seen: dict[str, tuple[float, int]] = {}
        if enabled is False:
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
        now = time.monotonic() if now is None else now
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
        if self._bar is None:
            return
        text = self.describe(states, waiting)
        eta = self.eta(states)
        if eta is not None:
            text += f" · eta {format_seconds(eta, tenths=False)}"
        self._bar.n = answered
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
