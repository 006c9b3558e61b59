"""The vocabulary of a call key's canonical form, shared by the modules that build it.

A call key (``_keys.call_key``) is a digest of a canonical JSON form: nested lists whose
first item is a tag string, and plain JSON scalars. This module holds what every part of
that form needs: the ``Canon`` type, the ``Context`` of one canonicalisation (the excluded
names, the containers being visited), the ``Unkeyable`` signal for a value with no key by
value, and the naming and digest helpers. It imports nothing of the package but
``_secret_names``, so the encoders above it (``_key_arrays``, ``_key_values``) and the
function side (``_key_functions``) share it without a cycle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeAlias

from rate_limited._secret_names import is_secret_name

__all__ = [
    "KEY_HEX_CHARS",
    "Canon",
    "Canonicalize",
    "Context",
    "Unkeyable",
    "digest",
    "qualified",
    "sort_key",
]

#: Length of a key (and of the code digests in a lambda's identity), in hex characters.
KEY_HEX_CHARS = 32

Canon: TypeAlias = "bool | int | str | list[Canon] | None"


class Context:
    """What one canonicalisation needs: the excluded names and the containers being visited."""

    __slots__ = ("active", "exclude")

    def __init__(self, exclude: frozenset[str]) -> None:
        self.exclude = exclude
        # ids of the containers on the current path, only to stop at cycles; never output.
        self.active: set[int] = set()

    def drops(self, name: str) -> bool:
        return name in self.exclude or is_secret_name(name)


#: The canonical form of any value (``_key_values.canon``), as handed to the encoders of
#: library types below it, which recurse through it into the values they hold.
Canonicalize: TypeAlias = Callable[[Any, Context], Canon]


class Unkeyable(Exception):
    """A value that can't be keyed by value (see ``_keys``'s docstring)."""

    def __init__(self, obj: Any) -> None:
        super().__init__(qualified(type(obj)))
        self.type_name = qualified(type(obj))


def qualified(obj: Any) -> str:
    """``module.qualname`` of a function or class (``builtins`` when it has no module)."""
    module = getattr(obj, "__module__", None) or "builtins"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return f"{module}.{qualname}"


def sort_key(item: Canon) -> str:
    """The order of canonical forms in an unordered container (a set, non-str dict keys)."""
    return json.dumps(item, separators=(",", ":"), ensure_ascii=True)


def digest(data: bytes) -> str:
    """The sha256 hex digest of bytes (an array's or a frame's content, hashed in bulk)."""
    return hashlib.sha256(data).hexdigest()
