"""Retry policy: which errors are retried, how long to back off, and validation.

Policies are small callables, composable the tenacity way, and tested as pure functions:

* a *retry predicate* ``(exception) -> bool`` decides whether a failed attempt is retried;
  ``retry_if_exception_type(...)``, ``retry_if_status(...)`` and the default
  ``retry_if_transient`` combine with ``|``, ``&`` and ``~``;
* a *backoff* ``(failures, exception) -> seconds`` says how long the call waits before its
  next attempt; ``exponential_backoff(...)`` (with full jitter) is the default, and
  ``+`` adds two backoffs.

Any plain function of the same shape works where a policy object does.

Errors are classified from what they carry, without importing any client library: an HTTP
status (``status_code``, ``status``, ``code``, or ``response.status_code``) and
``Retry-After`` headers. 400/401/403/404/422 and other 4xx are permanent; 408, 409, 425,
429, 5xx and errors without a status (connection resets, timeouts) are transient, except a
429 that says the account is out of credit (OpenAI's ``insufficient_quota``: "You
exceeded your current quota, please check your plan and billing details"), which no wait
can fix.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rate_limited.exceptions import (
    ArgumentTypeError,
    PermanentError,
    RateLimitedTooLongError,
    UsageExtractionError,
    ValidationError,
)

__all__ = [
    "Backoff",
    "RetryIf",
    "constant_backoff",
    "exponential_backoff",
    "http_status",
    "is_transient",
    "retry_after_seconds",
    "retry_if_exception_type",
    "retry_if_status",
    "retry_if_transient",
    "validate",
]

_TRANSIENT_4XX = frozenset({408, 409, 425, 429})


# -- reading errors --------------------------------------------------------------------------
def _as_status(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
        return value
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (openai, anthropic, httpx, requests, aiohttp,
    urllib), or None."""
    try:
        return _http_status(exc)
    except Exception:  # a property that raises: no usable status
        return None


def _http_status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status", "http_status", "code"):
        status = _as_status(getattr(exc, attr, None))
        if status is not None:
            return status
    response = getattr(exc, "response", None)
    if response is not None:
        for attr in ("status_code", "status"):
            status = _as_status(getattr(response, attr, None))
            if status is not None:
                return status
    return None


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    for holder in (getattr(exc, "response", None), exc):
        headers = getattr(holder, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            return headers  # type: ignore[no-any-return]
    return None


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` / ``retry-after``), or None."""
    headers = _headers(exc)
    if headers is None:
        return None
    try:
        millis = _header(headers, "retry-after-ms")
        if millis is not None:
            return _finite_seconds(float(millis) / 1000.0)
        value = _header(headers, "retry-after")
        if value is None:
            return None
        try:
            return _finite_seconds(float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(str(value))
            return _finite_seconds(parsed.timestamp() - time.time())
    except Exception:  # garbage, exotic containers: as if there were no header
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # a plain dict is case-sensitive
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return value


def _finite_seconds(seconds: float) -> float | None:
    return max(0.0, seconds) if math.isfinite(seconds) else None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` can help: not a PermanentError, not a permanent 4xx."""
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TypeError) and _raised_by_the_call_itself(exc):
        return False  # the arguments do not fit the function: every attempt would fail
    status = http_status(exc)
    if status is None or status < 400:
        return True  # no status, or a non-error one (e.g. a 200 with a malformed body)
    if status == 429 and _out_of_credit(exc):
        return False
    return status in _TRANSIENT_4XX or status >= 500


def _out_of_credit(exc: BaseException) -> bool:
    """A 429 about billing, not rate: OpenAI's ``insufficient_quota`` error code."""
    try:
        code = getattr(exc, "code", None)
        if code is None:
            body = getattr(exc, "body", None)
            error = body.get("error", body) if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
        return code == "insufficient_quota"
    except Exception:  # exotic exception objects: as if it said nothing
        return False


def _raised_by_the_call_itself(exc: BaseException) -> bool:
    # A TypeError from binding the arguments has no frame below the engine's call site.
    tb = exc.__traceback__
    return tb is not None and tb.tb_next is None


def proves_not_billed(exc: BaseException) -> bool:
    """The request certainly did not count against the provider's quota."""
    return http_status(exc) == 429 or isinstance(exc, ConnectionRefusedError)


def is_rate_limited(exc: BaseException) -> bool:
    """The provider said we are over its limit (HTTP 429)."""
    return http_status(exc) == 429


# -- retry predicates ------------------------------------------------------------------------
class RetryIf:
    """A retry predicate; combine with ``|`` (either), ``&`` (both) and ``~`` (not).

    As in tenacity, the operators take any predicate on either side
    (``(lambda e: ...) | retry_if_transient`` too) and flatten: ``a | b | c`` is one
    predicate over three parts, not a nest of pairs."""

    __slots__ = ("_kind", "_parts", "_predicate", "_text")

    def __init__(
        self,
        predicate: Callable[[BaseException], bool],
        text: str,
        *,
        kind: str = "",
        parts: tuple[Callable[[BaseException], bool], ...] = (),
    ) -> None:
        self._predicate = predicate
        self._text = text
        self._kind = kind  # "any" or "all" for a combination of ``parts``
        self._parts = parts

    def __call__(self, exc: BaseException) -> bool:
        return bool(self._predicate(exc))

    def __or__(self, other: Callable[[BaseException], bool]) -> RetryIf:
        return _combine("any", self, other) if callable(other) else NotImplemented

    def __ror__(self, other: Callable[[BaseException], bool]) -> RetryIf:
        return _combine("any", other, self) if callable(other) else NotImplemented

    def __and__(self, other: Callable[[BaseException], bool]) -> RetryIf:
        return _combine("all", self, other) if callable(other) else NotImplemented

    def __rand__(self, other: Callable[[BaseException], bool]) -> RetryIf:
        return _combine("all", other, self) if callable(other) else NotImplemented

    def __invert__(self) -> RetryIf:
        return RetryIf(lambda e: not self(e), f"~{self}")

    def __repr__(self) -> str:
        return self._text


def _combine(kind: str, *predicates: Callable[[BaseException], bool]) -> RetryIf:
    """``any`` / ``all`` of ``predicates``, the parts of same-kind combinations inlined."""
    parts: list[Callable[[BaseException], bool]] = []
    for predicate in predicates:
        if isinstance(predicate, RetryIf) and predicate._kind == kind:
            parts.extend(predicate._parts)
        else:
            parts.append(predicate)
    found = tuple(parts)
    text = "(" + (" | " if kind == "any" else " & ").join(map(repr, found)) + ")"
    if kind == "any":
        return RetryIf(lambda e: any(p(e) for p in found), text, kind=kind, parts=found)
    return RetryIf(lambda e: all(p(e) for p in found), text, kind=kind, parts=found)


#: The default: retry everything except permanent errors (see the module docstring).
retry_if_transient = RetryIf(is_transient, "retry_if_transient")


def retry_if_exception_type(*types: type[BaseException]) -> RetryIf:
    """Retry only exceptions of these types."""
    names = ", ".join(t.__name__ for t in types)
    return RetryIf(lambda e: isinstance(e, types), f"retry_if_exception_type({names})")


def retry_if_status(*statuses: int) -> RetryIf:
    """Retry only errors carrying one of these HTTP statuses."""
    wanted = frozenset(statuses)
    return RetryIf(lambda e: http_status(e) in wanted, f"retry_if_status{tuple(statuses)}")


# -- backoff ---------------------------------------------------------------------------------
class Backoff:
    """``(failures, exception) -> seconds`` to wait before the next attempt.

    ``+`` adds waits (``exponential_backoff() + constant_backoff(1)``), with any wait
    function or a number of seconds on either side, flattened (``a + b + c`` is one sum
    of three parts), so ``sum([...])`` works too."""

    __slots__ = ("_function", "_parts", "_text")

    def __init__(
        self,
        function: Callable[[int, BaseException | None], float],
        text: str,
        *,
        parts: tuple[Callable[[int, BaseException | None], float], ...] = (),
    ):
        self._function = function
        self._text = text
        self._parts = parts  # the waits of a sum

    def __call__(self, failures: int, exc: BaseException | None = None) -> float:
        return max(0.0, float(self._function(failures, exc)))

    def __add__(self, other: Callable[[int, BaseException | None], float] | float) -> Backoff:
        return _sum(self, other)

    def __radd__(self, other: Callable[[int, BaseException | None], float] | float) -> Backoff:
        if isinstance(other, int | float) and other == 0:
            return self  # sum([...]) starts from 0
        return _sum(other, self)

    def __repr__(self) -> str:
        return self._text


def _sum(*waits: Callable[[int, BaseException | None], float] | float) -> Backoff:
    parts: list[Callable[[int, BaseException | None], float]] = []
    for wait in waits:
        if isinstance(wait, Backoff) and wait._parts:
            parts.extend(wait._parts)
        elif callable(wait):
            parts.append(wait)
        elif isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
            parts.append(constant_backoff(float(wait)))
        else:
            raise ArgumentTypeError(
                f"a backoff adds wait functions (failures, exception) -> seconds or a number "
                f"of seconds >= 0, not {wait!r}"
            )
    found = tuple(parts)
    text = " + ".join(map(repr, found))
    return Backoff(lambda n, e: sum(float(p(n, e)) for p in found), text, parts=found)


def exponential_backoff(
    initial: float = 0.25,
    maximum: float = 8.0,
    multiplier: float = 2.0,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> Backoff:
    """``initial * multiplier**(failures-1)`` capped at ``maximum``; with ``jitter``, a
    uniform draw in [0, that] ("full jitter"), so that many calls failing together do not
    come back together."""
    bounds = (("initial", initial, 0), ("maximum", maximum, 0), ("multiplier", multiplier, 1))
    for name, value, least in bounds:
        if not isinstance(value, int | float) or not math.isfinite(value) or value < least:
            from rate_limited.exceptions import ConfigurationError

            raise ConfigurationError(
                f"exponential_backoff: {name} must be a finite number >= {least}, got {value!r}."
            )
    draw = (rng or random.Random()).random

    def delay(failures: int, exc: BaseException | None) -> float:
        try:
            ceiling = min(maximum, initial * multiplier ** max(0, failures - 1))
        except OverflowError:  # after ~1000 failures: it is the maximum anyway
            ceiling = maximum
        return ceiling * draw() if jitter else ceiling

    return Backoff(
        delay, f"exponential_backoff({initial}, {maximum}, {multiplier}, jitter={jitter})"
    )


def constant_backoff(seconds: float) -> Backoff:
    """Always wait ``seconds``."""
    return Backoff(lambda n, e: seconds, f"constant_backoff({seconds})")


# -- validation ------------------------------------------------------------------------------
Validator = Callable[[Any], Any]


def normalize_validators(
    validation: Validator | Iterable[Validator] | None,
    validation_function: Validator | None,
) -> tuple[Validator, ...]:
    """Validators from ``validation=`` (one or a list) and 0.4's ``validation_function=``."""
    from rate_limited.exceptions import ConfigurationError

    validators: list[Any] = []
    if validation_function is not None:
        validators.append(validation_function)
    if validation is None:
        pass
    elif callable(validation):
        validators.append(validation)
    elif isinstance(validation, Iterable) and not isinstance(validation, str | bytes):
        validators.extend(validation)
    else:
        validators.append(validation)  # reported below
    for validator in validators:
        if not callable(validator):
            raise ConfigurationError(
                f"validation must be a callable or a list of callables returning True for a "
                f"valid value; got {type(validator).__name__}: {validator!r}."
            )
    return tuple(validators)


def validate(value: Any, validators: tuple[Validator, ...]) -> tuple[str, BaseException | None]:
    """Run the validators in order: ``("", None)`` if all pass, else why the first failed
    (and the exception it raised, if any)."""
    for validator in validators:
        name = getattr(validator, "__qualname__", None) or repr(validator)
        try:
            ok = validator(value)
            valid = bool(ok)  # inside the try: a DataFrame or array has no truth value
        except BaseException as exc:  # SystemExit too: a validator must not end the run
            return f"Validation failed: {name} raised {type(exc).__name__}: {exc}", exc
        if not valid:
            return f"Validation failed: {name} returned {ok!r}", None
    return "", None


# -- what the engine decides after a failure ------------------------------------------------
def errors_counted(history: Iterable[BaseException]) -> int:
    """Failed attempts that count against ``max_retries``: not 429s, nor usage errors."""
    return sum(
        1 for e in history if not isinstance(e, UsageExtractionError) and not is_rate_limited(e)
    )


def backoff_exponent(history: Iterable[BaseException], exc: BaseException) -> int:
    """The attempt number the backoff is given after ``exc`` (the last of ``history``).

    An invalid value waits only the backoff's first step: the API answered, so there is
    nothing to back off from, but the pause lets other ready calls take their turn
    instead of this one taking every free slot. Errors back off exponentially, and the
    exponent counts errors only (invalid values before do not stretch it)."""
    if isinstance(exc, ValidationError):
        return 1
    return sum(1 for e in history if not isinstance(e, ValidationError | UsageExtractionError))


def out_of_patience(patience: float) -> RateLimitedTooLongError:
    """The error of the calls left waiting after ``patience`` s of nothing but 429s."""
    return RateLimitedTooLongError(
        f"the provider answered nothing but HTTP 429 for {patience:g} s (rate_limit_patience), "
        "so the run gave up on the calls still waiting: check the quotas given against the "
        "provider's limits (and whether something else uses the same key), then run() again."
    )


def clear_frames(exc: BaseException) -> None:
    """Keep the exception and its traceback text, drop the frames' local variables."""
    tb = exc.__traceback__
    while tb is not None:
        with contextlib.suppress(RuntimeError):  # a frame still executing
            tb.tb_frame.clear()
        tb = tb.tb_next
