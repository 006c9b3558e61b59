"""What ``run()`` hands back: ``RunResult``, one ``Outcome`` per call, and ``Status``.

``RunResult`` is a tuple ``(results, exceptions)``, exactly rate_limited 0.4's shape, so
``results, exceptions = runner.run()`` keeps working; ``results[i]`` is the value of call
i (None if it did not succeed) and ``exceptions[i]`` the list of its failed attempts'
exceptions. On top of that it carries ``.outcomes`` (status, attempts, usage, latency per
call), ``.interrupted`` and ``.to_pandas()``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

    from rate_limited.calls import Call
    from rate_limited.resources import Resource
    from rate_limited.semantic import SemanticMatch

__all__ = ["Outcome", "RunResult", "Status"]


class Status(str, enum.Enum):
    """Where a call is. Only SUCCEEDED and FAILED are final; a rerun resumes the rest."""

    PENDING = "pending"  #: not started yet, or waiting to be retried
    RUNNING = "running"  #: an attempt is in flight
    SUCCEEDED = "succeeded"  #: returned a valid value (None is a value)
    FAILED = "failed"  #: failed permanently or used up its retries
    CANCELLED = "cancelled"  #: its attempt was cancelled by an interrupt; rerun resumes it

    @property
    def is_final(self) -> bool:
        return self is Status.SUCCEEDED or self is Status.FAILED


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended (or where it is), read from its Call when first asked for."""

    #: Position of the call in the run's results.
    index: int
    status: Status
    #: The value it returned (None unless it succeeded).
    result: Any
    #: Exceptions of its failed attempts, oldest first.
    exceptions: tuple[BaseException, ...]
    #: Attempts started, interrupted ones included.
    attempts: int
    #: Usage billed per resource name (the estimate if the actual usage is unknown).
    usage: dict[str, float]
    #: Seconds the last attempt took.
    latency: float | None
    #: Loop-clock (monotonic) times: start of the last attempt, end of the call.
    started_at: float | None
    finished_at: float | None
    #: Store key of the call, when the runner has a store.
    key: str | None
    #: True when the outcome came from the store instead of a call.
    from_store: bool
    #: The Call itself, for its arguments (``call.args``, ``call.get_argument(...)``);
    #: None in a RunResult that was pickled (the function may not be picklable).
    call: Call | None
    #: Problems that did not fail the call, e.g. a ``UsageExtractionError`` on a call
    #: that succeeded (its usage could not be read, so its estimate was billed).
    warnings: tuple[BaseException, ...] = ()
    #: How the semantic cache answered the call: the matched call's key, its redacted
    #: prompt and the similarity (None: it did not).
    semantic: SemanticMatch | None = None
    #: Seconds from sending the last attempt to its first chunk, for a streamed response
    #: (``stream=True`` in a preset); None otherwise.
    time_to_first_token: float | None = None

    @property
    def error(self) -> BaseException | None:
        """The last exception, if any."""
        return self.exceptions[-1] if self.exceptions else None

    @classmethod
    def of(cls, call: Call) -> Outcome:
        return cls(
            index=call.index,
            status=call.status,
            result=call.result if call.status is Status.SUCCEEDED else None,
            exceptions=tuple(call._exceptions or ()),
            attempts=call.attempts,
            usage=dict(call.usage or {}),
            latency=call.latency,
            started_at=call.started_at,
            finished_at=call.finished_at,
            key=call.key,
            from_store=call.from_store,
            call=call,
            warnings=tuple(call._warnings or ()),
            semantic=call.semantic,
            time_to_first_token=call.time_to_first_token,
        )


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
    _outcomes: list[Outcome] | None

    def __new__(
        cls,
        results: list[Any],
        exceptions: list[list[BaseException]],
        calls: Sequence[Call] = (),
        interrupted: bool = False,
        elapsed: float = 0.0,
    ) -> RunResult:
        self = super().__new__(cls, (results, exceptions))
        self.calls = calls
        self.interrupted = interrupted
        self.elapsed = elapsed
        self.resources = ()
        self.started_at = None
        self.store_failures = 0
        self._outcomes = None
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Without the Calls: they hold the function, often a lambda or a client method.
        outcomes = [dataclasses.replace(o, call=None) for o in self.outcomes]
        return (
            _unpickle,
            (self[0], self[1], outcomes, self.interrupted, self.elapsed, self.store_failures),
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
        from rate_limited.pandas import outcomes_frame

        return outcomes_frame(self.outcomes)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        flag = ", interrupted" if self.interrupted else ""
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
) -> RunResult:
    result = RunResult(results, exceptions, (), interrupted, elapsed)
    result._outcomes = outcomes
    result.store_failures = store_failures
    return result
