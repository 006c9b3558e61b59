"""Settling an attempt: what its end proves, billed, validated, retried or final.

``Settling`` is the engine's layer between the state machine (``EngineCore``, which owns
every counter and status change) and admission (``rate_limited._admitting``). When an
attempt returns (``_returned``) it is billed (``Billing``) and its value validated; when
it raises (``_failed``) the failure is classified (``_policy``) and the attempt is billed
by what the error proves (a 429: refused; an error that proves nothing was sent:
released; otherwise kept), then retried after its backoff, escalated to the next rung,
or the call ends. A 429 pauses admission for everyone until its ``Retry-After``
(cool-down) and does not count against ``max_retries``; only ``rate_limit_patience``
seconds of nothing but 429s end the run (``RateLimitedTooLongError``). ``_settle``
guards every settle step: if one raises, the call fails instead of the run hanging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rate_limited._core import EngineCore
from rate_limited._policy import (
    backoff_exponent,
    clear_frames,
    errors_counted,
    is_rate_limited,
    out_of_patience,
    proves_not_billed,
    retry_after_seconds,
    validate,
)
from rate_limited._redact import describe, get_logger, redact, secret_values
from rate_limited._status import FAILED, RUNNING, SUCCEEDED
from rate_limited.exceptions import StreamBrokenError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from rate_limited.calls import Call

__all__ = ["Settling"]

logger = get_logger("rate_limited")


class Settling(EngineCore):
    """An attempt's end settled: billed, validated, retried or final (loop thread)."""

    def _settle(
        self, settle: Callable[[Call, Any, float], None], call: Call, value: Any, now: float
    ) -> None:
        """Run a settle step; if anything in it raises, the call fails instead of the run
        hanging (a worker that died would leave its call RUNNING for ever)."""
        try:
            settle(call, value, now)
        except BaseException as exc:  # SystemExit from a validator too: the call fails
            self._settle_failed(call, exc, now)

    def _settle_failed(self, call: Call, exc: BaseException, now: float) -> None:
        """A settle step of ``call`` raised ``exc``: the call fails (see ``_settle``)."""
        logger.exception("Internal error while settling %r; the call is marked failed", call)
        if call.status.is_final:
            return
        call.exceptions.append(exc)
        self._finish(call, FAILED, now, running=call.status is RUNNING, save=False)

    def _returned(self, call: Call, value: Any, now: float) -> None:
        if self._has_ledger:  # self._bill(call, value, now), one call less per call
            first_token = self.billing.results(call, value, now)
            if first_token is not None:
                self._first_token(first_token)
        if self.validators:
            message, cause = validate(value, self.validators)
            if message:
                if cause is not None:
                    message += (
                        " (a validator that raises has a bug, which a retry can't fix: the "
                        "call fails without retrying; the value is in error.value)"
                    )
                error = ValidationError(redact(message, secret_values(call)), call, value)
                error.__cause__ = cause
                self._failed(call, error, now, settled=True, final=cause is not None)
                return
        call.result = value
        self._finish(call, SUCCEEDED, now)

    def _validated(self, call: Call, value: Any, now: float) -> None:
        """``_returned`` for a value the validators have already accepted."""
        if self._has_ledger:
            self._bill(call, value, now)
        call.result = value
        self._finish(call, SUCCEEDED, now)

    def _bill(self, call: Call, value: Any, now: float) -> None:
        """Bill the results usage of ``value``; count its time to first token, if any."""
        first_token = self.billing.results(call, value, now)
        if first_token is not None:
            self._first_token(first_token)

    def _first_token(self, seconds: float) -> None:
        """A streamed response's first token came ``seconds`` after it was sent."""
        self.stats.first_tokens += 1
        self.stats.first_token_total += seconds

    def _failed(
        self,
        call: Call,
        exc: BaseException,
        now: float,
        settled: bool = False,
        final: bool = False,
    ) -> None:
        refused = is_rate_limited(exc)
        if not settled and self._has_ledger:
            if refused:
                self.billing.refuse(call, now)
            elif proves_not_billed(exc):
                self.billing.release(call, now)
            elif isinstance(exc, StreamBrokenError) and exc.partial_result is not None:
                self._bill(call, exc.partial_result, now)  # what the broken stream used
            else:
                self.billing.keep(call, now)
        clear_frames(exc)
        call.exceptions.append(exc)
        if refused:
            self.stats.rate_limited += 1
            pause = retry_after_seconds(exc)
            if pause is not None and self.admission.pause(now + pause):
                self.stats.cooldowns += 1
                logger.info("HTTP 429: pausing every call for %.2f s (Retry-After)", pause)
        else:
            self._answered += 1
        retry = not final and isinstance(exc, Exception) and self._retry_if(call, exc)
        retries_left = errors_counted(call.exception_history) <= self.config.max_retries
        escalated = (
            not refused
            and not final
            and self.escalate is not None
            and retries_left  # there is a next attempt
            and self.escalate(call, exc)  # and it runs on the next rung
        )
        if escalated:
            retry = True
        if retry and not refused:  # 429s do not use up retries: the provider refused
            retry = retries_left
        if retry and refused and self._out_of_patience(now):
            self._give_up(call, now)
            return
        if not retry:
            logger.debug("%r failed for good: %s", call, describe(exc, call))
            self._finish(call, FAILED, now)
            return
        # Escalated: another model answers next, there is nothing to back off from.
        delay = 0.0 if escalated else self._backoff(call, exc)
        logger.debug("%r failed (%s); retry in %.2f s", call, describe(exc, call), delay)
        self._back_off(call, delay, now)

    def _retry_if(self, call: Call, exc: BaseException) -> bool:
        try:
            return bool(self.config.retry_if(exc))
        except Exception:
            logger.exception("retry_if raised for %r; not retrying", call)
            return False

    def _backoff(self, call: Call, exc: BaseException) -> float:
        """Seconds before retrying ``call``, which just failed with ``exc`` (the backoff
        at ``backoff_exponent``)."""
        try:
            return float(self.config.backoff(backoff_exponent(call.exception_history, exc), exc))
        except Exception:
            logger.exception("backoff raised for %r; retrying at once", call)
            return 0.0

    def _out_of_patience(self, now: float) -> bool:
        """Whether the attempts ending since ``rate_limit_patience`` s ago were all 429s."""
        if self._gave_up is not None:
            return True
        answers = self.stats.succeeded + self._answered
        if answers != self._answers_seen:
            self._answers_seen = answers
            self._streak_since = now  # something was answered since the last 429
        patience = self.config.rate_limit_patience
        return patience is not None and now - self._streak_since >= patience

    def _give_up(self, call: Call, now: float) -> None:
        """Nothing but 429s for ``rate_limit_patience`` s: ``call`` and every call still
        waiting fail with ``RateLimitedTooLongError`` (calls in flight end as they do)."""
        if self._gave_up is None:
            self._gave_up = out_of_patience(self.config.rate_limit_patience or 0.0)
            logger.warning("%s", self._gave_up)
        waiting = [c for c in self.admission.clear() if c is not call]
        call.exceptions.append(self._gave_up)
        self._finish(call, FAILED, now)
        for waiter in dict.fromkeys(waiting):
            waiter.exceptions.append(self._gave_up)
            self._finish(waiter, FAILED, now, running=False)
