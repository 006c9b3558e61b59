"""``per_process(factory, ...)``: one object per process, made there on first use and reused.

Why: a Dask task (``rate_limited.dask.apply``'s ``make_runner``) runs once per partition,
and what it builds is built again for every partition: an SDK client there opens a
connection pool per partition (new TCP and TLS handshakes, sockets left open until the
client is collected). The client should be made once per worker process and shared by the
partitions that process runs, its threads included (the SDKs' sync clients are
thread-safe; their connection pool is the point of sharing them).

A module-level ``functools.cache`` does not do it where users write their code, a notebook
or a script's ``__main__``: Dask (cloudpickle) pickles a function of ``__main__`` by value,
with the globals it uses, but a cached function by name, which a worker's ``__main__`` does
not have (``AttributeError`` on the worker); and a dict kept in such a global travels by
value with the function, a copy per unpickling. ``PerProcess`` keeps its objects here, in
an importable module (one registry per process), under a key made when ``per_process`` is
called, which travels with it when it is pickled: every copy of one ``per_process(...)``
finds the same object in a process, and two ``per_process(...)`` calls never share one
(a cell run again with another factory gets the new factory's object, never the old one's).

A child made by ``fork`` starts with an empty registry (a client's connections are not
shared with the parent's); what is left open is closed when the process exits. An async
client (``openai.AsyncOpenAI``) is refused: it serves the event loop it was first used on,
and each Runner runs its own loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rate_limited.exceptions import ConfigurationError

__all__ = ["PerProcess", "per_process"]

T = TypeVar("T")

#: This process's objects, by the key of the ``PerProcess`` that made them.
_objects: dict[str, Any] = {}
_lock = threading.Lock()


def _forget_in_child() -> None:
    global _lock
    _objects.clear()
    _lock = threading.Lock()


def _close_all() -> None:
    """At the end of the process: close what is left (an SDK client's connections)."""
    with _lock:
        made = list(_objects.values())
        _objects.clear()
    for each in made:
        close = getattr(each, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # the process is ending: nothing to tell
                close()


if hasattr(os, "register_at_fork"):  # not on Windows (no fork there)
    os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_close_all)


class PerProcess(Generic[T]):
    """Calling it gives this process's ``factory(*args, **kwargs)``, made on the first call
    (once, whichever thread calls first) and the same object after that. Picklable (Dask
    sends it to its workers inside ``make_runner``) when its factory and arguments are."""

    def __init__(
        self, factory: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.factory = factory
        self.args = args
        self.kwargs = kwargs
        #: What identifies this object in every process (copied when pickled).
        self.key = uuid.uuid4().hex

    def __call__(self) -> T:
        made = _objects.get(self.key, _objects)
        if made is not _objects:
            return made  # type: ignore[no-any-return]
        with _lock:
            if self.key not in _objects:
                _objects[self.key] = self._make()
            return _objects[self.key]  # type: ignore[no-any-return]

    def _make(self) -> T:
        made = self.factory(*self.args, **self.kwargs)
        if _is_async(made):
            _close_async(made)
            raise ConfigurationError(
                f"per_process({_name(self.factory)}) made an async client "
                f"({type(made).__name__}): it serves the event loop it is first used on, "
                "and each Runner runs its own, so Runners cannot share it. Share the sync "
                "client instead (e.g. per_process(openai.OpenAI)): the Runner calls it from "
                "its threads, and it is thread-safe."
            )
        return made

    def close(self) -> None:
        """Close this process's object (its ``close()``, if it has one) and forget it: the
        next call makes a new one. Nothing happens if none was made here. On every Dask
        worker: ``dask_client.run(shared.close)``."""
        with _lock:
            made = _objects.pop(self.key, None)
        close = getattr(made, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:  # the arguments are left out: they may hold a key
        return f"per_process({_name(self.factory)}, ...)"


def per_process(factory: Callable[..., T], /, *args: Any, **kwargs: Any) -> PerProcess[T]:
    """One ``factory(*args, **kwargs)`` per process, made on first use and reused.

    ``openai_client = per_process(openai.OpenAI)`` at the top level; ``openai_client()``
    in ``make_runner`` gives the worker process's client, the same one for every
    partition (and thread) it runs, made by the first. ``openai_client.close()`` closes
    this process's one; the others are closed when their process exits.
    """
    if not callable(factory):
        raise ConfigurationError(
            f"per_process needs a function or class that makes the object, e.g. "
            f"per_process(openai.OpenAI); got a {type(factory).__name__} (its value is not "
            "shown: it may be a key passed by mistake)."
        )
    return PerProcess(factory, args, kwargs)


def _name(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}.{name}" if module and module != "builtins" else name


def _is_async(made: Any) -> bool:
    """Whether ``made`` is an async client: its ``close`` is a coroutine function, or it
    has ``aclose`` (httpx)."""
    return inspect.iscoroutinefunction(getattr(made, "close", None)) or callable(
        getattr(made, "aclose", None)
    )


def _close_async(made: Any) -> None:
    """Close a refused async client on an event loop of its own (in a thread: the caller
    may be inside a running loop)."""
    close = getattr(made, "aclose", None) or made.close

    def run() -> None:
        with contextlib.suppress(Exception):  # the ConfigurationError says what matters
            asyncio.run(close())

    thread = threading.Thread(target=run, name="rate_limited-per-process-close")
    thread.start()
    thread.join()
