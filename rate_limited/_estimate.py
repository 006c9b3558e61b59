"""``runner.estimate()``: what the scheduled calls will need, before any is sent.

After ``schedule()`` and before ``run()``: how many calls are left to run, their prompt
tokens and most output tokens (an API preset's estimates), what they will cost at least
(prompts only, no output) and at most (every call using all of its ``max_tokens``), and
the least time the quotas allow. Nothing is sent, reserved or billed.

The least time: per quota (and per partition, e.g. per model), the calls' whole demand
(what the ledger would reserve: the arguments usage plus the results estimate) against
the quota, starting from a full quota: a bucket that holds ``quota`` and refills
``quota`` per window takes ``(demand - quota) / quota`` windows; a window quota, one
window per quota's worth after the first. The slowest quota sets the time. It is a lower
bound for resources billed at their reservation (OpenAI's tokens); for one billed by
actual usage, calls that use less than their estimate can go faster.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rate_limited._format import format_seconds

if TYPE_CHECKING:
    from rate_limited._spend import SpendControl
    from rate_limited.budget import Budget
    from rate_limited.calls import Call
    from rate_limited.resources import Resource


class Runner(Protocol):
    """What an estimate reads of the Runner (a protocol: no import of ``runner``)."""

    scheduled_calls: list[Call]
    function: Callable[..., Any]

    @property
    def resources(self) -> list[Resource]: ...

    @property
    def budget(self) -> Budget | None: ...


__all__ = ["Estimate", "estimate"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the scheduled, unfinished calls will need (``runner.estimate()``)."""

    #: Calls left to run.
    calls: int
    #: Their prompt tokens, as estimated (None: the function is not an API preset).
    prompt_tokens: int | None
    #: The most output tokens they can generate (``max_tokens * n``; None: not a preset).
    max_output_tokens: int | None
    #: USD at least: every prompt at its input rate, no output (None: not priced).
    cost_min: float | None
    #: USD at most: every prompt at its highest rate, all of ``max_tokens`` at the output
    #: rate (None: not priced, or a model without a price).
    cost_max: float | None
    #: The least seconds the quotas allow (0: no quota binds; see the module docstring).
    min_seconds: float
    #: The quota that sets ``min_seconds`` (None: none binds).
    binding: str | None
    #: The budget's limit and what is left of it (None: no budget).
    budget_usd: float | None = None
    budget_left: float | None = None

    def rows(self) -> list[tuple[str, str]]:
        """``(what, value)`` pairs, as the table shows them."""
        rows = [("calls", f"{self.calls:,}")]
        if self.prompt_tokens is not None:
            rows.append(("prompt tokens", f"{self.prompt_tokens:,}"))
        if self.max_output_tokens is not None:
            rows.append(("max output tokens", f"{self.max_output_tokens:,}"))
        rows.append(("cost min", _usd(self.cost_min)))
        rows.append(("cost max", _usd(self.cost_max)))
        least = format_seconds(self.min_seconds)
        if self.binding is not None:
            least += f" (set by {self.binding})"
        rows.append(("least time", least))
        if self.budget_usd is not None:
            left = "" if self.budget_left is None else f", {_usd(self.budget_left)} left"
            rows.append(("budget", f"{_usd(self.budget_usd)}{left}"))
            left_usd = self.budget_left
            if self.cost_max is not None and left_usd is not None and self.cost_max > left_usd:
                rows.append(("note", "the budget may stop the run before every call ran"))
        return rows

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(what) for what, _ in rows)
        return "\n".join(f"{what:<{width}}  {value}" for what, value in rows)

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(what)}</th>"
            f"<td style='text-align:right'>{html.escape(value)}</td></tr>"
            for what, value in self.rows()
        )
        return f"<table><caption>rate_limited estimate</caption>{cells}</table>"


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}"


def estimate(runner: Runner, spend: SpendControl | None) -> Estimate:
    """The Estimate of ``runner``'s scheduled calls that are not final (``spend``: its
    prices and budget, if any)."""
    calls = [c for c in runner.scheduled_calls if not c.status.is_final]
    function = runner.function
    tokens = getattr(function, "call_tokens", None)
    min_cost = getattr(function, "call_min_cost", None)
    prompt: int | None = None
    output: int | None = None
    if callable(tokens):
        prompt = output = 0
        for call in calls:
            p, o = tokens(call)
            prompt += int(p)
            output += int(o)
    cost_max = _sum(_max_cost(spend, call) for call in calls)
    cost_min = _sum(min_cost(call) for call in calls) if callable(min_cost) else None
    seconds, binding = least_time(runner, calls)
    budget_usd = budget_left = None
    if runner.budget is not None and spend is not None:
        budget_usd = runner.budget.usd
        spent, reserved = spend.state()
        budget_left = max(0.0, budget_usd - spent - reserved)
    return Estimate(
        calls=len(calls),
        prompt_tokens=prompt,
        max_output_tokens=output,
        cost_min=cost_min,
        cost_max=cost_max,
        min_seconds=seconds,
        binding=binding,
        budget_usd=budget_usd,
        budget_left=budget_left,
    )


def _max_cost(control: SpendControl | None, call: Call) -> float | None:
    """The call's maximum cost: the one its budget reserves, else priced now."""
    extras = call._extras
    spend = None if extras is None else extras.spend
    if spend is not None and spend.max_cost is not None:
        return spend.max_cost
    if control is None or control.source is None:
        return None
    return control.source.call_max_cost(call)


def _sum(values: object) -> float | None:
    total = 0.0
    for value in values:  # type: ignore[attr-defined]
        if value is None:
            return None
        total += value
    return total if not math.isnan(total) else None


def least_time(runner: Runner, calls: list[Call]) -> tuple[float, str | None]:
    """The least seconds the quotas allow for ``calls``, and the quota that sets it."""
    demand: dict[tuple[int, Hashable], float] = {}
    for call in calls:
        for index, (args_usage, estimate_usage, key) in enumerate(call.demand):
            slot = (index, key)
            demand[slot] = demand.get(slot, 0.0) + args_usage + estimate_usage
    slowest, binding = 0.0, None
    for (index, key), total in demand.items():
        resource = runner.resources[index]
        quota = resource.quota_for(key)
        window = resource.time_window_seconds
        if total <= quota:
            continue
        if resource.refill == "bucket":
            seconds = (total - quota) / quota * window
        else:
            seconds = (math.ceil(total / quota) - 1) * window
        if seconds > slowest:
            slowest = seconds
            binding = resource.name if key is None else f"{resource.name}[{key}]"
    return slowest, binding
