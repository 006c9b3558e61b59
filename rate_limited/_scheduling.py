"""``schedule()``: the per-Runner method that looks like the wrapped function, and what it
works out for a call before any run: its demand on the resources, and its store key.

A call's *demand* is computed once, here, from its arguments: per resource, its arguments
usage, its results estimate and its partition key (``rate_limited.ledgers.base.Demand``).
A call that needs more than a whole quota can never run: ``QuotaExceededError`` at
``schedule()``, naming the resource. An extractor that raises or returns something that is
not a usage is a ``ConfigurationError`` naming the resource and the extractor.

Demands are *interned*: calls with equal needs share one tuple (the requests resource of
a million calls needs ``(1.0, 0.0, None)`` a million times), which keeps the Calls of a
big batch small and leaves the garbage collector fewer objects to look at. A Runner also
remembers the last demand it computed (``DemandMemo``): a call whose every entry equals
the last call's (arguments usage, estimate, the same partition key object) gets that
tuple back without one being built or looked up. The memo saves only the building: the
extractors, the partition and the quota check still run for every call, so a changed
``resource.quota`` or partition key is seen by the next ``schedule()``.

**Scheduling in bulk.** A loop scheduling 100,000 calls grows the heap by as many Calls,
and CPython's collector, which triggers on allocation counts, would walk the growing heap
again and again (a full collection each time it has grown by a quarter): as much time as
scheduling itself. Every ``_AGE_EVERY`` calls, ``schedule()`` moves what the young
generations hold to the oldest in one O(1) step (``rate_limited._gc.age_young``): the
Calls are then left to the next full collection that happens anyway, and they stay
collectable.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from rate_limited._config import function_name
from rate_limited._gc import age_young
from rate_limited._redact import describe
from rate_limited._status import RunnerState
from rate_limited.calls import Call, CallOwner
from rate_limited.exceptions import ConfigurationError, QuotaExceededError, RunnerClosedError
from rate_limited.resources import Resource

if TYPE_CHECKING:
    from rate_limited._config import RunnerConfig
    from rate_limited._engine import Engine
    from rate_limited._money import Money
    from rate_limited.semantic._step import SemanticStep
    from rate_limited.stores.base import Store

__all__ = [
    "DemandMemo",
    "Extractors",
    "Scheduler",
    "declares",
    "demand_of",
    "key_of",
    "make_schedule",
    "pop_priority",
]

#: Demands and their entries as first made, for calls that need the same (see the module
#: docstring); emptied when it grows past ``_INTERN_MAX`` (the estimates vary per call).
_interned: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_INTERN_MAX = 4096
#: Every this many calls scheduled, the young generations are aged (module docstring):
#: often enough that few Calls reach the oldest generation through the young collections
#: (which count towards a full collection), rarely enough to cost nothing per call. 256
#: Calls and their arguments' tuples are fewer allocations than CPython's default
#: threshold for a young collection (700), and aging resets that count, so the usual
#: call is never walked by one at all (measured: 195 young collections while scheduling
#: 100,000 calls at 1024, one at 256; -0.7k instructions per call).
_AGE_EVERY = 256
_AGE_MASK = _AGE_EVERY - 1
_INF = math.inf
#: Read once: on Python 3.11 an enum class attribute is a slow, unspecialized lookup.
_CLOSED, _RUNNING = RunnerState.CLOSED, RunnerState.RUNNING
_ARGUMENTS = "arguments_usage_extractor"
_ESTIMATOR = "max_results_usage_estimator"

#: Per resource: the resource, its arguments usage extractor, its results estimator.
Extractors = Sequence[
    tuple[Resource, Callable[[Call], float] | None, Callable[[Call], float] | None]
]


class DemandMemo:
    """The last demand ``demand_of`` computed with ``extractors`` (one Runner's): the
    next call that needs the same gets it back (module docstring). One attribute,
    replaced whole, so a thread scheduling meanwhile reads an old demand or a new one."""

    __slots__ = ("extractors", "last")

    def __init__(self, extractors: Extractors) -> None:
        self.extractors = extractors
        self.last: tuple[tuple[float, float, Hashable], ...] | None = None


class Scheduler(CallOwner):
    """What schedules calls (the Runner): its batch, and the full way to schedule one."""

    #: Calls of the current batch, in schedule order.
    scheduled_calls: list[Call]
    #: ``schedule()`` only makes the Call and its demand: nothing else to compute (no
    #: store key, no price), and no run for it to join.
    _inline_schedule: bool
    #: ``schedule()`` takes ``priority=`` (the function has no parameter of that name).
    _takes_priority: bool
    config: RunnerConfig
    function: Callable[..., Any]
    store: Store | None
    _state: RunnerState
    _extractors: Extractors
    _demand_memo: DemandMemo
    _money: Money
    _semantic: SemanticStep | None
    _active_engine: Engine | None

    def _schedule(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """Make the Call, work out what it needs (demand, price, store key), add it to the
        batch, and hand it to the run going on, if any (on the engine's loop)."""
        if self._state is _CLOSED:
            raise RunnerClosedError("This Runner was closed; create a new Runner to schedule.")
        priority = pop_priority(kwargs, 0, self._takes_priority) if kwargs else 0
        calls = self.scheduled_calls
        function = self.function
        call = Call(function, args, kwargs, len(calls), self)
        if priority:
            call.priority = priority
        money = self._money
        priced = money.active
        if priced:
            money.schedule(call)
        extractors = self._extractors
        if extractors:
            call.demand = demand_of(extractors, call, self._demand_memo)
        if priced:
            money.price(call)
        config = self.config
        if config.store is not None:
            call.key = key_of(config.key, function, call, money.key_kwargs(call))
        if self._semantic is not None:
            self._semantic.check(call)  # a text= that can't split the call: an error now
        calls.append(call)
        engine = self._active_engine
        if self._state is _RUNNING and engine is not None:
            try:
                on_its_loop = asyncio.get_running_loop() is engine.loop
            except RuntimeError:
                on_its_loop = False
            if on_its_loop:
                engine.enqueue(call)
            else:
                with contextlib.suppress(RuntimeError):  # loop closed: next run() has it
                    engine.loop.call_soon_threadsafe(engine.enqueue, call)
        return call


def make_schedule(owner: Scheduler, function: Callable[..., Any]) -> Callable[..., Call]:
    """A ``schedule`` for ``owner`` (a Runner) that looks like ``function`` to IDEs and
    ``help()``; nothing shared (the class, the function) is modified."""
    runner_ref = weakref.ref(owner)  # no cycle: a dropped Runner stops its thread at once
    memo = owner._demand_memo = DemandMemo(owner._extractors)

    def schedule(*args: Any, **kwargs: Any) -> Call:
        runner = runner_ref()
        if runner is None:
            raise RunnerClosedError(
                "This Runner no longer exists: nothing referred to it any more (no "
                "variable, no Call it scheduled), so it was closed. Keep a reference, "
                "e.g. runner = Runner(...), while you schedule and run calls."
            )
        # The common case inline (this is the whole per-call cost of scheduling): the
        # same steps as Runner._schedule, with nothing else to do.
        if not runner._inline_schedule or (
            kwargs and "priority" in kwargs and runner._takes_priority
        ):
            return runner._schedule(args, kwargs)
        calls = runner.scheduled_calls
        index = len(calls)
        call = Call(function, args, kwargs, index, runner)
        extractors = runner._extractors
        if extractors:
            call.demand = demand_of(extractors, call, memo)
        calls.append(call)
        if not index & _AGE_MASK and index:
            age_young()  # see _AGE_EVERY
        return call

    qualname = getattr(function, "__qualname__", None) or function_name(function)
    module = getattr(function, "__module__", None) or "[Module not found]"
    try:
        signature: inspect.Signature | None = inspect.signature(function)
    except (TypeError, ValueError):
        signature = None
    schedule.__doc__ = (
        f"Schedule a call to {qualname} in {module}\n"
        "Returns the Call handle - call run() to get results\n\n"
        f"{function_name(function)}{signature if signature is not None else '(...)'}\n"
        "Docstring:\n\n"
        f"{getattr(function, '__doc__', None) or '[Docstring not found]'}"
    )
    annotations = dict(getattr(function, "__annotations__", None) or {})
    annotations["return"] = None  # as in 0.4 (a copy: the function is left untouched)
    schedule.__annotations__ = annotations
    schedule.__wrapped__ = function  # type: ignore[attr-defined]
    if signature is not None:
        schedule.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=Call
        )
    schedule.__qualname__ = f"{type(owner).__qualname__}.schedule"
    return schedule


def declares(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` has a parameter called ``name`` (not through ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )


def pop_priority(kwargs: dict[str, Any], default: int, takes: bool) -> int:
    """``priority=`` taken out of a call's keyword arguments, if the Runner ``takes`` it
    (a function with a ``priority`` parameter of its own keeps it): larger goes first."""
    if not takes or "priority" not in kwargs:
        return default
    priority = kwargs.pop("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(
            "priority must be an int (larger goes first; schedule() defaults to 0, call() "
            f"to 1), got {priority!r}."
        )
    return priority


def demand_of(
    extractors: Extractors, call: Call, memo: DemandMemo | None = None
) -> tuple[tuple[float, float, Hashable], ...]:
    """``call``'s demand: per resource (arguments usage, results estimate, partition key).

    This runs once per scheduled call, so the usual case is inline: a usage that is a
    finite non-negative float or int, a quota it fits in, no partition (or a str one), and
    a demand the last call had (``memo``: nothing built) or some earlier call had (one
    lookup of the whole, the entries only when it is new). The quota and the partition
    are read from the resource every time: a changed ``resource.quota`` applies to the
    next ``schedule()``.
    """
    # The last demand, while every entry so far equals its own (then none is built).
    previous = None if memo is None or memo.extractors is not extractors else memo.last
    equal = 0  # how many leading entries equal previous's (not in ``demand``)
    demand: list[tuple[float, float, Hashable]] = []
    shared = True
    for resource, args_extractor, estimator in extractors:
        # The two extractors' blocks below are one step written twice, on purpose: a
        # shared helper (as before issue 11) cost a call each, per resource, per call.
        args_usage = estimate = 0.0
        if args_extractor is not None:
            try:
                value = args_extractor(call)
            except ConfigurationError:
                raise  # already says what is wrong (e.g. a preset's RequestTooLargeError)
            except Exception as exc:
                raise _failed(exc, call, resource, _ARGUMENTS) from exc
            kind = type(value)
            if kind is int and value >= 0:  # the usual cases first (an int is finite)
                args_usage = float(value)
            elif kind is float and 0.0 <= value < _INF:
                args_usage = value
            else:
                args_usage = _checked(value, call, resource, _ARGUMENTS)
        if estimator is not None:
            try:
                value = estimator(call)
            except ConfigurationError:
                raise
            except Exception as exc:
                raise _failed(exc, call, resource, _ESTIMATOR) from exc
            kind = type(value)
            if kind is int and value >= 0:  # the usual cases first (an int is finite)
                estimate = float(value)
            elif kind is float and 0.0 <= value < _INF:
                estimate = value
            else:
                estimate = _checked(value, call, resource, _ESTIMATOR)
        if resource.partition is None:
            key: Hashable = None
            quota: float = resource.quota
        else:
            key = _partition(resource, call)
            quota = resource.quota_for(key)
            if key is not None and type(key) is not str:
                shared = False  # the cache holds no user object; equal keys: the same key
        needed = args_usage + estimate
        if needed > quota and needed > quota * (1 + 1e-9):  # the ledger's rounding slack
            raise QuotaExceededError(
                f"Call {call!r} exceeds resource quota of {resource.name!r}: it needs "
                f"{needed:g} but the whole quota is {quota:g}, so it could never run. Raise "
                "the quota, lower the call's usage (e.g. max_tokens) or split the call.",
                resource=resource.name,
                needed=needed,
                quota=quota,
            )
        if previous is not None:
            # The same key object (``is``): an equal key of another type (1, 1.0, True)
            # is another key (see above), and the memo needs no hashing.
            last_args, last_estimate, last_key = previous[equal]
            if args_usage == last_args and estimate == last_estimate and key is last_key:
                equal += 1
                continue
            demand += previous[:equal]  # the entries before this one were equal
            previous = None
        demand.append((args_usage, estimate, key))
    if previous is not None:
        return previous  # every entry equal: the last call's demand, as it is
    if not shared:
        result = tuple(
            _interned.get(entry) or _intern(entry)
            if entry[2] is None or type(entry[2]) is str
            else entry
            for entry in demand
        )
    else:
        whole = tuple(demand)
        interned = _interned.get(whole)
        if interned is None:
            interned = _intern(tuple(_interned.get(entry) or _intern(entry) for entry in whole))
        result = interned
    if memo is not None and memo.extractors is extractors:
        memo.last = result
    return result


def _intern(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """``value``, kept as the one to share from now on (the caller found no equal one
    in ``_interned``): see the module docstring."""
    if len(_interned) >= _INTERN_MAX:
        _interned.clear()
    _interned[value] = value
    return value


def key_of(
    key: Callable[[Call], str] | None,
    function: Callable[..., Any],
    call: Call,
    kwargs: Mapping[str, Any] | None = None,
) -> str:
    """``call``'s store key: ``key(call)`` if given, else a hash of the function and its
    arguments by value (``rate_limited._keys``); ``kwargs`` instead of the call's own
    (an escalating call's: as scheduled, with its ladder)."""
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

    return call_key(function, call.args, call.kwargs if kwargs is None else kwargs)


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


def _failed(exc: Exception, call: Call, resource: Resource, what: str) -> ConfigurationError:
    """The error for an extractor of ``resource`` that raised ``exc`` on ``call``."""
    return ConfigurationError(
        f"{what} of resource {resource.name!r} raised {describe(exc, call)} for "
        f"{call!r}. Check the arguments passed to schedule() (the extractor reads them "
        "with call.get_argument(name))."
    )


def _checked(value: object, call: Call, resource: Resource, what: str) -> float:
    """``value`` (what an extractor of ``resource`` returned) as a usage, or a clear error
    (``demand_of`` has already taken the usual float and int)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < _INF:
        raise ConfigurationError(
            f"{what} of resource {resource.name!r} returned {value!r} for {call!r}; "
            "usage must be a finite, non-negative number."
        )
    return float(value)
