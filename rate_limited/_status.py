"""Where a call is (``Status``) and where a Runner is (``RunnerState``).

Their own module, near the bottom of the package, because calls, outcomes, the engine,
the Runner and the pandas integration all speak of them (``rate_limited.outcomes``
re-exports ``Status``, where code and the docs import it from).
"""

from __future__ import annotations

import enum

from rate_limited.exceptions import RunnerBusyError, RunnerClosedError

__all__ = ["CANCELLED", "FAILED", "PENDING", "RUNNING", "SUCCEEDED", "RunnerState", "Status"]


class Status(str, enum.Enum):
    """Where a call is. Only SUCCEEDED and FAILED are final; a rerun resumes the rest."""

    PENDING = "pending"  #: not started yet, or waiting to be retried
    RUNNING = "running"  #: an attempt is in flight
    SUCCEEDED = "succeeded"  #: returned a valid value (None is a value)
    FAILED = "failed"  #: failed permanently or used up its retries
    CANCELLED = "cancelled"  #: its attempt was cancelled by an interrupt; rerun resumes it

    @property
    def is_final(self) -> bool:
        return self is SUCCEEDED or self is FAILED  # the module constants: see below


#: The members as module constants, for hot paths: on Python 3.11 ``Status.SUCCEEDED`` is
#: an unspecialized lookup on the enum class (~1,000 instructions; ``is_final`` was 3x
#: slower with two of them).
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    Status.PENDING,
    Status.RUNNING,
    Status.SUCCEEDED,
    Status.FAILED,
    Status.CANCELLED,
)


class RunnerState(enum.Enum):
    """Where a Runner is: ``IDLE`` (calls may be scheduled and run), ``RUNNING`` (a run has
    not ended: ``run()`` / ``start()`` raise ``RunnerBusyError``; calls scheduled join it),
    ``CLOSED`` (scheduling and running raise ``RunnerClosedError``).

    Running from inside the Runner's own loop (from the function it runs) raises
    ``ReentrantRunError`` whatever the state."""

    IDLE = "idle"
    RUNNING = "running"
    CLOSED = "closed"

    def check_can_start(self) -> None:
        """Raise the error for starting a run in this state (none when ``IDLE``)."""
        if self is RunnerState.CLOSED:
            raise RunnerClosedError("This Runner was closed; create a new Runner to run.")
        if self is RunnerState.RUNNING:
            raise RunnerBusyError(
                "This Runner is already running (a run() or start() has not ended); wait "
                "for it, or stop it with handle.stop()."
            )
