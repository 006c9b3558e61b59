"""Token buckets with continuous refill: the MockProvider's rate-limit arithmetic.

OpenAI and Anthropic both document their per-minute limits as buckets that hold at most
the limit and refill continuously at ``limit / 60`` per second (not as fixed windows that
reset each minute). Anthropic: "your capacity is continuously replenished up to your
maximum limit, rather than being reset at fixed intervals": a full bucket gains nothing
while idle, so a bucket is made full on first use and starts to refill when the first
request takes from it, on its arrival (the ledger's ``refill_delay`` estimates how long
after admission that is). This module is that arithmetic and nothing else, written
independently of the package's ledger so the mock can catch the ledger lying. Time comes
from an injected ``now()`` so it is tested as pure code, without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Admission", "TokenBucket", "admit"]

#: Slack (in tokens) forgiven at admission, so a client that waits exactly the computed
#: time is not refused by float rounding.
EPSILON = 1e-6


class TokenBucket:
    """A bucket of ``limit`` units refilled at ``limit / window`` units per second.

    It starts full. ``level`` may go negative only when a limit is lowered below what is
    already in use (``set_limit``); it then refills from below zero.
    """

    __slots__ = ("_capacity", "_level", "_now", "_rate", "_stamp", "_window", "name")

    def __init__(
        self,
        limit: float,
        *,
        window: float = 60.0,
        now: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        if limit <= 0 or window <= 0:
            raise ValueError(f"limit and window must be positive, got {limit} and {window}")
        #: What the bucket limits, e.g. "openai.tokens"; shown in errors and statistics.
        self.name = name
        self._now = now
        self._window = float(window)
        self._capacity = float(limit)
        self._rate = self._capacity / self._window
        self._level = self._capacity
        self._stamp = now()

    @property
    def capacity(self) -> float:
        """The limit: the most the bucket holds."""
        return self._capacity

    @property
    def rate(self) -> float:
        """Refill speed in units per second."""
        return self._rate

    def _refill(self) -> None:
        now = self._now()
        if now > self._stamp:
            self._level = min(self._capacity, self._level + (now - self._stamp) * self._rate)
            self._stamp = now

    def available(self) -> float:
        """Units that could be taken now."""
        self._refill()
        return self._level

    def used(self) -> float:
        """Units in use now: ``capacity - available()``."""
        return self._capacity - self.available()

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` fits: 0 if it fits now, ``inf`` if it never can."""
        if amount > self._capacity + EPSILON:
            return math.inf
        missing = amount - self.available()
        return 0.0 if missing <= EPSILON else missing / self._rate

    def time_to_full(self) -> float:
        """Seconds until the bucket is full again (what OpenAI calls the reset time)."""
        return max(0.0, self._capacity - self.available()) / self._rate

    def consume(self, amount: float) -> None:
        """Take ``amount`` unconditionally (callers check ``wait_time`` first)."""
        self._refill()
        self._level -= amount

    def try_consume(self, amount: float) -> bool:
        """Take ``amount`` if it fits now; say whether it did."""
        if self.wait_time(amount) > 0.0:
            return False
        self.consume(amount)
        return True

    def refund(self, amount: float) -> None:
        """Give back ``amount`` (e.g. output tokens reserved but not generated)."""
        self._refill()
        self._level = min(self._capacity, self._level + amount)

    def fill(self) -> None:
        """Make the bucket full, as if it had been idle for a whole window."""
        self._refill()
        self._level = self._capacity

    def set_limit(self, limit: float) -> None:
        """Change the limit, keeping what is in use (the level may drop below zero)."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        in_use = self.used()
        self._capacity = float(limit)
        self._rate = self._capacity / self._window
        self._level = self._capacity - in_use


@dataclass(frozen=True)
class Admission:
    """The outcome of ``admit``: admitted, or how long to wait and which bucket is short."""

    admitted: bool
    #: Seconds until the whole demand would fit (0 when admitted; ``inf`` if it never can).
    wait: float = 0.0
    #: The bucket that needs the longest wait, when refused.
    blocking: TokenBucket | None = None


def admit(demands: Sequence[tuple[TokenBucket, float]]) -> Admission:
    """Take every ``(bucket, amount)`` at once if all fit now, else take nothing."""
    wait = 0.0
    blocking: TokenBucket | None = None
    for bucket, amount in demands:
        bucket_wait = bucket.wait_time(amount)
        if bucket_wait > wait:
            wait, blocking = bucket_wait, bucket
    if blocking is not None:
        return Admission(False, wait, blocking)
    for bucket, amount in demands:
        bucket.consume(amount)
    return Admission(True)
