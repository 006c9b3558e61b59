"""``RunnerConfig``: a Runner's settings, validated once, frozen, handed to its engines.

``Runner(...)`` takes twenty keyword arguments (0.4's positional ones first), declared
with their defaults in ``Runner.__init__`` alone. Each is checked here, once, with an
error naming the argument and what to do (``ConfigurationError``); what comes out is a
frozen ``RunnerConfig`` that the Runner and every engine it makes read, and nothing
writes. Opening the store from a URL or path happens here too, so that a bad ``store=``
fails before anything is scheduled.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from rate_limited._clock import Clock, MonotonicClock
from rate_limited._policy import exponential_backoff, normalize_validators
from rate_limited.exceptions import ConfigurationError
from rate_limited.progress import check_progress
from rate_limited.resources import Resource
from rate_limited.stores.base import Store

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = ["RunnerConfig", "Setting", "function_name"]

EventLoop = Literal["own", "current"]
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerConfig:
    """A Runner's validated settings (see ``Runner.__init__`` for what each means)."""

    function: Callable[..., Any]
    resources: tuple[Resource, ...]
    max_concurrent: int
    max_retries: int
    validators: tuple[Callable[[Any], Any], ...]
    progress_interval: float
    long_wait_warning_seconds: float | None
    retry_if: Callable[[BaseException], bool]
    backoff: Callable[[int, BaseException | None], float]
    timeout: float | None
    progress: object
    clock: Clock
    name: str
    store: Store | None
    #: The Runner opened ``store`` (from a URL or path), so it closes it.
    owns_store: bool
    key: Callable[[Call], str] | None
    refresh: bool
    retry_failed: bool
    event_loop: EventLoop
    rate_limit_patience: float | None

    @classmethod
    def build(cls, arguments: Mapping[str, Any]) -> RunnerConfig:
        """Check ``Runner(...)``'s arguments, given by name; raises ``ConfigurationError``.

        ``Runner.__init__`` is the one place that declares them and their defaults (what
        users' IDEs and ``help()`` show); it hands its arguments over as they came, and
        names this method does not know (``budget=``, ``ledger=``...) are the Runner's.
        """
        function = arguments["function"]
        retry_if = arguments["retry_if"]
        backoff = arguments["backoff"]
        progress = arguments["progress"]
        clock = arguments["clock"]
        event_loop = arguments["event_loop"]
        key = arguments["key"]
        if not callable(function):
            raise ConfigurationError(
                f"function must be callable (the API call to run), got "
                f"{type(function).__name__}: {function!r}."
            )
        if not callable(retry_if):
            raise ConfigurationError(f"retry_if must be a callable, got {retry_if!r}.")
        if backoff is not None and not callable(backoff):
            raise ConfigurationError(f"backoff must be a callable, got {backoff!r}.")
        check_progress(progress)  # validate now; each run builds its own display
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"clock must have a new_event_loop() method (e.g. FakeClock()), got {clock!r}."
            )
        if event_loop not in ("own", "current"):
            raise ConfigurationError(f"event_loop must be 'own' or 'current', got {event_loop!r}.")
        if event_loop == "current" and clock is not None and not isinstance(clock, MonotonicClock):
            raise ConfigurationError(
                "event_loop='current' runs on the caller's loop, whose time is real; it "
                "cannot be combined with another clock= (e.g. FakeClock)."
            )
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be a callable key(call) -> str, got {key!r}.")
        return cls(
            function=function,
            resources=tuple(_check_resources(arguments["resources"])),
            max_concurrent=_check_int(arguments["max_concurrent"], "max_concurrent", minimum=1),
            max_retries=_check_int(arguments["max_retries"], "max_retries", minimum=0),
            validators=normalize_validators(
                arguments["validation"], arguments["validation_function"]
            ),
            progress_interval=_check_seconds(
                arguments["progress_interval"], "progress_interval", zero=True
            ),
            long_wait_warning_seconds=_optional_seconds(
                arguments["long_wait_warning_seconds"], "long_wait_warning_seconds", zero=True
            ),
            retry_if=retry_if,
            backoff=backoff if backoff is not None else exponential_backoff(),
            timeout=_optional_seconds(arguments["timeout"], "timeout"),
            progress=progress,
            clock=clock if clock is not None else MonotonicClock(),
            name=arguments["name"] or function_name(function),
            key=key,
            refresh=bool(arguments["refresh"]),
            retry_failed=bool(arguments["retry_failed"]),
            event_loop=event_loop,
            rate_limit_patience=_optional_seconds(
                arguments["rate_limit_patience"], "rate_limit_patience"
            ),
            **_open_store(arguments["store"], _optional_seconds(arguments["ttl"], "ttl")),
        )


class Setting(Generic[T]):
    """A read-only attribute of its owner (the Runner) that reads the owner's ``config``:
    ``runner.max_concurrent`` is ``runner.config.max_concurrent``, and cannot drift from
    what the engines use."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> T:
        if instance is None:
            raise AttributeError(self.name)
        value: T = getattr(instance.config, self.name)  # type: ignore[attr-defined]
        return value

    def __set__(self, instance: object, value: object) -> None:
        raise AttributeError(
            f"{type(instance).__name__}.{self.name} is fixed when the Runner is made (the "
            f"engines read it): create a new Runner with {self.name}={value!r}."
        )


def _open_store(store: str | os.PathLike[str] | Store | None, ttl: float | None) -> dict[str, Any]:
    """``store`` and ``owns_store`` for ``store=`` and ``ttl=``."""
    if store is None:
        if ttl is not None:
            raise ConfigurationError("ttl= needs a store= to expire outcomes from.")
        return {"store": None, "owns_store": False}
    if isinstance(store, Store):
        if ttl is not None:
            raise ConfigurationError(
                "ttl= applies when the Runner opens the store from a URL or path; "
                "for a Store object, pass ttl= to open_store() instead."
            )
        return {"store": store, "owns_store": False}
    from rate_limited.stores import open_store

    return {"store": open_store(store, ttl=ttl), "owns_store": True}


def function_name(function: Callable[..., Any]) -> str:
    """The name to show for ``function`` (a partial's function's)."""
    name = getattr(function, "__name__", None)
    if name is None and hasattr(function, "func"):  # functools.partial
        name = getattr(function.func, "__name__", None)
    return name or type(function).__name__


def _check_resources(resources: Iterable[Resource]) -> list[Resource]:
    if isinstance(resources, Resource):
        raise ConfigurationError(
            "resources must be a list of Resource objects; wrap a single one: [resource]."
        )
    try:
        items = list(resources)
    except TypeError:
        raise ConfigurationError(
            f"resources must be a list of Resource objects, got {type(resources).__name__}."
        ) from None
    names: set[str] = set()
    for item in items:
        if not isinstance(item, Resource):
            raise ConfigurationError(
                f"resources must contain Resource objects, got {type(item).__name__}: {item!r}."
            )
        if item.name in names:
            raise ConfigurationError(
                f"Two resources are named {item.name!r}; give each resource a unique name."
            )
        names.add(item.name)
    return items


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _check_seconds(value: object, name: str, zero: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if (
        not ok
        or math.isnan(number)
        or math.isinf(number)
        or number < 0
        or (number == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{name} must be a number of seconds {bound}, got {value!r}.")
    return number


def _optional_seconds(value: object, name: str, zero: bool = False) -> float | None:
    return None if value is None else _check_seconds(value, name, zero=zero)
