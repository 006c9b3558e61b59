"""What ``run()`` hands back: ``RunResult``, one ``Outcome`` per call, and ``Status``.

``RunResult`` is a tuple ``(results, exceptions)``, exactly rate_limited 0.4's shape, so
``results, exceptions = runner.run()`` keeps working; ``results[i]`` is the value of call
i (None if it did not succeed) and ``exceptions[i]`` the list of its failed attempts'
exceptions. On top of that it carries ``.outcomes`` (status, attempts, usage, cost,
latency per call), ``.cost``, ``.interrupted``, ``.budget`` (why a budget stopped the run)
and ``.to_pandas()``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._outcome import Outcome
from rate_limited._status import Status
from rate_limited.calls import Call

if TYPE_CHECKING:
    import pandas

    from rate_limited.budget import BudgetStop
    from rate_limited.resources import Resource

__all__ = ["Outcome", "RunResult", "Status"]


class RunResult(tuple[list[Any], list[list[BaseException]]]):
    """``(results, exceptions)`` of one ``run()``, plus outcomes and a DataFrame view."""

    # No __slots__: a tuple subclass cannot have instance slots, but it can have a __dict__.
    calls: Sequence[Call]
    #: True when the run was stopped (Ctrl-C, ``stop()``) before every call ended.
    interrupted: bool
    #: Seconds the run took, on the runner's clock.
    elapsed: float
    #: The runner's resources, in the order of each call's demand (for ``plot()``).
    resources: tuple[Resource, ...]
    #: When the run started, on the runner's clock (loop time, like ``Outcome.started_at``).
    started_at: float | None
    #: Finished calls whose outcome could not be written to the store (0 without a
    #: store); a ``StoreWarning`` said so. A later process would call them again.
    store_failures: int
    #: Why the run stopped at its budget with calls pending (None: it did not).
    budget: BudgetStop | None
    _outcomes: list[Outcome] | None

    def __new__(
        cls,
        results: list[Any],
        exceptions: list[list[BaseException]],
        calls: Sequence[Call] = (),
        interrupted: bool = False,
        elapsed: float = 0.0,
        *,
        resources: tuple[Resource, ...] = (),
        started_at: float | None = None,
        store_failures: int = 0,
        budget: BudgetStop | None = None,
    ) -> RunResult:
        self = super().__new__(cls, (results, exceptions))
        self.calls = calls
        self.interrupted = interrupted
        self.elapsed = elapsed
        self.resources = resources
        self.started_at = started_at
        self.store_failures = store_failures
        self.budget = budget
        self._outcomes = None
        return self

    @classmethod
    def from_calls(
        cls,
        calls: Sequence[Call],
        *,
        interrupted: bool,
        elapsed: float = 0.0,
        resources: tuple[Resource, ...] = (),
        started_at: float | None = None,
        store_failures: int = 0,
        budget: BudgetStop | None = None,
        copy: bool = False,
    ) -> RunResult:
        """The result of ``calls``, read from them now, in their order.

        ``exceptions[i]`` is call i's own list of exceptions (as in rate_limited 0.4) when
        it has some, else a new empty list; ``copy`` copies them instead (a snapshot taken
        while the run goes on, which must not change under the reader)."""
        results, exceptions = Call.final_lists(calls, copy)
        return cls(
            results,
            exceptions,
            calls,
            interrupted,
            elapsed,
            resources=resources,
            started_at=started_at,
            store_failures=store_failures,
            budget=budget,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Without the Calls: they hold the function, often a lambda or a client method.
        outcomes = [dataclasses.replace(o, call=None) for o in self.outcomes]
        return (
            _unpickle,
            (
                self[0],
                self[1],
                outcomes,
                self.interrupted,
                self.elapsed,
                self.store_failures,
                self.budget,
            ),
        )

    @property
    def results(self) -> list[Any]:
        """Value of each call in schedule order; None where the call did not succeed."""
        return self[0]

    @property
    def exceptions(self) -> list[list[BaseException]]:
        """Per call, the exceptions of its failed attempts."""
        return self[1]

    @property
    def outcomes(self) -> list[Outcome]:
        """One Outcome per call, in schedule order (read from the calls on first access)."""
        if self._outcomes is None:
            self._outcomes = [Outcome.of(call) for call in self.calls]
        return self._outcomes

    @property
    def cost(self) -> float | None:
        """USD the calls cost (``sum(o.cost)``); None if no call could be priced."""
        costs = [o.cost for o in self.outcomes if o.cost is not None]
        return math.fsum(costs) if costs else None

    def counts(self) -> dict[str, int]:
        """How many calls are in each status, e.g. ``{"succeeded": 98, "failed": 2}``."""
        counts: dict[str, int] = {}
        statuses = (
            (o.status for o in self._outcomes)
            if not self.calls and self._outcomes
            else (c.status for c in self.calls)
        )
        for status in statuses:
            counts[status.value] = counts.get(status.value, 0) + 1
        return counts

    def plot(self, ax: Any = None, **options: Any) -> Any:
        """Each resource's usage over time against its quota, and when each call waited,
        ran and failed: a matplotlib Figure (``pip install 'rate_limited[plot]'``)."""
        from rate_limited._plot import plot_run

        return plot_run(self, ax, **options)

    def to_pandas(self) -> pandas.DataFrame:
        """One row per call: result, status, error, attempts, latency and usage columns."""
        from rate_limited._frames import outcomes_frame

        return outcomes_frame(self.outcomes)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        flag = ", interrupted" if self.interrupted else ""
        if self.budget is not None:
            flag += ", stopped at the budget"
        cost = self.cost
        if cost is not None:
            flag += f", ${cost:.4g}"
        if self.store_failures:
            flag += f", {self.store_failures} not stored"
        return f"<RunResult of {len(self[0])} calls: {counts or 'none'}{flag}>"


def _unpickle(
    results: list[Any],
    exceptions: list[list[BaseException]],
    outcomes: list[Outcome],
    interrupted: bool,
    elapsed: float,
    store_failures: int = 0,
    budget: BudgetStop | None = None,
) -> RunResult:
    result = RunResult(
        results, exceptions, (), interrupted, elapsed, store_failures=store_failures, budget=budget
    )
    result._outcomes = outcomes
    return result
