"""Quota declarations: what a call uses of each rate-limited resource, and how it refills.

A ``Resource`` says *what* is limited (``quota`` per ``time_window_seconds``) and *how a
call's usage is counted*:

* ``arguments_usage_extractor(call)``: billed when the call starts (e.g. 1 request);
* ``results_usage_extractor(call, result)``: billed when it returns (e.g. tokens used);
* ``max_results_usage_estimator(call)``: an upper bound of the results usage, held while
  the call is in flight and then replaced by the actual usage.

Refill is ``"window"`` (each usage expires whole after the window; rate_limited 0.4's
model) or ``"bucket"`` (continuous refill at quota/window per second, as OpenAI and
Anthropic do). ``settle`` says what the provider bills for a call: ``"actual"`` (the
estimate is replaced by the actual usage; 0.4's rule) or ``"reserved"`` (the estimate is
billed at admission and never less, as OpenAI counts ``max_tokens``). ``partition`` gives
a call's key (e.g. its model): each key has a quota of its own, as the providers limit
each model separately.

A Resource is a declaration: every Runner keeps its own ledger of what it has used, so one
list of resources can be handed to several runners (each then has the whole quota; give
them separate lists with smaller quotas to split one). For code written against 0.4,
a Resource still works as a standalone usage counter on the monotonic clock
(``add_usage``, ``get_amount_used``, ``is_available`` ...), independent of any Runner.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime, timedelta
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

from rate_limited._meters import BucketMeter, Meter, Settle, WindowMeter, make_meter
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = ["Refill", "Resource", "Settle", "Unit"]

#: Amount of a resource (requests, tokens, dollars ...); ints are fine too.
Unit = float
Refill = Literal["window", "bucket"]

ArgumentsUsageExtractor = Callable[["Call"], float]
ResultsUsageExtractor = Callable[["Call", Any], float]
PartitionKey = Callable[["Call"], Hashable]


def _positive_finite(value: object, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(
            f"Resource {name!r}: {what} must be a positive number, got {value!r} "
            f"({type(value).__name__})."
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not number > 0 or math.isinf(number):
        raise ConfigurationError(
            f"Resource {name!r}: {what} must be a positive, finite number, got {value!r}."
        )
    return number


def _optional_callable(value: object, what: str, name: str, *parameters: str) -> None:
    """``value`` must be None or a callable taking ``parameters`` (checked now, when its
    signature can be read: a wrong arity would otherwise fail, or bill 0, at every call)."""
    if value is None:
        return
    if not callable(value):
        raise ConfigurationError(
            f"Resource {name!r}: {what} must be a callable or None, got "
            f"{type(value).__name__}: {value!r}."
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # a builtin without a signature: can't tell
        return
    try:
        signature.bind(*parameters)
    except TypeError:
        shown = getattr(value, "__qualname__", None) or type(value).__name__
        wanted = ", ".join(parameters)
        raise ConfigurationError(
            f"Resource {name!r}: {what} is called as {what}({wanted}), but {shown}"
            f"{signature} can't take {len(parameters)} positional argument"
            f"{'s' if len(parameters) > 1 else ''}. Write it as: lambda {wanted}: ..."
        ) from None


def one_per_call(call: Call) -> int:
    """The usage of a Resource declared without any extractor: one per call."""
    return 1


class Resource:
    """A rate-limited resource: at most ``quota`` units per ``time_window_seconds``."""

    __slots__ = (
        "_meter",
        "arguments_usage_extractor",
        "max_results_usage_estimator",
        "name",
        "partition",
        "partition_quotas",
        "quota",
        "refill",
        "refill_delay",
        "results_usage_extractor",
        "settle",
        "time_window_seconds",
    )

    def __init__(
        self,
        name: str,
        quota: Unit,
        time_window_seconds: float,
        arguments_usage_extractor: ArgumentsUsageExtractor | None = None,
        results_usage_extractor: ResultsUsageExtractor | None = None,
        max_results_usage_estimator: ArgumentsUsageExtractor | None = None,
        refill: Refill = "window",
        refill_delay: float = 0.0,
        *,
        settle: Settle = "actual",
        partition: PartitionKey | None = None,
        partition_quotas: Mapping[Hashable, Unit] | None = None,
    ) -> None:
        """Declare a resource.

        Args:
            name: shown in progress, errors and outcomes; unique within a Runner.
            quota: how much may be used per window (positive).
            time_window_seconds: the window, in seconds (positive; 0.5 and 86400 are exact).
            arguments_usage_extractor: usage billed before the call, from its arguments.
                A Resource given no extractor at all counts one per call (a requests
                quota).
            results_usage_extractor: usage billed after the call, from its result.
            max_results_usage_estimator: upper bound of the results usage, reserved while
                the call runs; requires ``results_usage_extractor``.
            refill: ``"window"`` (usage expires whole after the window) or ``"bucket"``
                (continuous refill at quota/window per second).
            refill_delay: with ``"bucket"``, seconds an idle bucket waits before it starts
                to refill when a call arrives: the provider's bucket only starts when the
                request reaches it, so this covers the transit (the presets use 0.5).
            settle: what a call is billed when it returns: ``"actual"`` (default, as in
                0.4): the results estimate is held while it runs, then replaced by the
                actual results usage; ``"reserved"``: the estimate is billed when it is
                admitted and never refunded, the actual usage above it billed on top (as
                OpenAI counts ``prompt + max_tokens`` against TPM).
            partition: ``partition(call) -> key``, computed once at ``schedule()``: each
                key gets a quota of its own (one meter per key), e.g.
                ``lambda call: call.get_argument("model")`` for per-model limits.
            partition_quotas: ``{key: quota}`` for keys whose quota is not ``quota``.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Resource name must be a non-empty string, got {name!r}.")
        self.name = name
        self.quota: Unit = _positive_finite(quota, "quota", name)
        if isinstance(quota, int) and not isinstance(quota, bool):
            self.quota = quota  # keep ints as ints for 0.4-style arithmetic and display
        self.time_window_seconds = _positive_finite(
            time_window_seconds, "time_window_seconds", name
        )
        _optional_callable(arguments_usage_extractor, "arguments_usage_extractor", name, "call")
        _optional_callable(
            results_usage_extractor, "results_usage_extractor", name, "call", "result"
        )
        _optional_callable(max_results_usage_estimator, "max_results_usage_estimator", name, "call")
        if max_results_usage_estimator is not None and results_usage_extractor is None:
            raise ConfigurationError(
                f"Resource {name!r}: max_results_usage_estimator can only be used when "
                "results_usage_extractor is also provided (the estimate is held until the "
                "actual usage, read from the result, replaces it)."
            )
        if refill not in ("window", "bucket"):
            raise ConfigurationError(
                f"Resource {name!r}: refill must be 'window' or 'bucket', got {refill!r}."
            )
        if arguments_usage_extractor is None and results_usage_extractor is None:
            # "requests_per_minute" with nothing else said: each call is one request.
            arguments_usage_extractor = one_per_call
        self.arguments_usage_extractor = arguments_usage_extractor
        self.results_usage_extractor = results_usage_extractor
        self.max_results_usage_estimator = max_results_usage_estimator
        self.refill: Refill = refill
        if (
            isinstance(refill_delay, bool)
            or not isinstance(refill_delay, Real)
            or not (0 <= float(refill_delay) < math.inf)
        ):
            raise ConfigurationError(
                f"Resource {name!r}: refill_delay must be a number of seconds >= 0, "
                f"got {refill_delay!r}."
            )
        self.refill_delay: float = float(refill_delay)
        if settle not in ("actual", "reserved"):
            raise ConfigurationError(
                f"Resource {name!r}: settle must be 'actual' or 'reserved', got {settle!r}."
            )
        self.settle: Settle = settle
        _optional_callable(partition, "partition", name, "call")
        if partition_quotas is not None:
            if partition is None:
                raise ConfigurationError(
                    f"Resource {name!r}: partition_quotas needs partition= (the function "
                    "that gives each call its key)."
                )
            if not isinstance(partition_quotas, Mapping):
                raise ConfigurationError(
                    f"Resource {name!r}: partition_quotas must be a mapping of key to quota, "
                    f"got {type(partition_quotas).__name__}."
                )
            if isinstance(partition_quotas, dict):
                for key, value in partition_quotas.items():
                    _positive_finite(value, f"partition_quotas[{key!r}]", name)
        self.partition: PartitionKey | None = partition
        self.partition_quotas: Mapping[Hashable, Unit] | None = partition_quotas
        self._meter: Meter | None = None

    def quota_for(self, key: Hashable) -> float:
        """The quota of partition ``key``: ``partition_quotas[key]`` if given, else ``quota``."""
        if self.partition_quotas is None:
            return float(self.quota)
        value = self.partition_quotas.get(key)
        if value is None:
            return float(self.quota)
        return _positive_finite(value, f"partition_quotas[{key!r}]", self.name)

    def __repr__(self) -> str:
        extra = "" if self.settle == "actual" else f", settle={self.settle!r}"
        if self.partition is not None:
            extra += ", partitioned"
        return (
            f"Resource({self.name!r}, quota={self.quota}, "
            f"time_window_seconds={self.time_window_seconds}, refill={self.refill!r}{extra})"
        )

    # -- rate_limited 0.4: a Resource as a standalone usage counter -------------------------
    @property
    def _standalone(self) -> Meter:
        if self._meter is None:
            self._meter = make_meter(
                self.refill, self.quota, self.time_window_seconds, self.refill_delay
            )
        return self._meter

    def add_usage(self, amount: Unit) -> None:
        """Log ``amount`` as used now (standalone counter, monotonic clock)."""
        if not 0 <= amount < math.inf:
            raise ConfigurationError(
                f"Resource {self.name!r}: add_usage takes a finite, non-negative amount, "
                f"got {amount!r}."
            )
        self._standalone.bill(amount, time.monotonic())

    def reserve_amount(self, amount: Unit) -> None:
        """Hold ``amount`` until ``remove_reserved`` (standalone counter)."""
        self._standalone.reserve(amount)

    def remove_reserved(self, amount: Unit) -> None:
        """Release an amount held by ``reserve_amount``."""
        self._standalone.unreserve(amount)

    def get_amount_used(self) -> Unit:
        """Usage within the current window, reservations excluded."""
        return self._standalone.used(time.monotonic())

    def get_amount_available(self) -> Unit:
        """Quota left now, reservations included."""
        return self._standalone.available(time.monotonic())

    def is_available(self, amount: Unit) -> bool:
        """Whether ``amount`` fits in what is left of the quota now."""
        return self._standalone.fits(amount, time.monotonic())

    def get_next_expiration(self) -> datetime:
        """When the oldest usage expires (now if nothing is used), as a wall-clock time."""
        now = time.monotonic()
        meter = self._standalone
        assert isinstance(meter, WindowMeter | BucketMeter)
        expiry = meter.next_expiry(now)
        return datetime.now() + timedelta(seconds=0 if expiry is None else expiry - now)
