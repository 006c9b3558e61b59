"""What calls cost, and the budget they spend: the engine's hooks for money.

``SpendControl`` is one Runner's view of money: it prices each call when it is scheduled
(its maximum cost, from a ``CostSource``: a preset, or the ``cost``/``max_cost`` functions
of a ``Budget``), reserves that maximum on the budget's ``SpendBook`` when the engine
admits the call, and settles the actual cost (from the usage the response reports) when
the attempt ends, as the ledger does with quotas. The cost of each response adds to the
call's (``Outcome.cost``). An attempt that failed without a response, in a way the
provider may have billed (a timeout, a dropped connection), counts its maximum against
the budget (conservative, as the ledger keeps such a call's usage) but adds nothing to
the call's cost, which says what responses reported; an attempt that provably was not
billed (a 429, a refused connection) releases its reservation.

The budget is kept apart from the ledger's meters (a departure from ARCHITECTURE.md,
where a Budget is one more Resource): a quota that is full *waits*, while a budget that
is spent *stops the run* with the rest pending, and its spend lives in the store, shared
by processes, where the meters live in memory. The engine asks here before it starts a
call (``reserve``) and tells here how each attempt ended; nothing else.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rate_limited._call_spend import CallSpend
from rate_limited._redact import describe
from rate_limited._spend_books import MemoryBook, SpendBook
from rate_limited.budget import Budget, BudgetStop
from rate_limited.exceptions import (
    BudgetWarning,
    ConfigurationError,
    UsageExtractionError,
    UsageWarning,
)

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.stores.base import Store

__all__ = ["CallSpend", "CostSource", "SpendControl", "spend_of"]

logger = logging.getLogger("rate_limited")


@runtime_checkable
class CostSource(Protocol):
    """What prices calls: the API presets, or a Budget's own functions."""

    def call_cost(self, call: Call, result: Any) -> float | None:
        """USD the call's ``result`` cost (None: unknown)."""

    def call_max_cost(self, call: Call, *, required: bool = False) -> float | None:
        """The most the call can cost (None: unknown; with ``required``, an error)."""


class _BudgetCosts:
    """A ``CostSource`` from ``Budget(cost=..., max_cost=...)``."""

    def __init__(self, budget: Budget) -> None:
        assert budget.cost is not None and budget.max_cost is not None
        self._cost = budget.cost
        self._max_cost = budget.max_cost

    def call_cost(self, call: Call, result: Any) -> float | None:
        return self._cost(call, result)

    def call_max_cost(self, call: Call, *, required: bool = False) -> float | None:
        return self._max_cost(call)


def spend_of(call: Call) -> CallSpend | None:
    extras = call._extras
    return None if extras is None else extras.spend


def _usd(value: object, what: str, call: Call) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < math.inf:
        raise ValueError(f"{what} must be a finite number of USD >= 0, got {value!r} for {call!r}")
    return float(value)


class SpendControl:
    """Prices, reserves and settles the calls of one Runner (see the module docstring)."""

    def __init__(self, budget: Budget | None, source: CostSource | None, store: Store | None):
        if budget is not None and budget.cost is not None:
            source = _BudgetCosts(budget)
        if budget is not None and source is None:
            raise ConfigurationError(
                "Budget: this Runner's function does not price its calls, so give the budget "
                "cost=lambda call, result: USD and max_cost=lambda call: USD (an API preset, "
                "e.g. chat.runner(budget=Budget(usd=5)), prices them itself)."
            )
        self.budget = budget
        self.source = source
        self.book: SpendBook | None = None
        if budget is not None:
            self.book = book_for(
                store, budget.name, budget.time_window_seconds, budget.lease_seconds
            )
        self._notices: list[tuple[type[Warning], str]] = []
        self._alerted: set[float] = set()
        self._unpriced = 0
        self._unpriced_first: str | None = None
        self._unpriced_models: set[str] = set()
        #: USD of every response priced so far (the displays show a run's share).
        self.cost_total = 0.0
        #: Wall-clock epoch seconds minus the engine's loop time: the books keep wall
        #: time, so that a rolling window means the same in every process.
        self.offset = time.time()

    def follow(self, loop_time: float) -> None:
        """The engine's loop reads ``loop_time`` now (each run re-reads the offset)."""
        self.offset = time.time() - loop_time

    # -- at schedule() ------------------------------------------------------------------------
    def prepare(self, call: Call) -> None:
        """Price the call's maximum now, if a budget needs it (one that can't bound it is
        an error here, at ``schedule()``); without a budget, only its cost is kept."""
        if self.source is None:
            return
        maximum = self.max_cost_of(call) if self.budget is not None else None
        extras = call._more()
        spend = extras.spend
        if spend is None:
            extras.spend = CallSpend(maximum)
        else:
            spend.max_cost = maximum

    def max_cost_of(self, call: Call) -> float | None:
        assert self.source is not None
        required = self.budget is not None
        try:
            value = self.source.call_max_cost(call, required=required)
            maximum = None if value is None else _usd(value, "max_cost", call)
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"max_cost raised {describe(exc, call)} for {call!r}; the budget must know "
                "the most a call can cost before it starts."
            ) from exc
        if maximum is None and required:
            raise ConfigurationError(
                f"The budget needs the most {call!r} can cost, and max_cost gave None."
            )
        return maximum

    # -- the engine's hooks -------------------------------------------------------------------
    def reserve(self, call: Call, now: float) -> bool:
        """Hold the call's maximum on the budget; False if it does not fit. (Here and
        below, ``now`` is the engine's loop time.)"""
        spend = spend_of(call)
        if self.budget is None or spend is None or spend.max_cost is None:
            return True
        assert self.book is not None
        budget = self.budget
        token = self.book.reserve(
            spend.max_cost, budget.usd, budget.time_window_seconds, now + self.offset
        )
        if token is None:
            return False
        spend.token = token
        return True

    def frees_in(self, call: Call, now: float) -> float:
        """Seconds until the call's maximum fits the budget (``inf``: not by time alone)."""
        spend = spend_of(call)
        if self.budget is None or spend is None or spend.max_cost is None:
            return 0.0
        assert self.book is not None
        budget = self.budget
        wall = now + self.offset
        when = self.book.frees_at(spend.max_cost, budget.usd, budget.time_window_seconds, wall)
        return max(0.0, when - wall)

    def settle(self, call: Call, result: Any, now: float) -> None:
        """An attempt returned ``result`` (valid or not, it was paid for)."""
        spend = spend_of(call)
        if spend is None or self.source is None:
            return
        cost: float | None
        try:
            value = self.source.call_cost(call, result)
            cost = None if value is None else _usd(value, "cost", call)
        except Exception as exc:
            cost = None
            self._unreadable(call, exc, spend)
        if cost is None:
            spend.unknown = True
            model = call.kwargs.get("model")
            if isinstance(model, str):
                self._unpriced_models.add(model)
        else:
            spend.cost += cost
            self.cost_total += cost
        self._bill(call, spend, spend.max_cost if cost is None else cost, now)

    def keep(self, call: Call, now: float) -> None:
        """An attempt failed in a way the provider may have billed (no response tells):
        the budget counts its maximum. The call's own cost counts what responses said."""
        spend = spend_of(call)
        if spend is not None and spend.token is not None:
            self._bill(call, spend, spend.max_cost, now)

    def release(self, call: Call) -> None:
        """An attempt provably not billed (never sent, a 429): nothing is spent."""
        spend = spend_of(call)
        if spend is None or spend.token is None:
            return
        assert self.book is not None
        token, spend.token = spend.token, None
        self.book.release(token)

    def _bill(self, call: Call, spend: CallSpend, cost: float | None, now: float) -> None:
        """The budget's side of an attempt that ended: ``cost`` is spent."""
        if self.budget is None:
            return
        assert self.book is not None
        billed = 0.0 if cost is None else cost
        token, spend.token = spend.token, None
        wall = now + self.offset
        if token is None:
            self.book.bill(billed, wall)  # a late result: its reservation was settled
        else:
            self.book.settle(token, billed, wall)
        if spend.max_cost is not None and billed > spend.max_cost * (1 + 1e-9):
            logger.warning(
                "%r cost $%.6g, more than the $%.6g it reserved (its prompt was larger than "
                "estimated): the budget may be exceeded by the difference",
                call,
                billed,
                spend.max_cost,
            )
        if self.budget.alert_at:
            self._check_alerts(now)

    def _unreadable(self, call: Call, exc: BaseException, spend: CallSpend) -> None:
        kept = (
            f"its maximum, ${spend.max_cost:.6g}, was counted against the budget"
            if self.budget is not None and spend.max_cost is not None
            else "its cost is None"
        )
        error = UsageExtractionError(
            f"the cost of the result could not be read ({describe(exc, call)}); {kept}"
        )
        error.__cause__ = exc
        call.warnings.append(error)
        self._unpriced += 1
        self._unpriced_first = self._unpriced_first or str(error)

    # -- alerts and reports -------------------------------------------------------------------
    def _check_alerts(self, now: float) -> None:
        budget = self.budget
        assert budget is not None and self.book is not None
        spent, _ = self.state(now)
        limit = budget.usd
        for fraction in budget.alert_at:
            crossed = limit > 0 and spent >= fraction * limit * (1 - 1e-9)
            if not crossed:
                self._alerted.discard(fraction)  # a rolling window dropped below it again
            elif fraction not in self._alerted:
                self._alerted.add(fraction)
                text = (
                    f"Budget alert: ${spent:.6g} spent, {spent / limit:.0%} of "
                    f"${limit:.6g} {budget.window_label} (alert_at={fraction:g})."
                )
                logger.warning("%s", text)
                self._notices.append((BudgetWarning, text))
                if budget.on_alert is not None:
                    try:
                        budget.on_alert(fraction, spent, limit)
                    except Exception:
                        logger.exception("Budget on_alert raised; the run goes on")

    def state(self, now: float | None = None) -> tuple[float, float]:
        """``(spent, reserved)`` of the budget at loop time ``now`` (None: now, from any
        thread); zeros without a budget."""
        if self.budget is None or self.book is None:
            return 0.0, 0.0
        wall = time.time() if now is None else now + self.offset
        return self.book.state(self.budget.time_window_seconds, wall)

    def stop_report(self, head: Call | None, calls: Sequence[Call], now: float) -> BudgetStop:
        """Why the run stopped at the budget, for ``RunResult.budget`` and the warning."""
        budget = self.budget
        assert budget is not None
        spent, reserved = self.state(now)
        spend = None if head is None else spend_of(head)
        needed = 0.0 if spend is None or spend.max_cost is None else spend.max_cost
        frees_in: float | None = None
        if not math.isinf(budget.time_window_seconds) and head is not None:
            frees_in = self.frees_in(head, now)
            if math.isinf(frees_in):
                frees_in = None
        from rate_limited.outcomes import Status

        not_started = sum(1 for c in calls if c.status is Status.PENDING)
        return BudgetStop(
            spent=spent,
            reserved=reserved,
            limit=budget.usd,
            needed=needed,
            not_started=not_started,
            per=budget.window_label,
            frees_in=frees_in,
        )

    def take_notices(self) -> list[tuple[type[Warning], str]]:
        """The warnings due since the last call, for the caller's thread; a source that
        could not price some models warns about them itself, now (in that thread)."""
        notices, self._notices = self._notices, []
        models, self._unpriced_models = self._unpriced_models, set()
        warn_unpriced = getattr(self.source, "warn_unpriced", None)
        if models and callable(warn_unpriced):
            warn_unpriced(sorted(models))
        if self._unpriced:
            notices.append(
                (
                    UsageWarning,
                    f"{self._unpriced} call(s) returned a result whose cost could not be read "
                    f"(see outcome.warnings). The first: {self._unpriced_first}",
                )
            )
            self._unpriced, self._unpriced_first = 0, None
        return notices

    def __repr__(self) -> str:
        return f"<SpendControl budget={self.budget!r} source={type(self.source).__name__}>"


#: Books of ``memory://`` stores, per store and budget name: runners sharing the store share it.
_MEMORY_BOOKS: weakref.WeakKeyDictionary[Store, dict[tuple[str, float], MemoryBook]] = (
    weakref.WeakKeyDictionary()
)


def book_for(store: Store | None, name: str, window: float, lease: float) -> SpendBook:
    """The spend book of budget ``name`` in ``store`` (this process only without one)."""
    if store is None:
        return MemoryBook(window)
    from rate_limited.stores.memory import MemoryStore
    from rate_limited.stores.sqlite import SqliteStore

    if isinstance(store, SqliteStore) and store.path != ":memory:":
        from rate_limited._spend_sqlite import SqliteBook

        return SqliteBook(os.fspath(store.path), name, lease)
    try:
        from rate_limited.stores.redis import RedisStore
    except ImportError:  # pragma: no cover - the redis extra is not installed
        RedisStore = None  # type: ignore[assignment,misc]
    if RedisStore is not None and isinstance(store, RedisStore):
        from rate_limited._spend_redis import RedisBook

        return RedisBook(store._client, store._prefix, name, window, lease)
    if isinstance(store, MemoryStore | SqliteStore):
        books = _MEMORY_BOOKS.setdefault(store, {})
        return books.setdefault((name, window), MemoryBook(window))
    return MemoryBook(window)  # a Store of the user's own: this process only (documented)
