"""How one attempt's usage is billed on the ledger, whichever ledger it is.

The engine admits a call with a reservation (``Ledger.try_reserve``); when the attempt
ends, ``Billing`` hands the reservation back by what the ending proves:

* ``results``: it returned. The arguments usage stays billed; the results estimate is
  replaced by the actual results usage, read by each resource's extractor (or, if the
  extractor fails or gives a usage that is not a finite, non-negative number, the
  estimate is billed and a ``UsageExtractionError`` goes in the call's warnings, the
  result kept). A late result, whose reservation was settled already, is billed anew;
* ``keep``: it failed in a way that may have been billed (a timeout, a 500): the
  estimate stays used;
* ``release``: it proved it was not billed (never sent);
* ``refuse``: HTTP 429, the provider had less room than the ledger believed.

Each also records on the call (``call.usage``) what it was billed per resource, and
tells the Runner's ``SpendControl`` (``rate_limited._spend``), if it has one, the same
about money: the cost of a result, the maximum kept, the budget's hold released.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from rate_limited._redact import describe, get_logger
from rate_limited.exceptions import UsageExtractionError

if TYPE_CHECKING:
    from rate_limited._spend import SpendControl
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Ledger, Reservation
    from rate_limited.resources import Resource

__all__ = ["Billing", "reservation_of"]

logger = get_logger("rate_limited")

_INF = math.inf


def reservation_of(call: Call) -> Reservation | None:
    """The reservation ``call``'s current attempt holds, if any."""
    return cast("Reservation | None", call.reservation)


class Billing:
    """Settles attempts' reservations on ``ledger`` for ``resources`` (loop thread)."""

    def __init__(
        self, ledger: Ledger[Any], resources: Sequence[Resource], spend: SpendControl | None = None
    ) -> None:
        self.ledger = ledger
        #: The ledger's ``try_reserve`` and ``settle`` for the per-call path (asked once).
        self.per_call = ledger.per_call()
        self._settle = self.per_call.settle
        self.spend = spend
        self.resources = list(resources)
        self.names = tuple(r.name for r in self.resources)
        #: Constant for the run: the resources that have a results extractor, and a
        #: results usage of 0 for each resource (copied per call, then filled in).
        self._extracting = [
            (i, r.results_usage_extractor)
            for i, r in enumerate(self.resources)
            if r.results_usage_extractor is not None
        ]
        self._zeros = [0.0] * len(self.resources)
        #: Calls whose results usage could not be read since the last report, and the first.
        self.usage_problems = 0
        self.usage_problem: str | None = None

    def begin(self, call: Call, started: float) -> None:
        """A sync call's thread started it at ``started``: bill what admission held."""
        reservation = reservation_of(call)
        if reservation is not None:
            self.ledger.begin(reservation, started)

    def results(self, call: Call, value: Any, now: float) -> float | None:
        """The attempt returned ``value``: bill its actual results usage. Returns its time
        to first token, for a streamed response (``rate_limited.apis._stream``)."""
        reservation = call.reservation
        call.reservation = None
        first_token = None
        if reservation is not None:
            first_token = reservation.first_token  # type: ignore[attr-defined]
            if first_token is not None:
                call.time_to_first_token = first_token
        actual = self._zeros.copy()
        for i, extractor in self._extracting:
            try:
                amount = float(extractor(call, value))
            except BaseException as exc:
                amount = self._unreadable(call, i, exc)
            else:
                if not 0 <= amount < _INF:  # NaN and inf too: a meter must stay finite
                    amount = self._unreadable(
                        call,
                        i,
                        ValueError(f"usage must be a finite, non-negative number, got {amount}"),
                    )
            actual[i] = amount
        if self.spend is not None:
            self.spend.settle(call, value, now)
        if reservation is not None:
            # By each resource's rule; the arguments usage included.
            call.add_usage(self.names, self._settle(reservation, actual, now))
        else:  # a late result whose reservation was already settled: bill what it used
            self.ledger.bill(call.demand, actual, now)
        return first_token

    def _unreadable(self, call: Call, i: int, exc: BaseException) -> float:
        """Resource ``i``'s extractor failed on a result (``exc``): the estimate is billed
        instead, and the call is warned (``UsageExtractionError``)."""
        estimate = call.demand[i][1]
        error = UsageExtractionError(
            f"results_usage_extractor of resource {self.names[i]!r} failed "
            f"({describe(exc, call)}); billed the estimate {estimate:g} instead"
        )
        error.__cause__ = exc
        if not call.warning_history:
            self.usage_problems += 1
            self.usage_problem = self.usage_problem or str(error)
        call.warnings.append(error)
        logger.warning("%s for %r", error, call)
        return estimate

    def keep(self, call: Call, now: float) -> None:
        """It may have been billed: its estimate stays used."""
        if self.spend is not None:
            self.spend.keep(call, now)
        reservation = reservation_of(call)
        if reservation is not None:
            self.ledger.keep(reservation, now)
            call.add_usage(self.names, [need[0] + need[1] for need in call.demand])
        call.reservation = None

    def release(self, call: Call, now: float) -> None:
        """It was not billed: undo its admission."""
        reservation = reservation_of(call)
        if reservation is not None:
            self.ledger.release(reservation, now)
        if self.spend is not None:
            self.spend.release(call)
        call.reservation = None

    def refuse(self, call: Call, now: float) -> None:
        """HTTP 429: the request was not billed, and the ledger believed in room the
        provider did not have: release it and correct the ledger (``Ledger.refused``)."""
        reservation = reservation_of(call)
        if reservation is not None:
            self.ledger.refused(reservation, now)
        if self.spend is not None:
            self.spend.release(call)
        call.reservation = None

    def take_problems(self) -> str | None:
        """The warning text for the usages that could not be read since the last call."""
        if not self.usage_problems:
            return None
        text = (
            f"{self.usage_problems} call(s) returned a result whose usage could not "
            "be read; their estimates were billed instead and their results kept "
            f"(see outcome.warnings). The first: {self.usage_problem}"
        )
        self.usage_problems, self.usage_problem = 0, None
        return text
