"""Escalation: the quality-cost ladder. A cheap model first; a stronger one when it fails.

``Runner(..., escalate=[{"model": "gpt-4o-mini"}, {"model": "gpt-4o"}])`` (or
``chat.runner(escalate=...)``): every call's first attempt runs with the first rung's
overrides of its keyword arguments; after a failed validation, or an error that is
permanent for that model (an HTTP 400, 403, 404, 413 or 422: a prompt too long for its
context, a model the key can't use, a request larger than a whole quota), the next
attempt runs with the next rung's. Transient errors (timeouts, 5xx, 429) retry on the same
rung. Past the last rung, attempts stay on it and the usual retry rules apply; every
attempt counts against ``max_retries``.

Each attempt is billed as the call it is: its quotas' usage (and their partition, so each
model's own limits) and its maximum cost are computed again for the new arguments, so
the ledger and the budget see each attempt at its own model and price. The outcome says
which model answered (``Outcome.model``, the ``model`` column of ``to_pandas()``).

A call's store key is that of the arguments as scheduled, with the ladder: a result
stored by a run with another ladder is not taken for this one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._policy import http_status
from rate_limited._redact import describe, get_logger
from rate_limited.exceptions import ConfigurationError, PermanentError, ValidationError

if TYPE_CHECKING:
    from rate_limited._spend import CallSpend
    from rate_limited.calls import Call

__all__ = ["Ladder", "scheduled_kwargs"]

logger = get_logger("rate_limited")

#: HTTP statuses that another model may not give: the request is wrong *for this model*.
_MODEL_STATUSES = frozenset({400, 403, 404, 413, 422})


def _permanent_for_model(exc: BaseException) -> bool:
    if isinstance(exc, ValidationError):
        return exc.__cause__ is None  # a validator that raised has a bug: not the model's
    from rate_limited.apis.common import RequestTooLargeError

    if isinstance(exc, RequestTooLargeError | PermanentError):
        return True
    return http_status(exc) in _MODEL_STATUSES


class Ladder:
    """The rungs of ``escalate=``: keyword-argument overrides, one per attempt."""

    __slots__ = ("rungs",)

    def __init__(self, rungs: Sequence[Mapping[str, Any]]) -> None:
        if isinstance(rungs, Mapping | str) or not isinstance(rungs, Sequence) or not rungs:
            raise ConfigurationError(
                "escalate must be a list of keyword-argument overrides, one per rung, e.g. "
                f'[{{"model": "gpt-4o-mini"}}, {{"model": "gpt-4o"}}]; got {rungs!r}.'
            )
        checked = []
        for index, rung in enumerate(rungs):
            if not isinstance(rung, Mapping) or not all(isinstance(k, str) for k in rung):
                raise ConfigurationError(
                    f"escalate[{index}] must be a dict of keyword arguments, got {rung!r}."
                )
            checked.append(dict(rung))
        self.rungs: tuple[dict[str, Any], ...] = tuple(checked)

    def first(self, call: Call, spend: CallSpend) -> None:
        """At schedule(): the call's arguments become the first rung's."""
        spend.base_kwargs = dict(call.kwargs)
        spend.rung = 0
        call.kwargs = {**spend.base_kwargs, **self.rungs[0]}

    def key_extra(self) -> dict[str, Any]:
        """What the ladder adds to a call's store key."""
        return {"__rate_limited_escalate__": [sorted(r.items()) for r in self.rungs]}

    def escalate(self, call: Call, exc: BaseException, reprice: Callable[[Call], None]) -> bool:
        """After the failed attempt ``exc``: move the call to the next rung if the
        failure is one another model may not have. True if it moved."""
        from rate_limited._spend import spend_of

        spend = spend_of(call)
        if spend is None or spend.base_kwargs is None or spend.rung + 1 >= len(self.rungs):
            return False
        if not _permanent_for_model(exc):
            return False
        before, rung = call.kwargs, spend.rung
        spend.rung += 1
        call.kwargs = {**spend.base_kwargs, **self.rungs[spend.rung]}
        try:
            reprice(call)  # its quotas' usage and maximum cost at the new rung
        except Exception as error:
            call.kwargs, spend.rung = before, rung
            logger.warning(
                "%r can't escalate to %r: %s", call, self.rungs[rung + 1], describe(error, call)
            )
            return False
        logger.debug("%r escalates to %r after %s", call, self.rungs[spend.rung], describe(exc))
        return True

    def __repr__(self) -> str:
        return f"Ladder({list(self.rungs)!r})"


def scheduled_kwargs(call: Call) -> dict[str, Any]:
    """The keyword arguments the call was scheduled with (before any rung's overrides)."""
    from rate_limited._spend import spend_of

    spend = spend_of(call)
    if spend is not None and spend.base_kwargs is not None:
        return dict(spend.base_kwargs)
    return dict(call.kwargs)
