"""Every exception the package raises, in one tree.

Errors a user can cause are raised as early as possible (at ``Resource(...)``,
``Runner(...)`` or ``schedule(...)``) and say what was wrong and what to do instead.
Errors of a single call are not raised: they are recorded in ``exceptions[i]`` of the
``RunResult`` (and in ``outcomes[i]``), one per failed attempt::

    RateLimitedError
    ├── ConfigurationError (ValueError)    bad argument to Resource / Runner / schedule
    │   ├── QuotaExceededError              a call needs more than a whole quota: never runs
    │   ├── ArgumentTypeError (TypeError)   an argument of a type that can't be used
    │   └── UnknownResourceError (KeyError) a resource name the Runner does not have
    ├── RunnerClosedError (RuntimeError)    the Runner was closed; make a new one
    ├── RunnerBusyError (RuntimeError)      run() while a run of that Runner goes on
    ├── ReentrantRunError (RuntimeError)    run() from the function the Runner runs
    ├── LedgerUnavailableError              can't reach a shared (Redis) ledger at Runner()
    ├── StoreError                          a checkpoint store failed (nothing stored is lost)
    │   ├── UnknownStoreError (ValueError)  a store URL with a scheme no backend handles
    │   ├── StoreUnavailableError           can't open or reach it: unwritable path, Redis down
    │   ├── StoreCorruptedError             not a store, or damaged; left untouched
    │   ├── StoreVersionError               written by another schema version; left untouched
    │   ├── StoreIntegrityError             a record's signature does not verify: not loaded
    │   └── StoreSerializationError (TypeError) a result can't be serialized
    ├── CallError                           recorded per attempt, never raised by run()
    │   ├── ValidationError                 a validator rejected the value (retried)
    │   ├── CallTimeoutError (TimeoutError) the attempt ran past ``timeout`` (retried)
    │   ├── StreamBrokenError               a streamed response broke part-way (retried)
    │   ├── BudgetExhaustedError            an online call the budget could not admit
    │   ├── UsageExtractionError            a results usage could not be read (in
    │                                       outcome.warnings: the estimate was billed)
    │   ├── RateLimitedTooLongError         nothing but HTTP 429s for rate_limit_patience s
    │   └── BatchRequestError               a provider's Batch API did not answer one
    │                                       request (errored, expired, cancelled, refused)
    └── PermanentError                      raise it from your function: never retried

Warnings (``UserWarning`` subclasses, emitted in the thread that called ``run()``)::

    RateLimitedWarning (UserWarning)
    ├── StoreWarning          some finished calls could not be stored (count and reason)
    ├── UsageWarning          a results usage could not be read; the estimate was billed
    ├── BlockingCallWarning   an async function blocked the event loop (names the fix)
    ├── PriceWarning          no price is known for a model: its cost is None
    ├── BudgetWarning         the budget stopped a run (spent, limit, calls not started),
    │                         or its spend crossed an ``alert_at`` fraction
    ├── LedgerWarning         the shared (Redis) ledger was lost mid-run: admission paused
    └── SemanticCacheWarning  the semantic cache could not look up or index some calls:
                              they were sent as usual

``BaseException`` is kept as an alias of ``RateLimitedError`` because rate_limited 0.4
exported that name; new code should not use it (it shadows the builtin).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = [
    "ArgumentTypeError",
    "BatchRequestError",
    "BlockingCallWarning",
    "BudgetExhaustedError",
    "BudgetWarning",
    "CallError",
    "CallTimeoutError",
    "ConfigurationError",
    "LedgerUnavailableError",
    "LedgerWarning",
    "PermanentError",
    "PriceWarning",
    "QuotaExceededError",
    "RateLimitedError",
    "RateLimitedTooLongError",
    "RateLimitedWarning",
    "RunnerClosedError",
    "SemanticCacheWarning",
    "StoreCorruptedError",
    "StoreError",
    "StoreIntegrityError",
    "StoreSerializationError",
    "StoreUnavailableError",
    "StoreVersionError",
    "StoreWarning",
    "StreamBrokenError",
    "UnknownResourceError",
    "UnknownStoreError",
    "UsageExtractionError",
    "UsageWarning",
    "ValidationError",
]


class RateLimitedError(Exception):
    """Base of every exception defined by rate_limited."""


#: rate_limited 0.4 name of the base class (shadows the builtin; prefer RateLimitedError).
BaseException = RateLimitedError


class ConfigurationError(RateLimitedError, ValueError):
    """An argument to ``Resource``, ``Runner`` or ``schedule`` is invalid."""


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument is of a type that can't be used (also a ``TypeError``, as before)."""


class UnknownResourceError(ConfigurationError, KeyError):
    """A resource name that the Runner does not have (also a ``KeyError``, as before)."""

    def __str__(self) -> str:  # KeyError's would show the message in quotes
        return str(self.args[0]) if self.args else ""


class QuotaExceededError(ConfigurationError):
    """A call's demand on a resource exceeds the resource's whole quota.

    Such a call could never be admitted, so ``schedule()`` refuses it (a ValueError,
    as in rate_limited 0.4). ``apply()`` checks every row first and raises one error
    naming all the rows that are too large (``rows``), having scheduled nothing.
    """

    def __init__(
        self,
        message: str,
        *,
        resource: str,
        needed: float,
        quota: float,
        rows: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        #: ``apply()``: index labels of every row that is too large (``df.drop(index=rows)``).
        self.rows = rows
        #: Name of the resource whose quota is too small.
        self.resource = resource
        #: What the call needs of it (arguments usage plus results estimate).
        self.needed = needed
        #: The resource's quota.
        self.quota = quota


class RunnerClosedError(RateLimitedError, RuntimeError):
    """The Runner was closed (``close()`` or a ``with`` block ended)."""


class RunnerBusyError(RateLimitedError, RuntimeError):
    """``run()`` / ``start()`` while a run of the same Runner has not ended."""


class ReentrantRunError(RateLimitedError, RuntimeError):
    """``run()`` from inside the Runner's own loop (from the function it runs)."""


class LedgerUnavailableError(RateLimitedError):
    """A shared ledger (``ledger="redis://..."``) can't be reached or used when the Runner
    is made; the message names the URL (password hidden) and what to check."""


class StoreError(RateLimitedError):
    """Base of every error a store raises (also raised for using a closed store)."""


class UnknownStoreError(StoreError, ValueError):
    """The store URL has a scheme no backend handles."""


class StoreUnavailableError(StoreError):
    """The store can't be opened or reached: unwritable path, Redis not running..."""


class StoreCorruptedError(StoreError):
    """The file is not a store (or is damaged), or a record can't be decoded."""


class StoreVersionError(StoreError):
    """The store was written with another schema version; it is left as it is."""


class StoreIntegrityError(StoreError):
    """A record's signature does not verify: it was not written with this store's secret."""


class StoreSerializationError(StoreError, TypeError):
    """A result can't be serialized, so it can't be stored."""


class CallError(RateLimitedError):
    """A failure of one attempt of one call; recorded, not raised, by ``run()``."""


class CallLike(Protocol):
    """A ``rate_limited.Call``, as far as errors name one (this module imports nothing of
    the package: every other module imports it)."""

    @property
    def index(self) -> int: ...

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> Mapping[str, Any]: ...


class ValidationError(CallError):
    """A validator rejected the value an attempt returned; the call is retried.

    ``call`` is the Call and ``value`` the rejected value, kept for inspection.
    """

    def __init__(self, message: str, call: CallLike | None, value: Any, *args: Any) -> None:
        super().__init__(message, *args)
        self.call = call
        self.value = value


class CallTimeoutError(CallError, TimeoutError):
    """An attempt took longer than the Runner's ``timeout``; the call is retried."""


class BudgetExhaustedError(CallError):
    """An online call (``Runner.call()``) that the Runner's ``Budget`` could not admit: it
    was not sent. (A batch stops at the budget with its calls pending instead.)"""


class StreamBrokenError(CallError):
    """A streamed response (``stream=True`` in a preset) broke part-way; the call is
    retried as a whole. ``partial_result`` is what had arrived, with the usage known so
    far: the Runner bills that instead of the call's whole estimate."""

    def __init__(self, message: str, *args: Any, partial_result: Any = None) -> None:
        super().__init__(message, *args)
        self.partial_result = partial_result


class UsageExtractionError(CallError):
    """A ``results_usage_extractor`` raised or returned something that is not a usage
    (not a number, negative, infinite or NaN).

    The call's result is kept (it was paid for) and the resource is billed the call's
    estimate instead. The error goes in ``outcome.warnings`` (not ``exceptions``: the
    call did not fail), and a ``UsageWarning`` says how many calls it concerned.
    """


class RateLimitedTooLongError(CallError):
    """The provider answered nothing but HTTP 429 for ``rate_limit_patience`` seconds, so
    the run gave up on the calls still waiting (a 429 alone never fails a call)."""


class BatchRequestError(CallError):
    """A provider's Batch API did not answer one request of a batch.

    ``code`` says why, in the provider's words where it gives one: an HTTP status of the
    request's own answer (``"400"``, ``"500"``), ``"batch_expired"`` (the 24 h window
    passed), ``"batch_cancelled"``, or the code of a batch that failed validation (e.g.
    ``"token_limit_exceeded"``). ``batch_id`` names the batch; ``retryable`` says whether
    sending the request again may succeed (an expiry or a 5xx may, a 400 will not).
    """

    def __init__(
        self, message: str, *, code: str, batch_id: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.batch_id = batch_id
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_batch_request_error, (str(self), self.code, self.batch_id, self.retryable))


def _batch_request_error(
    message: str, code: str, batch_id: str | None, retryable: bool
) -> BatchRequestError:
    return BatchRequestError(message, code=code, batch_id=batch_id, retryable=retryable)


class PermanentError(RateLimitedError):
    """Raise this (or a subclass) from the wrapped function to stop retrying a call."""


class RateLimitedWarning(UserWarning):
    """Base of every warning rate_limited issues."""


class StoreWarning(RateLimitedWarning):
    """Some finished calls could not be written to the store (an unpicklable result, a
    full disk, Redis gone): they succeeded in memory, but a later process would call the
    API again for them. ``RunResult.store_failures`` has the count."""


class UsageWarning(RateLimitedWarning):
    """A ``results_usage_extractor`` failed or gave an impossible usage; the estimate was
    billed instead (see ``outcome.warnings``)."""


class BlockingCallWarning(RateLimitedWarning):
    """An async function blocked the event loop (a sync call inside ``async def``), so
    the calls ran one at a time; the message names the fix."""


class SemanticCacheWarning(RateLimitedWarning):
    """The semantic cache could not embed, search or index some calls; those calls were
    sent (or stored) as usual, never answered without a lookup."""


class LedgerWarning(RateLimitedWarning):
    """The shared (Redis) ledger could not be reached during a run: nothing was admitted
    until it came back, and what finished meanwhile was billed to it once it did."""


class PriceWarning(RateLimitedWarning):
    """No price is known for a model (or no batch price): the cost of its calls is None.

    Issued once per model per price table; pass the model's price with ``prices=``.
    """


class BudgetWarning(RateLimitedWarning):
    """A ``Budget`` could not admit the next call, so the run stopped with the rest
    pending (the message says what was spent, the limit and how many calls did not
    start; ``RunResult.budget`` has the same), or the spend crossed one of the budget's
    ``alert_at`` fractions. Raise the budget (``budget.usd = ...``) and ``run()`` again
    to go on."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the user's line: the first frame outside the package
    (``run()``, ``close()``...), however deep inside it the warning is decided."""
    # stacklevel=1 is this function, 2 its caller (``frame``), and so on.
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)
