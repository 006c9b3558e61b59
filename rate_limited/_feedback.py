"""Feedback from the provider into the ledger: rate-limit headers, discovered limits.

A provider tells more than 429s: OpenAI's ``x-ratelimit-remaining-tokens`` or Anthropic's
``anthropic-ratelimit-*`` headers say how much is left *now*, counting usage from other
processes on the same key, and ``x-ratelimit-limit-*`` says what the limit is when the
user does not know it. A wrapped function that can read them (the API presets in
``rate_limited.apis``) implements ``FeedbackSource``; the Runner then hands it a
``LedgerControl`` before its first run.

``LedgerControl`` is thread-safe: a sync function calls it from a pool thread, an async
one from the loop; every change is applied on the engine's loop thread, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rate_limited._ledger import BucketMeter

if TYPE_CHECKING:
    from rate_limited._engine import Engine

__all__ = ["FeedbackSource", "LedgerControl"]


@runtime_checkable
class FeedbackSource(Protocol):
    """A wrapped function that reports what the provider says about its limits."""

    def attach_ledger(self, control: LedgerControl) -> None: ...


class LedgerControl:
    """What a FeedbackSource may tell the Runner's ledger (safe from any thread)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop: asyncio.AbstractEventLoop = engine.loop

    @property
    def closed(self) -> bool:
        """True once the Runner's loop is closed: reports would go nowhere."""
        return self._loop.is_closed()

    @property
    def resource_names(self) -> list[str]:
        return list(self._engine.ledger.names)

    def quota(self, resource: str) -> float:
        """The quota the ledger currently enforces for ``resource``."""
        return self._engine.ledger.meters[self._index(resource)].quota

    def set_quota(self, resource: str, quota: float) -> None:
        """Enforce ``quota`` for ``resource`` from now on (e.g. a limit read from headers)."""
        if not quota > 0 or math.isinf(quota):
            raise ValueError(f"quota must be a positive finite number, got {quota!r}")
        self._post(self._set_quota, self._index(resource), float(quota))

    def report_remaining(self, resource: str, remaining: float) -> None:
        """The provider says ``remaining`` units of ``resource`` are left now.

        If the ledger believes more is available, the difference is billed as usage from
        elsewhere (another process on the same key), so admission slows down to match.
        Never the other way round: a ledger more careful than the provider stays so.
        """
        # May be negative: a 429's headers count without the refused request, which the
        # ledger releases right after.
        self._post(self._report_remaining, self._index(resource), float(remaining))

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (a cool-down), on top of any 429 Retry-After."""
        self._post(self._pause, max(0.0, float(seconds)))

    # -- on the loop thread ------------------------------------------------------------------
    def _index(self, resource: str) -> int:
        try:
            return self._engine.ledger.names.index(resource)
        except ValueError:
            raise KeyError(
                f"no resource named {resource!r}; the Runner has {self._engine.ledger.names}"
            ) from None

    def _post(self, callback: object, *args: object) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            callback(*args)  # type: ignore[operator]
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: the runner is gone
                self._loop.call_soon_threadsafe(callback, *args)  # type: ignore[arg-type]

    def _set_quota(self, index: int, quota: float) -> None:
        meter = self._engine.ledger.meters[index]
        meter.quota = quota
        if isinstance(meter, BucketMeter):
            meter._rate = quota / meter.window
        self._engine.wake()

    def _report_remaining(self, index: int, remaining: float) -> None:
        meter = self._engine.ledger.meters[index]
        now = self._loop.time()
        believed = meter.available(now)
        if believed > remaining:
            meter.bill(believed - remaining, now)

    def _pause(self, seconds: float) -> None:
        self._engine.pause_until(self._loop.time() + seconds)
