"""``Status``: where a call is. Its own module, at the bottom of the package, because calls,
outcomes, the engine and the stores all speak of it (``rate_limited.outcomes`` re-exports
it, where 0.4-era code and the docs import it from)."""

from __future__ import annotations

import enum

__all__ = ["Status"]


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
