"""``Budget``: a spending limit in US dollars, a quota whose unit is money.

::

    from rate_limited import Budget
    from rate_limited.apis.openai import ChatCompletions

    chat = ChatCompletions(client, requests_per_minute=500, tokens_per_minute=200_000)
    runner = chat.runner(budget=Budget(usd=5))                  # a preset knows the prices
    runner = Runner(f, resources, budget=Budget(usd=5, cost=lambda call, result: ...,
                                                max_cost=lambda call: ...))

Each call reserves its maximum cost before it starts (a preset's: the prompt estimate at
the highest rate a prompt token can be billed at, plus ``max_tokens * n`` at the output
rate) and settles its actual cost, read from the usage the response reports, when it
returns. Spent plus reserved never exceeds ``usd``, at any concurrency: the check and the
reservation are one atomic step (in the store, with one). A call that failed in a way the
provider may have billed (a timeout, a dropped connection) settles its maximum; a call
that provably was not billed (a 429, a refused connection) releases its reservation.

When the budget cannot admit the next call, no more calls start, the running ones finish,
and ``run()`` returns with the rest *pending* (``RunResult.budget`` says why; one
``BudgetWarning`` too). Raise ``budget.usd`` and ``run()`` again to go on.

``per``: None (default) for a total, ``"day"`` for a rolling 24 hours, or a number of
seconds for a rolling window of that length. A rolling budget whose room comes back
within ``wait_seconds`` (default 60) waits for it, like any quota; a longer wait stops the
run instead (the result says when the room comes back).

With a store (``Runner(store=...)``) the spend is kept in the store under the budget's
``name``: a restarted kernel, or another process on the same store, goes on from what was
already spent, and their reservations count against each other (SQLite: one transaction;
Redis: one Lua script). A reservation whose process died expires after
``lease_seconds`` and then counts as spent (its call may have been billed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

from rate_limited._format import format_seconds
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = ["Budget", "BudgetStop"]

DAY = 86_400.0

#: ``on_alert(fraction, spent, limit)``: called when the spend crosses ``fraction * usd``.
AlertCallback = Callable[[float, float, float], Any]


def _usd(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(f"Budget: {what} must be a number of US dollars, got {value!r}.")
    number = float(value)
    if not 0 <= number < math.inf:
        raise ConfigurationError(
            f"Budget: {what} must be a finite number of US dollars >= 0, got {value!r}."
        )
    return number


def _window(per: object) -> float:
    if per is None:
        return math.inf
    if per == "day":
        return DAY
    if isinstance(per, bool) or not isinstance(per, Real) or not 0 < float(per) < math.inf:
        raise ConfigurationError(
            f"Budget: per must be None (a total), 'day' (a rolling 24 hours) or a positive "
            f"number of seconds (a rolling window), got {per!r}."
        )
    return float(per)


def _fractions(alert_at: Iterable[float]) -> tuple[float, ...]:
    try:
        values = tuple(alert_at)
    except TypeError:
        raise ConfigurationError(
            f"Budget: alert_at must be fractions of the budget, e.g. (0.5, 0.8), got {alert_at!r}."
        ) from None
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) <= 1:
            raise ConfigurationError(
                f"Budget: each alert_at fraction must be in (0, 1], got {value!r}."
            )
    return tuple(sorted(float(v) for v in values))


def _check_callable(value: object, what: str) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"Budget: {what} must be a callable or None, got {value!r}.")


class Budget:
    """At most ``usd`` US dollars spent (``per`` a rolling window, or in total).

    ``cost(call, result) -> float`` and ``max_cost(call) -> float`` price the calls of
    your own function; a preset (``chat.runner(budget=...)``) prices them itself.
    ``alert_at=(0.5, 0.8)`` issues a ``BudgetWarning`` (at the end of the run) and calls
    ``on_alert(fraction, spent, limit)`` (at once, on the Runner's thread) when the spend
    crosses those fractions of ``usd``.
    """

    __slots__ = (
        "_usd",
        "alert_at",
        "cost",
        "lease_seconds",
        "max_cost",
        "name",
        "on_alert",
        "per",
        "time_window_seconds",
        "wait_seconds",
    )

    def __init__(
        self,
        usd: float,
        per: Literal["day"] | float | None = None,
        *,
        cost: Callable[[Call, Any], float | None] | None = None,
        max_cost: Callable[[Call], float] | None = None,
        alert_at: Iterable[float] = (),
        on_alert: AlertCallback | None = None,
        name: str = "budget",
        wait_seconds: float = 60.0,
        lease_seconds: float = 3_600.0,
    ) -> None:
        self._usd = _usd(usd, "usd")
        #: As given: None, "day" or seconds.
        self.per = per
        #: The rolling window in seconds (``inf``: a total).
        self.time_window_seconds = _window(per)
        _check_callable(cost, "cost")
        _check_callable(max_cost, "max_cost")
        _check_callable(on_alert, "on_alert")
        if (cost is None) != (max_cost is None):
            raise ConfigurationError(
                "Budget: give both cost=(call, result) -> USD and max_cost=(call) -> USD, or "
                "neither (a preset prices its calls itself): the budget reserves max_cost "
                "before a call and settles cost after it."
            )
        self.cost = cost
        self.max_cost = max_cost
        self.alert_at = _fractions(alert_at)
        self.on_alert = on_alert
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Budget: name must be a non-empty string, got {name!r}.")
        #: Where the spend is kept in a store: budgets of one name share it.
        self.name = name
        for value, what in ((wait_seconds, "wait_seconds"), (lease_seconds, "lease_seconds")):
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
                raise ConfigurationError(
                    f"Budget: {what} must be a finite number of seconds >= 0, got {value!r}."
                )
        self.wait_seconds = float(wait_seconds)
        self.lease_seconds = float(lease_seconds)

    @property
    def usd(self) -> float:
        """The limit in US dollars; raise it and ``run()`` again to go on after a stop."""
        return self._usd

    @usd.setter
    def usd(self, value: float) -> None:
        self._usd = _usd(value, "usd")

    #: The quota, as a Resource calls it.
    quota = usd

    @property
    def window_label(self) -> str:
        if self.per is None:
            return "in total"
        if self.per == "day":
            return "per rolling day"
        return f"per rolling {self.time_window_seconds:g} s"

    def __repr__(self) -> str:
        per = "" if self.per is None else f", per={self.per!r}"
        alerts = f", alert_at={self.alert_at}" if self.alert_at else ""
        return f"Budget(usd={self._usd:g}{per}{alerts}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class BudgetStop:
    """Why a run stopped at its budget (``RunResult.budget``)."""

    #: US dollars spent within the budget's window (by every process on the store).
    spent: float
    #: Held by calls still running elsewhere (another process on the same store).
    reserved: float
    #: The budget's limit in US dollars.
    limit: float
    #: The most the next call could cost: what did not fit.
    needed: float
    #: Calls of the run that did not start (they are pending).
    not_started: int
    #: "in total", "per rolling day"...
    per: str
    #: Seconds until enough spend leaves a rolling window for the next call (None:
    #: a total budget, which never frees).
    frees_in: float | None

    @property
    def message(self) -> str:
        when = (
            ""
            if self.frees_in is None
            else f" The rolling window frees enough for it in {format_seconds(self.frees_in)}."
        )
        held = (
            f" (and ${self.reserved:.6g} held by calls running elsewhere)" if self.reserved else ""
        )
        return (
            f"Budget reached: ${self.spent:.6g} spent of ${self.limit:.6g} {self.per}{held}; "
            f"the next call could cost up to ${self.needed:.6g}, so {self.not_started} "
            f"call(s) did not start (they are pending, not failed).{when} Raise the budget "
            "(runner.budget.usd = ...) and run() again to go on."
        )
