"""``Outcome``: how one call ended (or where it is), a frozen view read from its Call.

Its own module, below ``outcomes`` (``RunResult``), so that what reads outcomes (the
plot, the DataFrame) does not depend on what returns them. ``rate_limited.outcomes``
re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rate_limited._status import Status

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.semantic._match import SemanticMatch

__all__ = ["Outcome"]


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
    #: USD its attempts cost, from the usage their responses reported (None: the Runner
    #: does not price its calls, or a response could not be priced; 0 for an outcome
    #: from the store: nothing was paid for it now).
    cost: float | None = None
    #: The ``model`` argument of its last attempt (with ``escalate=``, the model that
    #: answered); None if the call has none.
    model: str | None = None
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
            exceptions=tuple(call.exception_history),
            attempts=call.attempts,
            usage=call.usage_copy(),
            latency=call.latency,
            started_at=call.started_at,
            finished_at=call.finished_at,
            key=call.key,
            from_store=call.from_store,
            call=call,
            warnings=tuple(call.warning_history),
            semantic=call.semantic,
            cost=call.cost,
            model=_model(call),
            time_to_first_token=call.time_to_first_token,
        )


def _model(call: Call) -> str | None:
    model = call.kwargs.get("model")
    return model if isinstance(model, str) else None
