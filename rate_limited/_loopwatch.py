"""Telling async functions apart, and catching the ones that block the event loop.

An ``async def`` that calls a blocking client (or ``time.sleep``) holds the engine's loop
for the whole request: no other call runs meanwhile, whatever ``max_concurrent`` says.
The engine times the first calls of a Runner, then one in ``WATCH_EVERY``, step by step
(``StepTimer``), and warns once when a step blocked the loop.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BLOCKING_SECONDS", "WATCH_EVERY", "WATCH_FIRST", "StepTimer", "is_async_callable"]

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
