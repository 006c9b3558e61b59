"""Which semantic index lives with which store: ``index_for(store)``.

A SQLite file gets a ``SqliteIndex`` next to it, Redis a ``RedisIndex`` in the same
database, a memory store (or SQLite ``:memory:``) a ``MemoryIndex``; one per store
object, shared by every cache and Runner using it, closed with the store. Apart from
``_index`` (the interface), which the backends build on.
"""

from __future__ import annotations

import threading
import weakref

from rate_limited.semantic._index import DOMAIN, MemoryIndex, SemanticIndex, Signer
from rate_limited.stores.base import Store

__all__ = ["index_for"]

_indexes: weakref.WeakKeyDictionary[Store, SemanticIndex] = weakref.WeakKeyDictionary()
_indexes_lock = threading.Lock()


def index_for(store: Store) -> SemanticIndex:
    """The semantic index that lives with ``store`` (see the module docstring): one per
    store object, shared by every cache and Runner using it, closed with the store."""
    with _indexes_lock:
        found = _indexes.get(store)
        if found is None:
            found = _indexes[store] = _new_index(store)
            weakref.finalize(store, found.close)
        return found


def _new_index(store: Store) -> SemanticIndex:
    from rate_limited.stores import MemoryStore, RedisStore, SqliteStore

    if isinstance(store, SqliteStore) and store.path != ":memory:":
        from rate_limited.semantic._sqlite import SqliteIndex

        return SqliteIndex(store.path, signer=_signer(store))
    if isinstance(store, RedisStore):
        from rate_limited.semantic._redis import RedisIndex

        return RedisIndex(store, signer=_signer(store))
    if isinstance(store, MemoryStore | SqliteStore):  # SQLite ":memory:" lives as long as we do
        return MemoryIndex()
    raise TypeError(
        f"the semantic cache has no index for {type(store).__name__}; use a MemoryStore, "
        "a SqliteStore or a RedisStore"
    )


def _signer(store: Store) -> Signer:
    # The store's Codec holds its secret; entries are signed in a domain of their own.
    codec = store._codec  # type: ignore[attr-defined]

    def sign(partition: bytes, key: bytes, text: bytes, vector: bytes) -> bytes:
        signature: bytes = codec.sign(DOMAIN, partition, key, text, vector)
        return signature

    return sign
