"""A ``Budget`` over batch runs: each batch reserves its most at the batch price first.

An online call reserves its maximum cost when the engine admits it; a batch is paid for as
a whole once it is created, so here the unit is the batch. Before a batch is created, the
sum of its requests' maximum costs at the Batch API's rates
(``preset.call_max_cost(call, batch=True)``: the prompt estimate at the highest rate a
prompt token can be billed at, ``max_tokens * n`` at the output rate) is reserved on the
budget's spend book, the same book an online Runner of the same budget name and store
uses, so batch and online runs count against each other. A batch that does not fit is cut
to the requests that do (the driver plans the two parts as new chunks); when not even
one fits, the run stops with the rest pending, as an online run does at its budget.

The reservation is tied to the durable chunk record: its token is written with the chunk
(in the same flush as the ``creating`` step, before the create request), so a run resumed
after a restart finds it there and never reserves the same batch twice. When the batch's
answers are collected, the reservation is settled at what they cost (the rest of it is
freed); a batch refused as a whole (validation) releases it. The book's lease is at least
two completion windows (``MIN_LEASE``): a batch may take 24 hours, and a lease that runs
out counts as spent at its reserved amount (the book's rule for a process that died).
A process killed between the reservation and the flush that records it leaves a lease no
chunk knows of: it expires as spent, so the budget errs on the side of spending less.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from rate_limited._spend import book_for
from rate_limited.budget import Budget, BudgetStop

if TYPE_CHECKING:
    from rate_limited._spend_books import SpendBook
    from rate_limited.calls import Call
    from rate_limited.stores.base import Store

__all__ = ["MIN_LEASE", "BatchBudget"]

#: Least lease of a batch's reservation: two 24-hour completion windows.
MIN_LEASE = 2 * 24 * 3600.0


class BatchBudget:
    """One BatchRunner's budget: batch-price maxima, reservations, settlements."""

    def __init__(self, budget: Budget, preset: Any, store: Store) -> None:
        self.budget = budget
        self.preset = preset
        self.book: SpendBook = book_for(
            store,
            budget.name,
            budget.time_window_seconds,
            max(budget.lease_seconds, MIN_LEASE),
        )
        #: The most each request can cost at the batch price, by ``custom_id``.
        self._max: dict[str, float] = {}

    def max_cost(self, custom_id: str, call: Call) -> float:
        """The most ``call``'s request can cost in a batch (a ``ConfigurationError`` if
        its model has no batch price: the budget must bound every batch it admits)."""
        known = self._max.get(custom_id)
        if known is None:
            value = self.preset.call_max_cost(call, required=True, batch=True)
            known = self._max[custom_id] = float(value)
        return known

    def reserve(self, amount: float) -> str | None:
        """Hold ``amount`` on the book; its token, or None if it does not fit."""
        budget = self.budget
        return self.book.reserve(amount, budget.usd, budget.time_window_seconds, time.time())

    def room(self) -> float:
        """What may still be reserved now (spent and held by every process counted)."""
        spent, held = self.state()
        return max(0.0, self.budget.usd - spent - held)

    def settle(self, token: str, cost: float) -> None:
        self.book.settle(token, cost, time.time())

    def release(self, token: str) -> None:
        self.book.release(token)

    def state(self) -> tuple[float, float]:
        """``(spent within the window, held)`` now."""
        return self.book.state(self.budget.time_window_seconds, time.time())

    def stop_report(self, needed: float, not_started: int) -> BudgetStop:
        """Why the run stopped: the smallest waiting request needed ``needed``."""
        budget = self.budget
        spent, held = self.state()
        frees_in: float | None = None
        if not math.isinf(budget.time_window_seconds):
            now = time.time()
            when = self.book.frees_at(needed, budget.usd, budget.time_window_seconds, now)
            frees_in = None if math.isinf(when) else max(0.0, when - now)
        return BudgetStop(
            spent=spent,
            reserved=held,
            limit=budget.usd,
            needed=needed,
            not_started=not_started,
            per=budget.window_label,
            frees_in=frees_in,
        )
