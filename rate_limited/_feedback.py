"""Feedback from the provider into the ledger: rate-limit headers, discovered limits.

A provider tells more than 429s: OpenAI's ``x-ratelimit-remaining-tokens`` or Anthropic's
``anthropic-ratelimit-*`` headers say how much was left when it took the request,
counting usage from other processes on the same key, and ``x-ratelimit-limit-*`` says
what the limit is when the user does not know it. A wrapped function that can read them
(the API presets in ``rate_limited.apis``) implements ``FeedbackSource``; the Runner then
hands it a ``LedgerControl`` before its first run.

A header describes the provider's bucket when it took *that* request, so a report names
the request's admission: ``control.admission()``, called from inside the wrapped function
(the engine sets it for each attempt, in the coroutine's context or the worker thread),
and the ledger compares the header with what it believed then (``Ledger.reconcile``).

``LedgerControl`` is thread-safe: a sync function calls it from a pool thread, an async
one from the loop; every change is applied on the engine's loop thread, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rate_limited.exceptions import ConfigurationError, UnknownResourceError

if TYPE_CHECKING:
    from rate_limited.ledgers.base import Ledger, Reservation

__all__ = ["CURRENT_ADMISSION", "FeedbackSource", "LedgerControl"]

logger = logging.getLogger("rate_limited")

#: The reservation of the attempt running in this context (set by the engine).
CURRENT_ADMISSION: ContextVar[Reservation | None] = ContextVar(
    "rate_limited_admission", default=None
)


@runtime_checkable
class FeedbackSource(Protocol):
    """A wrapped function that reports what the provider says about its limits."""

    def attach_ledger(self, control: LedgerControl) -> None: ...


class LedgerControl:
    """What a FeedbackSource may tell the Runner's ledger (safe from any thread)."""

    def __init__(
        self,
        ledger: Ledger[Any],
        loop: asyncio.AbstractEventLoop,
        *,
        wake: Callable[[], None],
        pause_until: Callable[[float], None],
    ) -> None:
        """Reports go to ``ledger`` on ``loop``'s thread; ``wake()`` lets waiting admission
        look again after a change, ``pause_until(when)`` starts a cool-down."""
        self._ledger = ledger
        self._loop = loop
        self._wake = wake
        self._pause_until = pause_until
        ledger.expect_reports()

    @property
    def closed(self) -> bool:
        """True once the Runner's loop is closed: reports would go nowhere."""
        return self._loop.is_closed()

    @property
    def resource_names(self) -> list[str]:
        return list(self._ledger.names)

    def quota(self, resource: str, partition: Hashable = None) -> float:
        """The quota the ledger currently enforces for ``resource`` (and ``partition``)."""
        return self._ledger.quota(resource, partition)

    @staticmethod
    def admission() -> Reservation | None:
        """The admission of the attempt calling this (None outside the Runner's calls)."""
        return CURRENT_ADMISSION.get()

    def set_quota(self, resource: str, quota: float, partition: Hashable = None) -> None:
        """Enforce ``quota`` for ``resource`` (``partition``'s key, if partitioned) from now
        on, e.g. a limit read from the headers."""
        if not quota > 0 or math.isinf(quota):
            raise ConfigurationError(f"quota must be a positive finite number, got {quota!r}")
        self._check(resource)
        self._post(self._set_quota, resource, float(quota), partition)

    def report_remaining(
        self,
        resource: str,
        remaining: float,
        *,
        partition: Hashable = None,
        admission: Reservation | None = None,
        precision: float = 0.0,
        refused: bool = False,
    ) -> None:
        """The provider says ``remaining`` (± ``precision``: Anthropic rounds token counts
        to the thousand) of ``resource`` was left when it took the request of
        ``admission`` (without counting it, if it ``refused`` it: a 429). A ledger that
        believed in more room bills the difference (``Ledger.reconcile``). A report on an
        unknown admission (None: a call from outside this Runner) tells it nothing."""
        self._check(resource)
        report = functools.partial(
            self._ledger.reconcile,
            resource,
            float(remaining),
            partition=partition,
            admission=admission,
            precision=precision,
            refused=refused,
        )
        self._post(self._reconcile, report)

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (a cool-down), on top of any 429 Retry-After."""
        self._post(self._pause, max(0.0, float(seconds)))

    def _check(self, resource: str) -> None:
        """A clear error now, not later on the loop."""
        if resource not in self._ledger.names:
            raise UnknownResourceError(
                f"no resource named {resource!r}; the Runner has {list(self._ledger.names)}"
            )

    # -- on the loop thread ------------------------------------------------------------------
    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            try:
                callback(*args)
            except Exception:  # never fail the call that reported: it was paid for
                logger.exception("Could not apply the provider's report to the ledger")
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: the runner is gone
                self._loop.call_soon_threadsafe(callback, *args)

    def _set_quota(self, resource: str, quota: float, partition: Hashable) -> None:
        self._ledger.set_quota(resource, quota, partition)
        self._wake()

    def _reconcile(self, report: Callable[[float], float]) -> None:
        """Apply a ``report_remaining``: ``Ledger.reconcile`` with its arguments, at the
        loop's time."""
        report(self._loop.time())
        self._wake()  # a switch of settle rule may have freed room

    def _pause(self, seconds: float) -> None:
        self._pause_until(self._loop.time() + seconds)
