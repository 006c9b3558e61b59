"""Admission: the head call against the cool-down, the priorities, the ledger and the
budget.

``_admit`` takes the head call if it may start now (the cool-down is over, no engine of
a higher priority waits for the same quota, the ledger reserves its demand and the
budget its maximum cost), else arms the wake-up for when it will fit and returns None.
A call of another partition key may pass a head that waits (``Admission.pass_head``);
a call that can never fit (its quota was lowered below its needs) fails; a budget that
cannot admit the head call with nothing running stops the run (``budget_stopped``).
A long wait is said once a run (a warning, then INFO), with what it waits for. The
usual case (nothing but the ledger to ask: no work sharing, no second engine, no
budget) is tried first in one step, without the general path's checks; whatever it
cannot admit at once goes the general way.

The dispatcher and the workers that call ``_admit`` are the layers above:
``rate_limited._threads.Threads`` and ``rate_limited._workers.Workers``.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import TYPE_CHECKING

from rate_limited._core import EngineParts
from rate_limited._redact import get_logger
from rate_limited._settling import Settling
from rate_limited._status import FAILED
from rate_limited.exceptions import QuotaExceededError

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Reservation

__all__ = ["Admitter"]

logger = get_logger("rate_limited")


class Admitter(Settling):
    """Admission of the head call (loop thread)."""

    def __init__(self, parts: EngineParts) -> None:
        super().__init__(parts)
        self.long_wait_seconds = parts.config.long_wait_warning_seconds
        self._warned_wait = False
        #: Whether an admission holds the arguments usage until the call starts (the
        #: workers of a sync function set it: a thread may start the call later).
        self._defer_billing = False

    def _admit(self) -> Call | None:
        """Take the head call if it may start now, else arm the wake-up and return None.
        The caller starts the call's attempt (``_start_attempt``) before it awaits."""
        admission = self.admission
        if (
            self._has_ledger
            and self.claims is None
            and self.priorities is None
            and self.spend is None
            and not self._stopping
            and self._in_flight < self.max_concurrent
        ):
            # The usual case first: nothing but the ledger to ask (no work sharing, no
            # other engine, no budget). Any other outcome takes the general path below.
            call = admission.simple_head()
            if call is not None:
                now = self.clock()
                reservation = None
                try:
                    if now >= admission.paused_until:
                        reservation = (
                            self.ledger.try_reserve(call.demand, now, defer=True)
                            if self._defer_billing
                            else self.billing.per_call.try_reserve(call.demand, now)
                        )
                finally:
                    if reservation is None:  # it waits (or the ledger raised): the head again
                        admission.put_back(call)
                if reservation is not None:
                    call.reservation = reservation
                    if self.stats.waiting_until is not None:
                        self._note_wait(None, None, now)
                    return call
        return self._admit_general()

    def _admit_general(self) -> Call | None:
        """``_admit`` without its first branch: every case (work sharing, priorities, the
        budget, lanes, waiting). ``Workers._work_fast``, which tries the usual case itself,
        comes here when that did not admit the head call."""
        admission = self.admission
        while True:
            if self._stopping or self._in_flight >= self.max_concurrent:
                return None
            if self.budget_stopped is not None:
                if self._in_flight <= 0:  # the last call running has settled: the end
                    self._resolve_done()
                    admission.wake()
                return None
            call = admission.head()
            if call is None:
                return None
            if self.claims is not None and not self.claims.take(call):
                admission.pop_head(call)  # another worker sends it (or sent it)
                continue
            if not self._has_ledger and admission.paused_until == -math.inf:
                break
            now = self.clock()
            if now < admission.paused_until:
                admission.arm_timer(admission.paused_until)
                self._note_wait(admission.paused_until, "cool-down after HTTP 429", now)
                return None
            if not self._has_ledger:
                break
            priorities = self.priorities
            if priorities is not None and priorities.outranked(self, call):
                return None  # its engine wakes this one when that call is admitted or gone
            reservation = (
                self.ledger.try_reserve(call.demand, now, defer=True)
                if self._defer_billing
                else self.billing.per_call.try_reserve(call.demand, now)  # see Ledger.per_call
            )
            if (
                reservation is not None
                and self.spend is not None
                and not self._spend_admits(call, reservation, now)
            ):
                if self._budget_waits(call, now):
                    return None
                continue  # stopped at the budget
            if reservation is not None:
                call.reservation = reservation
                if self.stats.waiting_until is not None:
                    self._note_wait(None, None, now)
                if priorities is not None:
                    priorities.admitted(self)
                break
            if priorities is not None:
                priorities.waiting(self, call)
            when = self.ledger.next_free_time(call.demand, now)
            if (
                when == math.inf
                and self._in_flight <= 0
                and (priorities is None or not priorities.others_in_flight(self))
            ):
                self._never_fits(call, now)  # a quota lowered below the call's needs
                continue  # and look at the next call
            if admission.has_lanes:
                passing, lane_when = admission.pass_head(
                    call,
                    self.ledger,
                    now,
                    defer=self._defer_billing,
                    accept=self._spend_admits,
                    claim=None if self.claims is None else self.claims.take,
                    outranked=None if priorities is None else partial(priorities.outranked, self),
                )
                if passing is not None:
                    return passing
                when = min(when, lane_when)
            if when < math.inf:
                admission.arm_timer(max(when, now + 1e-9 * max(1.0, now)))
            self._note_wait(when, self.ledger.binding(call.demand, now), now)
            return None
        admission.pop_head(call)
        return call

    # -- the budget (rate_limited._spend) -------------------------------------------------------
    def _spend_admits(self, call: Call, reservation: Reservation, now: float) -> bool:
        """The ledger admitted ``call``: reserve its maximum cost on the budget too, or
        undo the ledger's admission and return False."""
        spend = self.spend
        if spend is None or spend.reserve(call, now):
            return True
        self.ledger.release(reservation, now)
        return False

    def _budget_waits(self, call: Call, now: float) -> bool:
        """The budget can't admit the head call now. While calls run, their settlement
        frees what they reserved above their cost: wait for it. A rolling budget that
        frees enough within its ``wait_seconds`` is waited for too. Otherwise the run
        stops here, the rest pending (returns False; ``_admit`` then ends the run)."""
        assert self.spend is not None and self.spend.budget is not None
        if self._in_flight > 0:
            self._note_wait(math.inf, "budget", now)
            return True
        wait = self.spend.frees_in(call, now)
        if wait <= self.spend.budget.wait_seconds:
            self.admission.arm_timer(now + max(wait, 1e-6))
            self._note_wait(now + wait, "budget", now)
            return True
        self.budget_stopped = call
        return False

    @property
    def _budget_done(self) -> bool:
        """Stopped at the budget, and nothing runs any more: the run is over."""
        return self.budget_stopped is not None and self._in_flight <= 0

    def _never_fits(self, call: Call, now: float) -> None:
        """The head call needs more than a whole quota (lowered since it was scheduled,
        e.g. by limits read from the provider's headers): it can never run, so it fails
        instead of waiting for ever."""
        name, needed, quota = self.ledger.shortfall(call.demand, now) or ("?", 0.0, 0.0)
        error = QuotaExceededError(
            f"Call {call!r} exceeds resource quota of {name!r}: it needs {needed:g} but the "
            f"whole quota is now {quota:g}, so it could never run.",
            resource=name,
            needed=needed,
            quota=quota,
        )
        self.admission.pop_head(call)
        call.exceptions.append(error)
        self._finish(call, FAILED, now, running=False)

    def _note_wait(self, until: float | None, binding: str | None, now: float) -> None:
        stats = self.stats
        stats.waiting_until, stats.binding = until, binding
        if until is None:
            self._warned_wait = False
            return
        long_wait = self.long_wait_seconds
        if long_wait is not None and until - now >= long_wait and not self._warned_wait:
            self._warned_wait = True
            seconds = (
                "until a running call settles" if until == math.inf else (f"{until - now:.1f} s")
            )
            # A warning the first time in a run (it explains a slow run), INFO afterwards.
            level = logging.INFO if stats.long_waits else logging.WARNING
            stats.long_waits += 1
            logger.log(level, "All calls are waiting for %s: %s", binding or "capacity", seconds)
            if self.progress is not None:
                self._report(self.progress.waiting, stats, until - now, binding)
