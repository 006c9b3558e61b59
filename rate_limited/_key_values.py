"""The canonical form of a call's values, kind by kind: what makes two arguments "the same".

``canon`` turns one value into nested lists whose first item is a tag string, with plain
JSON scalars: str, int, bool and None stand for themselves, floats are exact, containers
are tagged (dicts order-independent, sets sorted), and further kinds count by value:
enums, datetimes, Decimals, UUIDs, paths, pydantic models, dataclasses, attrs classes,
numpy and pandas values (``_key_arrays``), objects of plain Python classes by their state
(``__dict__`` and slots). Clients, sessions, locks and loops of the libraries in
``CONTEXT_MODULES`` count by type only; anything else raises ``Unkeyable``. Functions met as
values (and the function a call runs) count by ``identity``, which holds a lambda's code
digest and a nested function's defaults and closure values: identity and value forms
recurse into each other, so they live together here. The dispatch runs for every argument
of every call scheduled; the common kinds are tested first by exact type.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import json
import pathlib
import re
import types
import uuid
from collections.abc import Mapping
from typing import Any

from rate_limited._key_arrays import canon_numpy, canon_pandas
from rate_limited._key_form import KEY_HEX_CHARS, Canon, Context, Unkeyable, qualified, sort_key
from rate_limited._key_functions import unwrap_partial

__all__ = ["CONTEXT_MODULES", "canon", "identity"]

_PLAIN_TYPES: dict[type, str] = {
    datetime.datetime: "datetime",
    datetime.date: "date",
    datetime.time: "time",
    datetime.timedelta: "timedelta",
    decimal.Decimal: "decimal",
    uuid.UUID: "uuid",
}


def identity(function: Any, context: Context) -> Canon:
    """The canonical identity of the function a call runs (or of a function value)."""
    if isinstance(function, types.MethodType):
        owner = function.__self__
        owner_type = owner if isinstance(owner, type) else type(owner)
        return ["method", qualified(function.__func__), qualified(owner_type)]
    if isinstance(function, types.FunctionType):
        name = qualified(function)
        if function.__name__ == "<lambda>":
            return ["lambda", name, _code_digest(function.__code__), *_state(function, context)]
        if "<locals>" in function.__qualname__:
            return ["local", name, *_state(function, context)]
        return ["function", name]
    if isinstance(function, types.BuiltinFunctionType):
        owner = function.__self__
        if owner is None or isinstance(owner, types.ModuleType):
            return ["builtin", qualified(function)]
        owner_type = owner if isinstance(owner, type) else type(owner)
        return ["builtin-method", qualified(owner_type), function.__name__]
    if isinstance(function, type):
        return ["class", qualified(function)]
    return ["callable", qualified(type(function))]


def _state(function: types.FunctionType, context: Context) -> list[Canon]:
    """Defaults and closure values: what tells apart two functions made by one factory."""
    defaults = canon(list(function.__defaults__ or ()), context)
    kwdefaults = canon(dict(function.__kwdefaults__ or {}), context)
    cells: list[Any] = []
    for cell in function.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # an empty cell: the variable was not assigned yet
            cells.append(None)
    return [defaults, kwdefaults, canon(cells, context)]


def _code_digest(code: types.CodeType) -> str:
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest.update(_code_digest(const).encode())
        else:
            digest.update(json.dumps(canon(const, Context(frozenset()))).encode())
        digest.update(b"\0")
    digest.update("\0".join(code.co_names).encode())
    return digest.hexdigest()[:KEY_HEX_CHARS]


def canon(obj: Any, context: Context) -> Canon:
    """The canonical JSON form of one value; every container form starts with a tag string."""
    kind = type(obj)
    if kind is str or kind is int or obj is None or kind is bool:
        return obj  # type: ignore[no-any-return]
    if kind is float:
        return ["float", float.__repr__(obj)]
    if kind is dict or kind is list or kind is tuple:
        return _visit(obj, context)
    return _canon_other(obj, context)


def _canon_other(obj: Any, context: Context) -> Canon:
    if isinstance(obj, enum.Enum):
        return ["enum", qualified(type(obj)), canon(obj.value, context)]
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


def _visit(obj: Any, context: Context) -> Canon:
    if id(obj) in context.active:
        return ["cycle"]
    context.active.add(id(obj))
    try:
        return _canon_container(obj, context)
    finally:
        context.active.discard(id(obj))


def _canon_container(obj: Any, context: Context) -> Canon:
    if isinstance(obj, dict) or (not isinstance(obj, (list, tuple)) and isinstance(obj, Mapping)):
        pairs: list[tuple[str, Canon]] = []
        for name, value in obj.items():
            if isinstance(name, str) and context.drops(name):
                continue
            pair: list[Canon] = [canon(name, context), canon(value, context)]
            # str keys (nearly all) sort by themselves, before all others.
            order = f"s{name}" if isinstance(name, str) else f"z{sort_key(pair[0])}"
            pairs.append((order, pair))
        pairs.sort(key=lambda p: p[0])
        return ["dict", *(pair for _, pair in pairs)]
    if isinstance(obj, list):
        return ["list", *(canon(item, context) for item in obj)]
    if isinstance(obj, tuple):
        tag = "tuple" if type(obj) is tuple else f"tuple:{qualified(type(obj))}"
        return [tag, *(canon(item, context) for item in obj)]
    if isinstance(obj, (set, frozenset)):
        items = [canon(item, context) for item in obj]
        return ["set", *sorted(items, key=sort_key)]
    if isinstance(obj, type):
        return _canon_class(obj, context)
    if isinstance(
        obj,
        (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial),
    ):
        function, args, kwargs = unwrap_partial(obj, (), {})
        partial_args = canon([list(args), kwargs], context) if obj is not function else None
        return ["function", identity(function, context), partial_args]
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and hasattr(type(obj), "model_fields"):
        try:
            data = dump(mode="json")
        except Exception:  # fields JSON can't show (arbitrary types): their values then
            try:
                data = dump()
            except Exception:
                raise Unkeyable(obj) from None
        return ["model", qualified(type(obj)), canon(data, context)]
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return ["dataclass", qualified(type(obj)), canon(fields, context)]
    cls = type(obj)
    module = cls.__module__ or ""
    if module == "numpy" or module.startswith("numpy."):
        return canon_numpy(obj, context, canon)
    if module == "pandas" or module.startswith("pandas."):
        return canon_pandas(obj, context, canon)
    attributes = getattr(cls, "__attrs_attrs__", None)
    if attributes is not None:  # an attrs class
        fields = {a.name: getattr(obj, a.name) for a in attributes}
        return ["attrs", qualified(cls), canon(fields, context)]
    context_type, plain = _class_kind(cls)
    if context_type:
        return ["object", qualified(cls)]
    if isinstance(obj, types.SimpleNamespace):
        return ["namespace", canon(vars(obj), context)]
    if isinstance(obj, (range, slice)):
        return [cls.__name__, canon([obj.start, obj.stop, obj.step], context)]
    if isinstance(obj, re.Pattern):
        return ["pattern", canon(obj.pattern, context), obj.flags]
    if isinstance(obj, types.ModuleType):
        return ["module", obj.__name__]
    if isinstance(obj, collections.deque):
        return ["deque", *(canon(item, context) for item in obj)]
    if not plain:
        raise Unkeyable(obj)
    return ["state", qualified(cls), canon(_plain_state(obj), context)]


#: Libraries whose objects are context (clients, sessions, connections, locks, loops...):
#: a call's key counts them by type only. An API client holds a key and a connection
#: pool, not data of the request.
CONTEXT_MODULES = (
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
    library in ``CONTEXT_MODULES``, and whether its instances keep all their state in
    ``__dict__`` and slots (every class of its MRO but ``object`` is a Python class, none
    a C type keeping data of its own, such as an array, image or tensor type)."""
    kind = _class_kinds.get(cls)
    if kind is None:
        modules = [getattr(k, "__module__", None) or "" for k in cls.__mro__]
        context = any(
            module == m or module.startswith(m + ".") for module in modules for m in CONTEXT_MODULES
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


def _canon_class(cls: type, context: Context) -> Canon:
    # A pydantic model class (e.g. a structured-output ``response_format``) counts by its
    # JSON schema too, so changing its fields changes the key.
    schema = getattr(cls, "model_json_schema", None)
    if callable(schema):
        try:
            return ["class", qualified(cls), canon(schema(), context)]
        except Exception:
            pass
    return ["class", qualified(cls)]
