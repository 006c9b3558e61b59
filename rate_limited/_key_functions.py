"""The function side of a call key: which function a call runs, and its arguments by name.

``function_identity`` is the readable name stored beside each outcome; ``unwrap_partial``
reaches the function under ``functools.partial`` layers, merging their bound arguments into
the call's; ``bind`` maps the arguments to parameter names (so ``f(1, b=2)`` and
``f(1, 2)`` share a key), with a cached ``Binder`` much quicker than
``inspect.Signature.bind`` since it runs for every call scheduled. The canonical identity
that goes into a key (a lambda's code, a closure's values) is a value's canonical form,
made in ``_key_values``.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from rate_limited._key_form import qualified

__all__ = ["Binder", "bind", "function_identity", "unwrap_partial"]


def function_identity(function: Callable[..., Any]) -> str:
    """A readable name of what ``function`` calls, e.g. ``"mymodule.summarize"``.

    Stored beside each outcome for humans; it is not unique (two lambdas of one module both
    read ``"mymodule.<lambda>"``), the key is.
    """
    while isinstance(function, functools.partial):
        function = function.func
    if isinstance(function, types.MethodType):
        return qualified(function.__func__)
    if isinstance(function, (types.FunctionType, types.BuiltinFunctionType, type)):
        return qualified(function)
    return qualified(type(function))


def unwrap_partial(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The function under ``functools.partial`` layers, with their arguments merged in."""
    while isinstance(function, functools.partial):
        args = (*function.args, *args)
        kwargs = {**function.keywords, **kwargs}
        function = function.func
    return function, args, kwargs


class Binder:
    """A signature reduced to what binding needs; much quicker than ``Signature.bind``."""

    __slots__ = ("keyword", "positional", "positional_only", "var_keyword", "var_positional")

    def __init__(self, signature: inspect.Signature) -> None:
        kinds = inspect.Parameter
        params = list(signature.parameters.values())
        self.positional = [
            p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ]
        self.positional_only = {p.name for p in params if p.kind is kinds.POSITIONAL_ONLY}
        self.keyword = {
            p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        }
        self.var_positional = next((p.name for p in params if p.kind is kinds.VAR_POSITIONAL), None)
        self.var_keyword = any(p.kind is kinds.VAR_KEYWORD for p in params)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """Arguments by name (``**kwargs`` flattened, ``*args`` a tuple); None if they don't fit."""
        arguments = dict(zip(self.positional, args, strict=False))
        if len(args) > len(self.positional):
            if self.var_positional is None:
                return None
            arguments[self.var_positional] = tuple(args[len(self.positional) :])
        for name, value in kwargs.items():
            if name in arguments or name in self.positional_only:
                return None  # given twice, or positional-only passed by keyword
            if name not in self.keyword and not self.var_keyword:
                return None
            arguments[name] = value
        return arguments


@functools.lru_cache(maxsize=512)
def _binder(function: Callable[..., Any]) -> Binder:
    return Binder(inspect.signature(function))


def bind(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    """The call's arguments by parameter name, or None when the signature can't be used.

    Defaults are not applied. A call that does not fit the signature (it will fail when it
    runs) gets None too, and its key is made from the arguments as given.
    """
    skip_first = False
    target: Callable[..., Any] = function
    if isinstance(function, types.MethodType) and isinstance(function.__func__, types.FunctionType):
        # Bind through the plain function (cached) with the instance as first argument.
        target, args, skip_first = function.__func__, (function.__self__, *args), True
    try:
        binder = _binder(target)
    except (TypeError, ValueError):  # builtins without a signature, unhashable callables
        try:
            binder = Binder(inspect.signature(target))
        except (TypeError, ValueError):
            return None
    arguments = binder.bind(args, kwargs)
    if arguments is not None and skip_first:
        if binder.positional:
            del arguments[binder.positional[0]]
        elif binder.var_positional is not None:  # def method(*args): self is args[0]
            arguments[binder.var_positional] = arguments[binder.var_positional][1:]
    return arguments
