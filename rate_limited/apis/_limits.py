"""``LimitTracker``: what a preset knows of the provider's limits, and tells the ledgers.

The Runner hands a preset a ``LedgerControl`` (``rate_limited._feedback``); the tracker
keeps those and turns rate-limit headers into ledger updates:

* **shared keys**: ``remaining`` is what is left at the provider, counting other users of
  the key. The headers describe the bucket when the provider admitted the request, some
  time after it was sent: the tracker credits the refill since then, assuming admission
  came ``admission_delay`` after sending (erring long only makes the ledger lag the
  provider by a constant, which costs no throughput; erring short causes 429s), and
  reports it. A ledger that believed in more room bills the difference.
* **a 429** leaves the refused request out of its headers, while the ledger still holds
  its reservation (the engine releases it right after): its report subtracts what the
  request holds, so that after the release the ledger matches the provider.
* **unknown limits** (None when the preset was made) are read from ``limit`` headers.
  Until the first answer the ledger enforces a provisional quota that lets one call
  through (a probe; each probe failing without headers lets one more through), so the
  first requests never storm. A limit the provider does not report does not exist. A
  limit the user gave that the provider reports lower is lowered.
* **calls larger than a limit**: once a limit is known, ``note_demand`` refuses them at
  ``schedule()``; one scheduled before is let through (the quota never goes below the
  largest demand seen, or it would wait forever) and the provider refuses it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rate_limited.apis._headers import Family, read_limits
from rate_limited.exceptions import QuotaExceededError

if TYPE_CHECKING:
    from rate_limited._feedback import LedgerControl
    from rate_limited.resources import Resource

__all__ = ["MINUTE", "UNKNOWN_QUOTA", "LimitTracker"]

logger = logging.getLogger("rate_limited")

#: Seconds in the window of every per-minute limit.
MINUTE = 60.0
#: The declared quota of a limit not known yet (so ``schedule()`` accepts any call), and
#: the quota of a limit the provider does not have.
UNKNOWN_QUOTA = 1e15


class LimitTracker:
    """Limits of one preset: given, discovered, and fed back to every attached ledger."""

    def __init__(
        self,
        owner: str,
        family: Family,
        limit_kinds: tuple[tuple[str, str], ...],
        given: Mapping[str, float | None],
        admission_delay: float,
    ) -> None:
        self._owner = owner
        self._family: Family = family
        #: ``(resource name, header kind)`` of each limit.
        self.limit_kinds = limit_kinds
        self._kind_of = dict(limit_kinds)
        self._given = dict(given)
        self._admission_delay = admission_delay
        self._in_force = {k: float(v) for k, v in given.items() if v is not None}
        self._max_demand: dict[str, float] = {}  # resource name -> largest call demand
        self._probes = 0
        self._controls: list[LedgerControl] = []
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        #: Where time comes from (``time.monotonic``; replaced in tests).
        self.clock: Callable[[], float] = time.monotonic
        #: The preset's declared Resources by name: a limit read from the headers becomes
        #: their quota too, so ``preset.resources`` (and plots of a run) show it.
        self.declared: dict[str, Resource] = {}

    @property
    def limits(self) -> dict[str, float | None]:
        """Limits per minute in force, by resource name (None: not known yet)."""
        return {name: self._in_force.get(kind) for name, kind in self.limit_kinds}

    # -- ledgers -----------------------------------------------------------------------------
    def attach(self, control: LedgerControl) -> None:
        """A Runner's ledger: give it the quotas the Resources could not declare."""
        with self._lock:
            self._controls = [c for c in self._controls if not _closed(c)]
            self._controls.append(control)
            updates = []
            for name, kind in self.limit_kinds:
                limit = self._in_force.get(kind)
                if limit is None:
                    updates.append((name, self._provisional(name, kind)))
                elif self._given.get(kind) != limit:
                    updates.append((name, self._quota_for(name, limit)))
        for name, quota in updates:
            control.set_quota(name, quota)

    def warn_if_unattached(self) -> None:
        """Limits to discover are not enforced when no Runner attached the preset."""
        if self._controls or "unattached" in self._warned:
            return
        unknown = [n for n, k in self.limit_kinds if self._given.get(k) is None]
        if unknown:
            self._warned.add("unattached")
            logger.warning(
                "%s is called outside a Runner that runs it directly, so the limits it "
                "should discover (%s) are not enforced; use Runner(preset, "
                "preset.resources) or give the limits.",
                self._owner,
                ", ".join(unknown),
            )

    def note_demand(self, name: str, demand: float) -> None:
        """A call is scheduled needing ``demand`` of the limit ``name``."""
        kind = self._kind_of[name]
        limit = self._in_force.get(kind)
        if limit is not None and demand > limit:
            raise QuotaExceededError(
                f"the call needs {demand:g} of {name} but the provider's limit is {limit:g} "
                "per minute, so it could never run; lower its max_tokens or split it.",
                resource=name,
                needed=demand,
                quota=limit,
            )
        if demand <= self._max_demand.get(name, 0.0):
            return
        with self._lock:
            if demand <= self._max_demand.get(name, 0.0):
                return
            self._max_demand[name] = demand
            update = self._provisional(name, kind) if kind not in self._in_force else None
            controls = list(self._controls)
        if update is not None:
            for control in controls:
                control.set_quota(name, update)

    def _provisional(self, name: str, kind: str) -> float:
        base = 1.0 if kind == "requests" else max(1.0, self._max_demand.get(name, 1.0))
        return base * (1 + self._probes)

    def _quota_for(self, name: str, limit: float) -> float:
        if math.isinf(limit):
            return UNKNOWN_QUOTA
        largest = self._max_demand.get(name, 0.0)
        if largest > limit:
            logger.warning(
                "A call scheduled before the limits were known needs %g of %s, but the "
                "provider's limit is %g: the ledger lets it through once its bucket is empty "
                "(up to a minute) and the provider refuses it (RequestTooLargeError).",
                largest,
                name,
                limit,
            )
        return max(limit, largest)

    # -- headers -----------------------------------------------------------------------------
    def feedback(
        self,
        headers: Mapping[str, str] | None,
        sent_at: float,
        answered: bool,
        held: Mapping[str, float] | None = None,
    ) -> None:
        """What one response (``answered``) or failed request said, sent at ``sent_at``;
        ``held``: what a refused request holds in the ledger, by kind (see module doc)."""
        readings = read_limits(headers, self._family)
        elapsed = max(0.0, self.clock() - sent_at - self._admission_delay)
        quotas: list[tuple[str, float]] = []
        reports: list[tuple[str, float]] = []
        discovered: list[str] = []
        with self._lock:
            unknown = [(n, k) for n, k in self.limit_kinds if k not in self._in_force]
            if unknown and not readings and not answered:
                self._probes += 1  # a probe failed without telling anything: let one more go
                quotas += [(name, self._provisional(name, kind)) for name, kind in unknown]
            elif unknown:
                for name, kind in unknown:
                    if kind not in readings or readings[kind].limit is None:
                        self._in_force[kind] = math.inf  # described buckets do not include it
                        quotas.append((name, UNKNOWN_QUOTA))
                        discovered.append(f"{name}=unlimited")
            for name, kind in self.limit_kinds:
                reading = readings.get(kind)
                limit = reading.limit if reading is not None else None
                in_force = self._in_force.get(kind)
                if limit is not None and limit > 0 and (in_force is None or limit < in_force):
                    if in_force is not None and not math.isinf(in_force):
                        self._warn_lower(kind, limit, in_force)
                    self._in_force[kind] = in_force = limit
                    quotas.append((name, self._quota_for(name, limit)))
                    if name in self.declared:
                        self.declared[name].quota = int(limit) if limit.is_integer() else limit
                    discovered.append(f"{name}={limit:g}")
                if reading is None or reading.remaining is None or in_force is None:
                    continue
                rate = (limit if limit is not None else in_force) / MINUTE
                if math.isinf(rate):
                    continue
                remaining = reading.remaining + rate * elapsed
                if limit is not None:
                    remaining = min(remaining, limit)
                if held:
                    remaining -= held.get(kind, 0.0)  # may go below 0: see _report
                reports.append((name, remaining))
            controls = list(self._controls)
        if discovered:
            logger.info("Limits read from the response headers: %s", ", ".join(discovered))
            if not readings and answered:
                logger.warning(
                    "%s: the provider sent no rate-limit headers, so the limits not given "
                    "are not enforced; pass them (e.g. requests_per_minute=...).",
                    self._owner,
                )
        for control in controls:
            for name, quota in quotas:
                control.set_quota(name, quota)
            for name, remaining in reports:
                _report(control, name, remaining)

    def _warn_lower(self, kind: str, limit: float, given: float) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(
                "The provider reports a %s limit of %g per minute, lower than the %g given; "
                "using %g.",
                kind,
                limit,
                given,
                limit,
            )


def _report(control: LedgerControl, name: str, remaining: float) -> None:
    """``control.report_remaining``, also for a negative ``remaining`` (a 429 whose
    reservation the ledger is about to release must leave it below zero until then).
    ``LedgerControl.report_remaining`` clamps at 0; until it accepts negative values,
    post the same update unclamped."""
    post = getattr(control, "_post", None)
    update = getattr(control, "_report_remaining", None)
    if remaining >= 0 or post is None or update is None:
        control.report_remaining(name, max(0.0, remaining))
        return
    post(update, control.resource_names.index(name), remaining)


def _closed(control: LedgerControl) -> bool:
    """Whether a control's Runner is gone (its loop closed): no need to keep feeding it."""
    loop = getattr(control, "_loop", None)
    return bool(loop is not None and loop.is_closed())
