"""Stable call keys: one short hex string per distinct call, the same in every process.

A store files each finished call under its key, so a fresh process (after a kernel restart,
or on another machine) that schedules the same call finds the stored result instead of
paying for the call again. The key is a sha256 digest (32 hex characters) of a canonical JSON
form of the function's identity and of the call's arguments. Nothing in it comes from
``hash()`` or ``id()``, so it does not depend on the process, the hash seed or the machine.

What makes two calls "the same":

- The function's identity: ``module.qualname`` for a plain function; for a bound method the
  method's ``module.qualname`` and the *type* of its instance (the instance itself, e.g. an
  ``openai.OpenAI`` client holding an API key, is context, not data); the underlying function
  for a ``functools.partial``, whose bound arguments are merged into the call's arguments
  (so ``partial(f, a=1)(b=2)`` and ``f(a=1, b=2)`` share a key); the type for a callable
  object. Two lambdas of one module share ``module.<lambda>``, so a lambda's identity also
  holds a digest of its code (bytecode, constants and global names), its defaults and its
  closure: editing a lambda changes its keys, and they may change across Python versions.
  Nested functions (``<locals>`` in their qualname) add their defaults and closure values.
  Editing a named function's body does not change its keys (that is what makes a cache).
- The arguments, bound to parameter names when the signature can be read (``f(1, b=2)`` and
  ``f(1, 2)`` share a key), without applying defaults (``f(n=0)`` and ``f()`` differ).
  Dicts are order-independent, lists and tuples ordered (and distinct), sets sorted, floats
  exact (``0.1`` and ``0.1000001`` differ, ``1`` and ``1.0`` too). Pydantic v2 models
  count by ``model_dump(mode="json")`` and type, dataclasses and attrs classes by fields
  and type, enums by value, datetimes, dates, Decimals, UUIDs and paths by ``str``; numpy
  arrays by their bytes, dtype and shape; pandas DataFrames, Series and Index by
  ``pandas.util.hash_pandas_object`` of their rows (index included) plus their column
  labels, dtypes and names; an object of a plain Python class by its state
  (``__dict__`` and slots), when that state is itself made of values like these.
- API clients, HTTP sessions, connections, locks and event-loop objects (of the libraries
  in ``_CONTEXT_MODULES``: openai, anthropic, httpx, requests, aiohttp, redis, asyncio,
  threading...) are context and count by their type's qualified name only.
- Anything else (a C extension object the package can't read, a file handle, a
  generator...) has no key by value: ``call_key`` raises ``ConfigurationError`` asking for
  ``key=``. Keying it by type would give different calls one key, and a store would hand
  one call's result to the others.
- Secrets never reach a key: arguments and dict keys (at any depth, e.g. in
  ``extra_headers``) named like api_key, authorization, auth, \\*token (but not
  ``max_tokens`` and other counts), secret, password or cookie are dropped, and so are the
  names given in ``exclude``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import json
import pathlib
import re
import types
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeAlias

from rate_limited._secret_names import is_secret_name
from rate_limited.exceptions import ConfigurationError

__all__ = ["KEY_VERSION", "call_key", "function_identity", "is_secret_name"]

#: Bumped whenever the canonical form changes, so old keys never alias new ones.
KEY_VERSION = 1
_KEY_HEX_CHARS = 32

_Canon: TypeAlias = "bool | int | str | list[_Canon] | None"

_PLAIN_TYPES: dict[type, str] = {
    datetime.datetime: "datetime",
    datetime.date: "date",
    datetime.time: "time",
    datetime.timedelta: "timedelta",
    decimal.Decimal: "decimal",
    uuid.UUID: "uuid",
}


def call_key(
    function: Callable[..., Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
    exclude: Collection[str] = (),
) -> str:
    """The stable key of ``function(*args, **kwargs)``: 32 lowercase hex characters.

    ``namespace`` separates otherwise identical calls (e.g. two experiments sharing one
    store); ``exclude`` names arguments (and dict keys, at any depth) that must not count,
    such as a request id. See the module docstring for what counts.
    """
    names = frozenset((exclude,) if isinstance(exclude, str) else exclude)
    context = _Context(names)
    function, args, merged = _unwrap_partial(function, tuple(args), dict(kwargs or {}))
    bound = _bind(function, args, merged)
    try:
        identity = _identity(function, context)
        if bound is None:
            arguments: _Canon = ["unbound", _canon(list(args), context), _canon(merged, context)]
        else:
            arguments = _canon(bound, context)
    except _Unkeyable as exc:
        raise _unkeyable_error(exc, function, args, merged, bound, names) from None
    payload = ["rate_limited.call_key", KEY_VERSION, namespace, identity, arguments]
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:_KEY_HEX_CHARS]


def _unkeyable_error(
    exc: _Unkeyable,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    bound: dict[str, Any] | None,
    exclude: frozenset[str],
) -> ConfigurationError:
    """The ConfigurationError for a call with an argument that has no key by value,
    naming that argument (found by trying each one again: errors only)."""
    named = bound if bound is not None else {**{f"#{i}": a for i, a in enumerate(args)}, **kwargs}
    where = "its function (a default or closure value)"
    for name, value in named.items():
        try:
            _canon(value, _Context(exclude))
        except _Unkeyable:
            where = f"argument {name!r}" if not name.startswith("#") else f"argument {name}"
            break
    return ConfigurationError(
        f"Can't make a store key for this call of {function_identity(function)}: "
        f"{where} holds a {exc.type_name}, which can't be keyed by value (keying it by "
        "type would give different calls the same key, and the store would hand one "
        "call's result to the others). Pass key= to the Runner, a function of the call "
        "returning a string that identifies it, e.g. key=lambda call: "
        "str(call.get_argument('row_id'))."
    )


def function_identity(function: Callable[..., Any]) -> str:
    """A readable name of what ``function`` calls, e.g. ``"mymodule.summarize"``.

    Stored beside each outcome for humans; it is not unique (two lambdas of one module both
    read ``"mymodule.<lambda>"``), the key is.
    """
    while isinstance(function, functools.partial):
        function = function.func
    if isinstance(function, types.MethodType):
        return _qualified(function.__func__)
    if isinstance(function, (types.FunctionType, types.BuiltinFunctionType, type)):
        return _qualified(function)
    return _qualified(type(function))


class _Context:
    """What one canonicalisation needs: the excluded names and the containers being visited."""

    __slots__ = ("active", "exclude")

    def __init__(self, exclude: frozenset[str]) -> None:
        self.exclude = exclude
        # ids of the containers on the current path, only to stop at cycles; never output.
        self.active: set[int] = set()

    def drops(self, name: str) -> bool:
        return name in self.exclude or is_secret_name(name)


def _qualified(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "builtins"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return f"{module}.{qualname}"


def _unwrap_partial(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    while isinstance(function, functools.partial):
        args = (*function.args, *args)
        kwargs = {**function.keywords, **kwargs}
        function = function.func
    return function, args, kwargs


def _identity(function: Any, context: _Context) -> _Canon:
    if isinstance(function, types.MethodType):
        owner = function.__self__
        owner_type = owner if isinstance(owner, type) else type(owner)
        return ["method", _qualified(function.__func__), _qualified(owner_type)]
    if isinstance(function, types.FunctionType):
        name = _qualified(function)
        if function.__name__ == "<lambda>":
            return ["lambda", name, _code_digest(function.__code__), *_state(function, context)]
        if "<locals>" in function.__qualname__:
            return ["local", name, *_state(function, context)]
        return ["function", name]
    if isinstance(function, types.BuiltinFunctionType):
        owner = function.__self__
        if owner is None or isinstance(owner, types.ModuleType):
            return ["builtin", _qualified(function)]
        owner_type = owner if isinstance(owner, type) else type(owner)
        return ["builtin-method", _qualified(owner_type), function.__name__]
    if isinstance(function, type):
        return ["class", _qualified(function)]
    return ["callable", _qualified(type(function))]


def _state(function: types.FunctionType, context: _Context) -> list[_Canon]:
    """Defaults and closure values: what tells apart two functions made by one factory."""
    defaults = _canon(list(function.__defaults__ or ()), context)
    kwdefaults = _canon(dict(function.__kwdefaults__ or {}), context)
    cells: list[Any] = []
    for cell in function.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # an empty cell: the variable was not assigned yet
            cells.append(None)
    return [defaults, kwdefaults, _canon(cells, context)]


def _code_digest(code: types.CodeType) -> str:
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest.update(_code_digest(const).encode())
        else:
            digest.update(json.dumps(_canon(const, _Context(frozenset()))).encode())
        digest.update(b"\0")
    digest.update("\0".join(code.co_names).encode())
    return digest.hexdigest()[:_KEY_HEX_CHARS]


class _Binder:
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
def _binder(function: Callable[..., Any]) -> _Binder:
    return _Binder(inspect.signature(function))


def _bind(
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
            binder = _Binder(inspect.signature(target))
        except (TypeError, ValueError):
            return None
    arguments = binder.bind(args, kwargs)
    if arguments is not None and skip_first:
        if binder.positional:
            del arguments[binder.positional[0]]
        elif binder.var_positional is not None:  # def method(*args): self is args[0]
            arguments[binder.var_positional] = arguments[binder.var_positional][1:]
    return arguments


def _sort_key(item: _Canon) -> str:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=True)


def _canon(obj: Any, context: _Context) -> _Canon:
    """The canonical JSON form of one value; every container form starts with a tag string."""
    kind = type(obj)
    if kind is str or kind is int or obj is None or kind is bool:
        return obj  # type: ignore[no-any-return]
    if kind is float:
        return ["float", float.__repr__(obj)]
    if kind is dict or kind is list or kind is tuple:
        return _visit(obj, context)
    return _canon_other(obj, context)


def _canon_other(obj: Any, context: _Context) -> _Canon:
    if isinstance(obj, enum.Enum):
        return ["enum", _qualified(type(obj)), _canon(obj.value, context)]
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return ["float", float.__repr__(obj)]
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return ["bytes", bytes(obj).hex()]
    for plain_type, tag in _PLAIN_TYPES.items():
        if isinstance(obj, plain_type):
            return [tag, str(obj)]
    if isinstance(obj, pathlib.PurePath):
        return ["path", str(obj)]
    if isinstance(obj, complex):
        return ["complex", repr(obj)]
    return _visit(obj, context)


def _visit(obj: Any, context: _Context) -> _Canon:
    if id(obj) in context.active:
        return ["cycle"]
    context.active.add(id(obj))
    try:
        return _canon_container(obj, context)
    finally:
        context.active.discard(id(obj))


def _canon_container(obj: Any, context: _Context) -> _Canon:
    if isinstance(obj, dict) or (not isinstance(obj, (list, tuple)) and isinstance(obj, Mapping)):
        pairs: list[tuple[str, _Canon]] = []
        for name, value in obj.items():
            if isinstance(name, str) and context.drops(name):
                continue
            pair: list[_Canon] = [_canon(name, context), _canon(value, context)]
            # str keys (nearly all) sort by themselves, before all others.
            order = f"s{name}" if isinstance(name, str) else f"z{_sort_key(pair[0])}"
            pairs.append((order, pair))
        pairs.sort(key=lambda p: p[0])
        return ["dict", *(pair for _, pair in pairs)]
    if isinstance(obj, list):
        return ["list", *(_canon(item, context) for item in obj)]
    if isinstance(obj, tuple):
        tag = "tuple" if type(obj) is tuple else f"tuple:{_qualified(type(obj))}"
        return [tag, *(_canon(item, context) for item in obj)]
    if isinstance(obj, (set, frozenset)):
        items = [_canon(item, context) for item in obj]
        return ["set", *sorted(items, key=_sort_key)]
    if isinstance(obj, type):
        return _canon_class(obj, context)
    if isinstance(
        obj,
        (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial),
    ):
        function, args, kwargs = _unwrap_partial(obj, (), {})
        partial_args = _canon([list(args), kwargs], context) if obj is not function else None
        return ["function", _identity(function, context), partial_args]
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and hasattr(type(obj), "model_fields"):
        try:
            data = dump(mode="json")
        except Exception:  # fields JSON can't show (arbitrary types): their values then
            try:
                data = dump()
            except Exception:
                raise _Unkeyable(obj) from None
        return ["model", _qualified(type(obj)), _canon(data, context)]
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return ["dataclass", _qualified(type(obj)), _canon(fields, context)]
    cls = type(obj)
    module = cls.__module__ or ""
    if module == "numpy" or module.startswith("numpy."):
        return _canon_numpy(obj, context)
    if module == "pandas" or module.startswith("pandas."):
        return _canon_pandas(obj, context)
    attributes = getattr(cls, "__attrs_attrs__", None)
    if attributes is not None:  # an attrs class
        fields = {a.name: getattr(obj, a.name) for a in attributes}
        return ["attrs", _qualified(cls), _canon(fields, context)]
    context_type, plain = _class_kind(cls)
    if context_type:
        return ["object", _qualified(cls)]
    if isinstance(obj, types.SimpleNamespace):
        return ["namespace", _canon(vars(obj), context)]
    if isinstance(obj, (range, slice)):
        return [cls.__name__, _canon([obj.start, obj.stop, obj.step], context)]
    if isinstance(obj, re.Pattern):
        return ["pattern", _canon(obj.pattern, context), obj.flags]
    if isinstance(obj, types.ModuleType):
        return ["module", obj.__name__]
    if isinstance(obj, collections.deque):
        return ["deque", *(_canon(item, context) for item in obj)]
    if not plain:
        raise _Unkeyable(obj)
    return ["state", _qualified(cls), _canon(_plain_state(obj), context)]


#: Libraries whose objects are context (clients, sessions, connections, locks, loops...):
#: a call's key counts them by type only. An API client holds a key and a connection
#: pool, not data of the request.
_CONTEXT_MODULES = (
    "_thread",
    "aiobotocore",
    "aiohttp",
    "anthropic",
    "asyncio",
    "asyncpg",
    "azure",
    "boto3",
    "botocore",
    "cohere",
    "concurrent",
    "google.auth",
    "google.cloud",
    "google.genai",
    "google.generativeai",
    "groq",
    "http.client",
    "httpcore",
    "httpx",
    "litellm",
    "logging",
    "mistralai",
    "motor",
    "multiprocessing",
    "openai",
    "psycopg",
    "psycopg2",
    "pymongo",
    "queue",
    "rate_limited",
    "redis",
    "requests",
    "selectors",
    "socket",
    "sqlalchemy",
    "sqlite3",
    "ssl",
    "threading",
    "together",
    "urllib.request",
    "urllib3",
)
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class created by a class statement
#: Py_TPFLAGS_IMMUTABLETYPE: never set by a class statement, but set on C types, including
#: the heap types of extension modules (e.g. ``_io.StringIO`` from Python 3.12 on).
_IMMUTABLE_TYPE = 1 << 8


_class_kinds: dict[type, tuple[bool, bool]] = {}


def _class_kind(cls: type) -> tuple[bool, bool]:
    """(context, plain) for ``cls``, cached: whether it is a client, session, lock... of a
    library in ``_CONTEXT_MODULES``, and whether its instances keep all their state in
    ``__dict__`` and slots (every class of its MRO but ``object`` is a Python class, none
    a C type keeping data of its own, such as an array, image or tensor type)."""
    kind = _class_kinds.get(cls)
    if kind is None:
        modules = [getattr(k, "__module__", None) or "" for k in cls.__mro__]
        context = any(
            module == m or module.startswith(m + ".")
            for module in modules
            for m in _CONTEXT_MODULES
        )
        plain = all(
            k is object or k.__flags__ & (_HEAP_TYPE | _IMMUTABLE_TYPE) == _HEAP_TYPE
            for k in cls.__mro__
        )
        if len(_class_kinds) > 4096:
            _class_kinds.clear()
        kind = _class_kinds[cls] = (context, plain)
    return kind


def _plain_state(obj: Any) -> dict[str, Any]:
    """The state of an object of a plain Python class: ``__dict__`` and slots."""
    cls = type(obj)
    state: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # private names are mangled
            value = getattr(obj, name, _UNSET)
            if value is not _UNSET:
                state[name] = value
    state.update(getattr(obj, "__dict__", {}))
    return state


_UNSET = object()


class _Unkeyable(Exception):
    """A value that can't be keyed by value (see the module docstring)."""

    def __init__(self, obj: Any) -> None:
        super().__init__(_qualified(type(obj)))
        self.type_name = _qualified(type(obj))


def _canon_class(cls: type, context: _Context) -> _Canon:
    # A pydantic model class (e.g. a structured-output ``response_format``) counts by its
    # JSON schema too, so changing its fields changes the key.
    schema = getattr(cls, "model_json_schema", None)
    if callable(schema):
        try:
            return ["class", _qualified(cls), _canon(schema(), context)]
        except Exception:
            pass
    return ["class", _qualified(cls)]


def _canon_numpy(obj: Any, context: _Context) -> _Canon:
    import numpy

    if isinstance(obj, numpy.ndarray):
        kind = _qualified(type(obj))
        shape: _Canon = list(obj.shape)
        if obj.dtype.hasobject:  # pointers, not values: go through the items
            return ["ndarray-objects", kind, shape, _canon(obj.tolist(), context)]
        form: list[_Canon] = [
            "ndarray",
            kind,
            str(obj.dtype),
            obj.dtype.str,
            shape,
            _digest(numpy.ascontiguousarray(obj).tobytes()),
        ]
        mask = getattr(obj, "mask", None)  # numpy.ma: the mask is part of the value
        if isinstance(mask, numpy.ndarray):
            form.append(_digest(numpy.ascontiguousarray(mask).tobytes()))
        return form
    if isinstance(obj, numpy.generic):
        return _canon(obj.item(), context)
    if isinstance(obj, numpy.dtype):
        return ["dtype", str(obj), obj.str]
    raise _Unkeyable(obj)


def _canon_pandas(obj: Any, context: _Context) -> _Canon:
    import pandas

    kind = _qualified(type(obj))
    if isinstance(obj, pandas.DataFrame):
        labels: _Canon = [
            "frame",
            _canon(list(obj.columns), context),
            [str(dtype) for dtype in obj.dtypes],
        ]
    elif isinstance(obj, pandas.Series):
        labels = ["series", _canon(obj.name, context), str(obj.dtype)]
    elif isinstance(obj, pandas.Index):
        labels = ["index", _canon(list(obj.names), context), str(obj.dtype)]
    elif isinstance(obj, pandas.api.extensions.ExtensionArray):
        return ["pandas-array", kind, _canon_pandas(pandas.Series(obj), context)]
    elif isinstance(obj, pandas.api.extensions.ExtensionDtype):
        return ["pandas-dtype", kind, str(obj)]
    elif (
        obj is pandas.NA
        or obj is pandas.NaT
        or hasattr(obj, "isoformat")
        or kind
        in (
            "pandas._libs.interval.Interval",
            "pandas._libs.tslibs.period.Period",
        )
    ):
        return ["pandas-scalar", kind, repr(obj)]  # NA, NaT, Timestamp, Timedelta...
    else:
        raise _Unkeyable(obj)
    index = (
        []
        if isinstance(obj, pandas.Index)
        else [
            _canon(list(obj.index.names), context),
            str(obj.index.dtype),
        ]
    )
    try:
        rows = pandas.util.hash_pandas_object(obj, index=not isinstance(obj, pandas.Index))
        content: _Canon = _digest(rows.to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): go through the values instead
        values = obj.to_numpy().tolist()
        items = values if isinstance(obj, pandas.Index) else [list(obj.index), values]
        content = ["values", _canon(items, context)]
    return ["pandas", kind, labels, *index, len(obj), content]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
