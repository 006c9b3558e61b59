"""``schedule()``: the per-Runner method that looks like the wrapped function, and what it
works out for a call before any run: its demand on the resources, and its store key.

A call's *demand* (per resource: arguments usage, results estimate, partition key) is
computed once, here, by ``rate_limited._demand`` (compiled for the Runner's resources):
a call that can never fit, or an extractor that fails, is an error before anything is
paid for.

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
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rate_limited._config import function_name
from rate_limited._demand import CallDemand, DemandMemo, Extractors, compile_demand
from rate_limited._gc import age_young
from rate_limited._redact import describe
from rate_limited._status import RunnerState
from rate_limited.calls import Call, CallOwner
from rate_limited.exceptions import ConfigurationError, RunnerClosedError

if TYPE_CHECKING:
    from rate_limited._config import RunnerConfig
    from rate_limited._engine import Engine
    from rate_limited._money import Money
    from rate_limited.semantic._step import SemanticStep
    from rate_limited.stores.base import Store

__all__ = [
    "Scheduler",
    "declares",
    "key_of",
    "make_schedule",
    "pop_priority",
]

#: Every this many calls scheduled, the young generations are aged (module docstring):
#: often enough that few Calls reach the oldest generation through the young collections
#: (which count towards a full collection), rarely enough to cost nothing per call. 256
#: Calls and their arguments' tuples are fewer allocations than CPython's default
#: threshold for a young collection (700), and aging resets that count, so the usual
#: call is never walked by one at all (measured: 195 young collections while scheduling
#: 100,000 calls at 1024, one at 256; -0.7k instructions per call).
_AGE_EVERY = 256
_AGE_MASK = _AGE_EVERY - 1
#: Read once: on Python 3.11 an enum class attribute is a slow, unspecialized lookup.
_CLOSED, _RUNNING = RunnerState.CLOSED, RunnerState.RUNNING


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
    #: ``demand_of`` compiled for ``_extractors``, with the Runner's memo (None without).
    _demand: Callable[[Call], CallDemand] | None
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
        demand = self._demand
        if demand is not None:
            call.demand = demand(call)
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
    extractors = owner._extractors
    demand = owner._demand = (
        compile_demand(extractors, DemandMemo(extractors)) if extractors else None
    )

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
        if demand is not None:
            call.demand = demand(call)
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
