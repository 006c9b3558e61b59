"""rate_limited: push many calls through slow, rate-limited APIs as fast as quotas allow.

::

    from rate_limited import Runner, Resource

    runner = Runner(call_api, [Resource("requests", quota=100, time_window_seconds=60,
                                        arguments_usage_extractor=lambda call: 1)])
    for prompt in prompts:
        runner.schedule(prompt)
    results, exceptions = runner.run()
"""

from __future__ import annotations

import logging

from rate_limited._clock import Clock, MonotonicClock
from rate_limited._policy import (
    Backoff,
    RetryIf,
    constant_backoff,
    exponential_backoff,
    retry_if_exception_type,
    retry_if_status,
    retry_if_transient,
)
from rate_limited._redact import get_logger as _get_logger
from rate_limited._stats import RunStats
from rate_limited.budget import Budget, BudgetStop
from rate_limited.calls import Call
from rate_limited.cost import Price
from rate_limited.exceptions import (
    ArgumentTypeError,
    BatchRequestError,
    BlockingCallWarning,
    BudgetExhaustedError,
    BudgetWarning,
    CallError,
    CallTimeoutError,
    ConfigurationError,
    LedgerUnavailableError,
    LedgerWarning,
    PermanentError,
    PriceWarning,
    QuotaExceededError,
    RateLimitedError,
    RateLimitedTooLongError,
    RateLimitedWarning,
    ReentrantRunError,
    RunnerBusyError,
    RunnerClosedError,
    SemanticCacheWarning,
    StoreCorruptedError,
    StoreError,
    StoreIntegrityError,
    StoreSerializationError,
    StoreUnavailableError,
    StoreVersionError,
    StoreWarning,
    StreamBrokenError,
    UnknownResourceError,
    UnknownStoreError,
    UsageExtractionError,
    UsageWarning,
    ValidationError,
)
from rate_limited.handle import RunHandle
from rate_limited.outcomes import Outcome, RunResult, Status
from rate_limited.progress import LogProgress, Progress, TqdmProgress
from rate_limited.resources import Resource
from rate_limited.runner import Runner, RunnerState

__version__ = "0.5.0.dev0"

# A library does not print logs unless the application configures logging; and every
# record of its loggers is redacted (no API key reaches a log).
_get_logger("rate_limited").addHandler(logging.NullHandler())

__all__ = [
    "ArgumentTypeError",
    "Backoff",
    "BatchRequestError",
    "BlockingCallWarning",
    "Budget",
    "BudgetExhaustedError",
    "BudgetStop",
    "BudgetWarning",
    "Call",
    "CallError",
    "CallTimeoutError",
    "Clock",
    "ConfigurationError",
    "LedgerUnavailableError",
    "LedgerWarning",
    "LogProgress",
    "MonotonicClock",
    "Outcome",
    "PermanentError",
    "Price",
    "PriceWarning",
    "Progress",
    "QuotaExceededError",
    "RateLimitedError",
    "RateLimitedTooLongError",
    "RateLimitedWarning",
    "ReentrantRunError",
    "Resource",
    "RetryIf",
    "RunHandle",
    "RunResult",
    "RunStats",
    "Runner",
    "RunnerBusyError",
    "RunnerClosedError",
    "RunnerState",
    "SemanticCacheWarning",
    "Status",
    "StoreCorruptedError",
    "StoreError",
    "StoreIntegrityError",
    "StoreSerializationError",
    "StoreUnavailableError",
    "StoreVersionError",
    "StoreWarning",
    "StreamBrokenError",
    "TqdmProgress",
    "UnknownResourceError",
    "UnknownStoreError",
    "UsageExtractionError",
    "UsageWarning",
    "ValidationError",
    "__version__",
    "constant_backoff",
    "exponential_backoff",
    "retry_if_exception_type",
    "retry_if_status",
    "retry_if_transient",
]


def _name_public_objects() -> None:
    """Public classes and functions say they are ``rate_limited.X`` (in ``help()``, reprs
    and tracebacks), as they are imported, not the private module that defines them.
    Dataclasses keep their module: their string annotations resolve there."""
    import dataclasses
    import inspect

    for name in __all__:
        obj = globals()[name]
        module = getattr(obj, "__module__", "") or ""
        if not module.startswith("rate_limited.") or dataclasses.is_dataclass(obj):
            continue
        if isinstance(obj, type) or inspect.isfunction(obj):
            obj.__module__ = "rate_limited"


_name_public_objects()
