"""The Runner's side of money: its budget, its prices and its escalation ladder.

``Money`` is what a Runner keeps for ``budget=`` and ``escalate=`` (or a function that
prices its calls, such as an API preset): it takes the Budget out of the resources, prices
each call at ``schedule()`` (``SpendControl.prepare``), moves a call to its first rung,
adds the ladder to its store key, reprices a call that escalates, and when a run ends,
says why the budget stopped it (``BudgetStop``) and what it has to warn about. The
engine's side is ``rate_limited._spend.SpendControl``; the ladder's is
``rate_limited._escalate``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._call_spend import CallSpend
from rate_limited._escalate import Ladder, scheduled_kwargs
from rate_limited.budget import Budget, BudgetStop
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rate_limited._spend import SpendControl
    from rate_limited.calls import Call
    from rate_limited.resources import Resource
    from rate_limited.stores.base import Store

__all__ = ["Money", "split_budget"]

#: ``demand(call)``: a call's per-resource demand, computed from its arguments.
Demand = Callable[["Call"], tuple[tuple[float, float, Hashable], ...]]


def split_budget(
    resources: Iterable[Resource | Budget] | Resource, budget: Budget | None
) -> tuple[Any, Budget | None]:
    """The resources without a Budget given among them, and the Runner's budget."""
    if budget is not None and not isinstance(budget, Budget):
        raise ConfigurationError(f"budget must be a rate_limited.Budget or None, got {budget!r}.")
    if isinstance(resources, Budget):
        return [], resources
    if not isinstance(resources, Iterable):
        return resources, budget  # the Runner's checks say what is wrong with them
    items = list(resources)
    budgets = [r for r in items if isinstance(r, Budget)]
    if len(budgets) + (budget is not None) > 1:
        raise ConfigurationError(
            "A Runner has one budget: give one Budget (in resources or as budget=); of "
            "several limits, only the tightest matters."
        )
    if budgets:
        budget = budgets[0]
    return [r for r in items if not isinstance(r, Budget)], budget


class Money:
    """A Runner's budget, prices and escalation ladder (see the module docstring)."""

    def __init__(
        self,
        function: Callable[..., Any],
        budget: Budget | None,
        escalate: Sequence[Mapping[str, Any]] | None,
        store: Store | None,
        demand: Demand | None,
    ) -> None:
        from rate_limited._spend import CostSource, SpendControl

        #: The spending limit (None: none); raise ``budget.usd`` to go on after a stop.
        self.budget = budget
        source = function if isinstance(function, CostSource) else None
        #: Prices and the budget, for the engine (None: the calls are not priced).
        self.spend: SpendControl | None = (
            None if budget is None and source is None else SpendControl(budget, source, store)
        )
        self.ladder = None if escalate is None else Ladder(escalate)
        #: Whether ``schedule()`` has anything to do here (neither of the above changes).
        self.active = self.spend is not None or self.ladder is not None
        self._demand = demand

    # -- at schedule() -------------------------------------------------------------------------
    def schedule(self, call: Call) -> None:
        """Before the call's demand is computed: its first rung's arguments."""
        if self.ladder is not None:
            self.ladder.first(call, _spend_record(call))

    def price(self, call: Call) -> None:
        """After its demand: its maximum cost (an error now if a budget can't bound it)."""
        if self.spend is not None:
            self.spend.prepare(call)

    def key_kwargs(self, call: Call) -> Mapping[str, Any]:
        """The keyword arguments a call's store key is made of: as scheduled, and the
        ladder (a result another ladder produced is not this call's)."""
        if self.ladder is None:
            return call.kwargs
        return {**scheduled_kwargs(call), **self.ladder.key_extra()}

    # -- escalation ------------------------------------------------------------------------------
    def escalate(self, call: Call, exc: BaseException) -> bool:
        """The engine's hook after a failed attempt: the next rung, if it applies."""
        assert self.ladder is not None
        return self.ladder.escalate(call, exc, self._reprice)

    def _reprice(self, call: Call) -> None:
        """The call's arguments changed: its quotas' usage and maximum cost."""
        if self._demand is not None:
            call.demand = self._demand(call)
        self.price(call)

    # -- when a run ends -------------------------------------------------------------------------
    def stopped(self, head: Call | None, calls: Sequence[Call], now: float) -> BudgetStop | None:
        """Why the budget stopped the run, if it did (``head``: the call it could not
        admit; ``now``: the engine's loop time)."""
        if head is None or self.spend is None:
            return None
        return self.spend.stop_report(head, calls, now)

    def take_notices(self) -> list[tuple[type[Warning], str]]:
        return [] if self.spend is None else self.spend.take_notices()


def _spend_record(call: Call) -> CallSpend:
    extras = call._more()
    if extras.spend is None:
        extras.spend = CallSpend(None)
    return extras.spend
