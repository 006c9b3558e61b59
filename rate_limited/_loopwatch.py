"""Telling async functions apart, and catching the ones that block the event loop.

An ``async def`` that calls a blocking client (or ``time.sleep``) holds the engine's loop
for the whole request: no other call runs meanwhile, whatever ``max_concurrent`` says.
The engine times the first calls of a Runner, then one in ``WATCH_EVERY``, step by step
(``StepTimer``), and warns once when a step blocked the loop.
"""

from __future__ import annotations

import inspect
import time
import types
from collections.abc import Callable
from typing import Any

__all__ = [
    "BLOCKING_SECONDS",
    "NOT_AWAITABLE",
    "WATCH_EVERY",
    "WATCH_FIRST",
    "StepTimer",
    "blocking_message",
    "is_async_callable",
    "is_awaitable",
]

#: A step of an async call longer than this blocked the loop (a sync call inside it).
BLOCKING_SECONDS = 0.1
#: The first calls of a Runner are watched for that, then one call in this many.
WATCH_FIRST, WATCH_EVERY = 8, 64


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` returns a coroutine (functions, partials, methods,
    objects with an ``async def __call__``)."""
    if inspect.iscoroutinefunction(function):
        return True
    return inspect.iscoroutinefunction(type(function).__call__)


#: Types of values sync functions returned that are not awaitable (most results are of a
#: handful of types): ``inspect.isawaitable`` once per type, not per call.
NOT_AWAITABLE: set[type] = set()


def is_awaitable(value: Any) -> bool:
    """``inspect.isawaitable``, noting the value's type in ``NOT_AWAITABLE`` if not."""
    if inspect.isawaitable(value):
        return True
    kind = type(value)
    if kind is not types.GeneratorType and len(NOT_AWAITABLE) < 256:
        NOT_AWAITABLE.add(kind)  # (a generator may be a types.coroutine: not by type)
    return False


def blocking_message(function: str, seconds: float) -> str:
    """The warning for an async ``function`` that blocked the loop ``seconds`` in a step."""
    return (
        f"The async function {function} blocked the event loop for {seconds:.2f} s in one "
        "step: while it blocks no other call runs, so calls run one at a time whatever "
        "max_concurrent is. It probably calls a blocking (sync) client or time.sleep inside "
        "async def. Use the client's async API (await client.create(...)), wrap the blocking "
        "part in `await asyncio.to_thread(...)`, or give the Runner the sync function instead "
        "(it runs sync functions in threads)."
    )


class StepTimer:
    """Awaits an awaitable step by step, timing each step: a step is the code that runs
    between two suspensions, and a long one blocked the loop. ``on_block(seconds)`` is
    called once, for the first step longer than ``BLOCKING_SECONDS``."""

    __slots__ = ("_awaitable", "_on_block")

    def __init__(self, awaitable: Any, on_block: Callable[[float], None] | None) -> None:
        self._awaitable = awaitable
        self._on_block = on_block

    def __await__(self) -> Any:
        steps = self._awaitable.__await__()
        clock = time.perf_counter
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            began = clock()
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                self._check(clock() - began)
                return stop.value
            except BaseException:
                self._check(clock() - began)
                raise
            self._check(clock() - began)
            sent = thrown = None
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation and the like: pass them on
                thrown = exc

    def _check(self, seconds: float) -> None:
        if seconds > BLOCKING_SECONDS and self._on_block is not None:
            on_block, self._on_block = self._on_block, None
            on_block(seconds)
