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
  in ``_key_values.CONTEXT_MODULES``: openai, anthropic, httpx, requests, aiohttp, redis,
  asyncio, threading...) are context and count by their type's qualified name only.
- Anything else (a C extension object the package can't read, a file handle, a
  generator...) has no key by value: ``call_key`` raises ``ConfigurationError`` asking for
  ``key=``. Keying it by type would give different calls one key, and a store would hand
  one call's result to the others.
- Secrets never reach a key: arguments and dict keys (at any depth, e.g. in
  ``extra_headers``) named like api_key, authorization, auth, \\*token (but not
  ``max_tokens`` and other counts), secret, password or cookie are dropped, and so are the
  names given in ``exclude``.

This module is the entry point and the key's envelope (version, namespace, digest); the
parts live beside it: ``_key_functions`` (a function's readable name, ``partial``
unwrapping, arguments bound to parameter names), ``_key_values`` (the canonical form of
values kind by kind, and of functions), ``_key_arrays`` (numpy and pandas by content) and
``_key_form`` (the vocabulary they share).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from rate_limited._key_form import KEY_HEX_CHARS, Canon, Context, Unkeyable
from rate_limited._key_functions import bind, function_identity, unwrap_partial
from rate_limited._key_values import canon, identity
from rate_limited._secret_names import is_secret_name
from rate_limited.exceptions import ConfigurationError

__all__ = ["KEY_VERSION", "call_key", "function_identity", "is_secret_name"]

#: Bumped whenever the canonical form changes, so old keys never alias new ones.
KEY_VERSION = 1


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
    context = Context(names)
    function, args, merged = unwrap_partial(function, tuple(args), dict(kwargs or {}))
    bound = bind(function, args, merged)
    try:
        function_form = identity(function, context)
        if bound is None:
            arguments: Canon = ["unbound", canon(list(args), context), canon(merged, context)]
        else:
            arguments = canon(bound, context)
    except Unkeyable as exc:
        raise _unkeyable_error(exc, function, args, merged, bound, names) from None
    payload = ["rate_limited.call_key", KEY_VERSION, namespace, function_form, arguments]
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:KEY_HEX_CHARS]


def _unkeyable_error(
    exc: Unkeyable,
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
            canon(value, Context(exclude))
        except Unkeyable:
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
