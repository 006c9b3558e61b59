"""What ``schedule()`` works out for a call before any run: its demand on the resources,
and its store key.

A call's *demand* is computed once, here, from its arguments: per resource, its arguments
usage, its results estimate and its partition key (``rate_limited.ledgers.base.Demand``).
A call that needs more than a whole quota can never run: ``QuotaExceededError`` at
``schedule()``, naming the resource. An extractor that raises or returns something that is
not a usage is a ``ConfigurationError`` naming the resource and the extractor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from numbers import Real
from typing import Any

from rate_limited._redact import describe
from rate_limited.calls import Call
from rate_limited.exceptions import ConfigurationError, QuotaExceededError
from rate_limited.resources import Resource

__all__ = ["Extractors", "demand_of", "key_of"]

#: Per resource: the resource, its arguments usage extractor, its results estimator.
Extractors = Sequence[
    tuple[Resource, Callable[[Call], float] | None, Callable[[Call], float] | None]
]


def demand_of(extractors: Extractors, call: Call) -> tuple[tuple[float, float, Hashable], ...]:
    """``call``'s demand: per resource (arguments usage, results estimate, partition key)."""
    demand = []
    for resource, args_extractor, estimator in extractors:
        name = resource.name
        args_usage = _usage(args_extractor, call, name, "arguments_usage_extractor")
        estimate = _usage(estimator, call, name, "max_results_usage_estimator")
        if resource.partition is None:
            key: Hashable = None
            quota: float = resource.quota
        else:
            key = _partition(resource, call)
            quota = resource.quota_for(key)
        needed = args_usage + estimate
        if needed > quota * (1 + 1e-9):  # the ledger's rounding slack
            raise QuotaExceededError(
                f"Call {call!r} exceeds resource quota of {name!r}: it needs {needed:g} "
                f"but the whole quota is {quota:g}, so it could never run. Raise the "
                "quota, lower the call's usage (e.g. max_tokens) or split the call.",
                resource=name,
                needed=needed,
                quota=quota,
            )
        demand.append((args_usage, estimate, key))
    return tuple(demand)


def key_of(key: Callable[[Call], str] | None, function: Callable[..., Any], call: Call) -> str:
    """``call``'s store key: ``key(call)`` if given, else a hash of the function and its
    arguments by value (``rate_limited._keys``)."""
    if key is not None:
        try:
            value = key(call)
        except Exception as exc:
            raise ConfigurationError(f"key= raised {describe(exc, call)} for {call!r}.") from exc
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"key= must return a non-empty str, got {value!r} for {call!r}."
            )
        return value
    from rate_limited._keys import call_key

    return call_key(function, call.args, call.kwargs)


def _partition(resource: Resource, call: Call) -> Hashable:
    """The partition key of ``call`` for ``resource`` (a clear error if it cannot be one)."""
    assert resource.partition is not None
    try:
        key: Hashable = resource.partition(call)
        hash(key)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"partition of resource {resource.name!r} raised {type(exc).__name__}: {exc} for "
            f"{call!r}; it must return a hashable key (e.g. the model's name)."
        ) from exc
    return key


def _usage(
    extractor: Callable[[Call], float] | None, call: Call, resource: str, what: str
) -> float:
    if extractor is None:
        return 0.0
    try:
        value = extractor(call)
    except ConfigurationError:
        raise  # already says what is wrong (e.g. a preset's RequestTooLargeError)
    except Exception as exc:
        raise ConfigurationError(
            f"{what} of resource {resource!r} raised {describe(exc, call)} for "
            f"{call!r}. Check the arguments passed to schedule() (the extractor reads them "
            "with call.get_argument(name))."
        ) from exc
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < math.inf:
        raise ConfigurationError(
            f"{what} of resource {resource!r} returned {value!r} for {call!r}; "
            "usage must be a finite, non-negative number."
        )
    return float(value)
