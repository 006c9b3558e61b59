"""Stores: where finished calls are kept, so a run resumes and repeated calls are not paid twice.

``open_store(spec)`` picks the backend from a URL, as ``limits`` does:

- ``None`` or ``"memory://"``: ``MemoryStore``, this process only (the default).
- ``"sqlite:///runs.db"`` (relative), ``"sqlite:////abs/runs.db"`` (absolute),
  ``"sqlite:///:memory:"``, or a plain path / ``PathLike``: ``SqliteStore``, one file that
  survives crashes and kernel restarts.
- ``"redis://host:6379/0"``, ``"rediss://..."``, ``"unix:///run/redis.sock"``: ``RedisStore``,
  shared by processes and machines; ``?prefix=NAME`` or ``namespace=`` separates stores.

Trust model. Results are pickled (pydantic models: class name and JSON), and decoding them
can run arbitrary code, so every record is signed with HMAC-SHA256 under a secret and is
decoded only if its signature verifies; a record that fails raises ``StoreIntegrityError``
naming its key (rather than being skipped silently) and is never unpickled. So
only holders of the secret can write records that will be unpickled: anyone who can merely
write to the file or the Redis server (a shared disk, a Redis shared with other machines)
can delete or corrupt records, but cannot make this process run their code. The secret is
``secret=``, else ``$RATE_LIMITED_STORE_SECRET``, else a random one created on first use
and readable by its owner only (0600): ``<database>.key`` beside a SQLite file (copy it
with the database), ``~/.config/rate_limited/secret`` for Redis (give every machine that
shares a Redis store the same secret through the environment variable). Whoever can read
the secret can forge records, so keep it as private as the API keys the calls use.
Status, attempts, usage, timestamps, error and function are plain JSON beside the pickle,
readable without unpickling.
"""

from __future__ import annotations

import os

from rate_limited.exceptions import ArgumentTypeError, ConfigurationError
from rate_limited.stores.base import (
    Store,
    StoreCorruptedError,
    StoredOutcome,
    StoreError,
    StoreIntegrityError,
    StoreSerializationError,
    StoreUnavailableError,
    StoreVersionError,
    UnknownStoreError,
)
from rate_limited.stores.memory import MemoryStore
from rate_limited.stores.redis import RedisStore  # imports redis-py only when one is opened
from rate_limited.stores.sqlite import SqliteStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreCorruptedError",
    "StoreError",
    "StoreIntegrityError",
    "StoreSerializationError",
    "StoreUnavailableError",
    "StoreVersionError",
    "StoredOutcome",
    "UnknownStoreError",
    "open_store",
]

SUPPORTED = (
    "None or 'memory://'",
    "'sqlite:///relative/runs.db', 'sqlite:////absolute/runs.db', 'sqlite:///:memory:' "
    "or a plain file path",
    "'redis://host:6379/0', 'rediss://...' or 'unix:///path/to/redis.sock'",
)


def open_store(
    spec: str | os.PathLike[str] | Store | None = None,
    *,
    ttl: float | None = None,
    secret: bytes | str | None = None,
    namespace: str | None = None,
    flush_size: int = 256,
    flush_interval: float = 0.2,
    claim_ttl: float = 60.0,
) -> Store:
    """The store ``spec`` names (see the module docstring), opened and ready.

    ``ttl``: seconds after which a record counts as absent. ``secret``: the key that signs
    records (else ``$RATE_LIMITED_STORE_SECRET``, else a per-store key file; a memory store
    needs none). ``namespace``: a Redis key prefix. ``flush_size`` / ``flush_interval``:
    when buffered writes go out by themselves. ``claim_ttl``: seconds a worker's claim on a
    call lasts unless renewed (a dead worker's calls are taken over after it). Opening
    fails early, with
    ``StoreUnavailableError``, ``StoreCorruptedError`` or ``StoreVersionError``, when the
    store can't be used; an unknown URL scheme raises ``UnknownStoreError``.
    """
    if isinstance(spec, Store):
        if ttl is not None or secret is not None or namespace is not None:
            raise ConfigurationError(
                "ttl, secret and namespace configure a store that open_store creates; "
                f"{spec!r} is already open, so pass them to its constructor instead"
            )
        return spec

    def sqlite(path: str | os.PathLike[str]) -> SqliteStore:
        _no_namespace(path, namespace)
        return SqliteStore(
            path,
            ttl=ttl,
            secret=secret,
            flush_size=flush_size,
            flush_interval=flush_interval,
            claim_ttl=claim_ttl,
        )

    if spec is None:
        return _memory(ttl, namespace)
    if isinstance(spec, os.PathLike):
        return sqlite(spec)
    if not isinstance(spec, str):
        raise ArgumentTypeError(
            f"store must be a URL, a path, a Store or None, not {type(spec).__name__}"
        )
    if not spec:
        raise UnknownStoreError("store must not be an empty string; supported: " + _supported())
    scheme, separator, rest = spec.partition("://")
    if not separator:
        return sqlite(spec)
    scheme = scheme.lower()
    if scheme == "memory":
        if rest:
            raise UnknownStoreError(f"'memory://' takes nothing after it, got {spec!r}")
        return _memory(ttl, namespace)
    if scheme == "sqlite":
        path = _sqlite_path(spec, rest)
        return sqlite(path)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(
            spec,
            namespace=namespace,
            ttl=ttl,
            secret=secret,
            flush_size=flush_size,
            flush_interval=flush_interval,
            claim_ttl=claim_ttl,
        )
    raise UnknownStoreError(f"unknown store {spec!r}: supported are {_supported()}")


def _supported() -> str:
    return "; ".join(SUPPORTED)


def _memory(ttl: float | None, namespace: str | None) -> MemoryStore:
    _no_namespace("memory://", namespace)
    return MemoryStore(ttl=ttl)


def _no_namespace(spec: str | os.PathLike[str], namespace: str | None) -> None:
    if namespace is not None:
        raise ConfigurationError(
            f"namespace= applies to Redis stores only, not {os.fspath(spec)!r}; use another "
            "file, or call_key(..., namespace=...) to keep runs apart in one store"
        )


def _sqlite_path(spec: str, rest: str) -> str:
    if not rest:
        return ":memory:"  # "sqlite://", as SQLAlchemy reads it
    if not rest.startswith("/") or rest == "/":
        raise UnknownStoreError(
            f"can't read {spec!r} as a SQLite store: write 'sqlite:///relative/runs.db', "
            "'sqlite:////absolute/runs.db' or 'sqlite:///:memory:'"
        )
    return rest[1:]
