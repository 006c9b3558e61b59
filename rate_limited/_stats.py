"""What a run reports while it goes: ``RunStats``, and the ``Progress`` displays it feeds.

This module sits below the engine and the displays alike, so that a display (the tqdm
bar, the log lines, the notebook dashboard, a user's own ``Progress``) depends on the
counters it shows, never on the scheduler that keeps them.

``RunStats`` holds the counters the engine's state transitions change (calls finished,
retries, 429s, cool-downs, waits); what is live elsewhere (calls in flight, the ledger's
usage, the clock) it reads through a ``StatsSource``, which the engine implements.
Everything is read and written on the engine's loop thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rate_limited.semantic._match import SemanticStats

__all__ = ["Progress", "RunStats", "StatsSource"]


class StatsSource(Protocol):
    """The live figures of a run that ``RunStats`` reads rather than counts."""

    def time(self) -> float:
        """The engine's clock (loop time)."""
        ...

    @property
    def running_calls(self) -> int: ...

    @property
    def backing_off(self) -> int: ...

    @property
    def store_failures(self) -> int: ...

    @property
    def paused_until(self) -> float: ...

    @property
    def semantic_stats(self) -> SemanticStats | None: ...

    def usage(self, now: float) -> dict[str, tuple[float, float, float]]: ...

    @property
    def cost_total(self) -> float | None:
        """USD of every response priced so far (None: the calls are not priced)."""
        ...


class RunStats:
    """Counters of the current run, read by progress displays (on the loop thread)."""

    __slots__ = (
        "_cost_at_start",
        "_source",
        "binding",
        "cooldowns",
        "failed",
        "first_token_total",
        "first_tokens",
        "long_waits",
        "rate_limited",
        "retries",
        "started_at",
        "succeeded",
        "total",
        "waiting_until",
    )

    def __init__(
        self,
        total: int,
        done: int,
        failed: int,
        now: float,
        source: StatsSource | None = None,
    ) -> None:
        self._source = source
        self.total = total  #: calls in this run
        self.succeeded = done  #: calls that ended with a value
        self.failed = failed  #: calls that ended failed
        self.retries = 0  #: failed attempts that were retried
        self.rate_limited = 0  #: attempts answered 429
        self.cooldowns = 0  #: times admission paused for a Retry-After
        self.long_waits = 0  #: waits for quota longer than long_wait_warning_seconds
        self.waiting_until: float | None = None  #: admission waits for quota until then
        self.binding: str | None = None  #: the resource it waits for
        self.started_at = now
        self._cost_at_start = None if source is None else source.cost_total
        self.first_tokens = 0  #: streamed attempts that got a first chunk
        self.first_token_total = 0.0  #: their seconds to it, summed

    @property
    def time_to_first_token(self) -> float | None:
        """Mean seconds from sending to the first chunk of streamed attempts (None: none)."""
        if not self.first_tokens:
            return None
        return self.first_token_total / self.first_tokens

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> int:
        """Attempts running now."""
        return 0 if self._source is None else self._source.running_calls

    @property
    def backing_off(self) -> int:
        """Calls waiting out a backoff before their next attempt."""
        return 0 if self._source is None else self._source.backing_off

    @property
    def now(self) -> float:
        """The engine's clock (loop time)."""
        return self.started_at if self._source is None else self._source.time()

    @property
    def elapsed(self) -> float:
        return self.now - self.started_at

    @property
    def store_failures(self) -> int:
        """Finished calls whose outcome could not be written to the store, in this run."""
        return 0 if self._source is None else self._source.store_failures

    @property
    def paused_until(self) -> float | None:
        """End of a cool-down after HTTP 429 (loop time), if one is going on."""
        if self._source is None:
            return None
        until = self._source.paused_until
        return until if until > self.now else None

    @property
    def semantic(self) -> SemanticStats | None:
        """The semantic cache's hits in this run and the usage they saved (None: no cache)."""
        return None if self._source is None else self._source.semantic_stats

    @property
    def cost(self) -> float | None:
        """USD the responses of this run cost so far (None: the calls are not priced)."""
        total = None if self._source is None else self._source.cost_total
        if total is None or self._cost_at_start is None:
            return None
        return total - self._cost_at_start

    def usage(self) -> dict[str, tuple[float, float, float]]:
        """``{resource: (used, reserved, quota)}`` now."""
        return {} if self._source is None else self._source.usage(self.now)


@runtime_checkable
class Progress(Protocol):
    """What the engine reports to; every method is called on the engine's loop thread."""

    def start(self, stats: RunStats) -> None: ...

    def update(self, stats: RunStats) -> None: ...

    def waiting(self, stats: RunStats, seconds: float, resource: str | None) -> None: ...

    def finish(self, stats: RunStats, interrupted: bool) -> None: ...
