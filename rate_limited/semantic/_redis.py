"""The semantic index of a Redis store: one Redis list per partition, searched with numpy.

Plain Redis has no vector search (that takes the Redis Query Engine of Redis Stack / 8),
so each process keeps a numpy copy of the partitions it searches and catches up with the
entries other processes appended (``LRANGE`` from the last one it read) at every search:
a restarted kernel rebuilds its copy from Redis on its first lookup. An entry is
``rs1\\n`` + JSON (call key, redacted text, signature) + ``\\n`` + the float32 vector;
lists live under ``rate_limited:semantic:[<namespace>:]<partition>`` beside the store's
records and, like them, are shared by every process using the same Redis and secret.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import StoreUnavailableError
from rate_limited.semantic._embed import numpy_module
from rate_limited.semantic._index import (
    Candidate,
    Partition,
    SemanticIndex,
    Signer,
    sign_entry,
)

if TYPE_CHECKING:
    import numpy

    from rate_limited.stores import RedisStore

__all__ = ["RedisIndex"]

_MAGIC = b"rs1\n"
_PAGE = 1000


class RedisIndex(SemanticIndex):
    """Entries in the Redis server of ``store``, mirrored into numpy per partition."""

    def __init__(self, store: RedisStore, *, signer: Signer) -> None:
        super().__init__()
        self._client: Any = store._client  # the store's connection pool
        self._errors: Any = store._errors
        self._prefix = "rate_limited:semantic:" + (f"{store.namespace}:" if store.namespace else "")
        self._where = f"Redis at {store.url}"
        self._sign = signer
        self._lock = threading.Lock()
        self._partitions: dict[str, tuple[Partition, int]] = {}

    def add(
        self,
        partition: str,
        entries: Sequence[tuple[str, str]],
        vectors: numpy.ndarray[Any, Any],
    ) -> None:
        np = numpy_module()
        values = []
        for (key, text), vector in zip(entries, vectors, strict=True):
            blob = np.asarray(vector, dtype="<f4").tobytes()
            mac = sign_entry(self._sign, partition, key, text, blob)
            meta = json.dumps({"key": key, "mac": mac.hex(), "text": text}, ensure_ascii=True)
            values.append(b"".join((_MAGIC, meta.encode("ascii"), b"\n", blob)))
        if values:
            self._call("append to", self._client.rpush, self._prefix + partition, *values)

    def search(
        self, partition: str, vectors: numpy.ndarray[Any, Any], k: int
    ) -> list[list[Candidate]]:
        with self._lock:
            held, read = self._partitions.get(partition, (None, 0))
            target = held if held is not None else Partition()
            name = self._prefix + partition
            while True:
                page: list[bytes] = self._call(
                    "read", self._client.lrange, name, read, read + _PAGE - 1
                )
                for value in page:
                    self._load(partition, target, value)
                read += len(page)
                if len(page) < _PAGE:
                    break
            self._partitions[partition] = (target, read)
        return target.search(vectors, k)

    def _load(self, partition: str, target: Partition, value: bytes) -> None:
        np = numpy_module()
        try:
            if not value.startswith(_MAGIC):
                raise ValueError("not a semantic index entry")
            end = value.index(b"\n", len(_MAGIC))
            meta = json.loads(value[len(_MAGIC) : end])
            key, text, mac = meta["key"], meta["text"], bytes.fromhex(meta["mac"])
            blob = value[end + 1 :]
            valid = sign_entry(self._sign, partition, key, text, blob) == mac
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(f"an unreadable semantic index entry in {self._where}: {exc}")
            return
        if not valid:
            self.problems.append(
                f"semantic index entry for call {key} in {self._where} has a bad signature "
                "(written with another secret, or changed outside rate_limited); skipped"
            )
            return
        target.add(key, text, np.frombuffer(blob, dtype="<f4"))

    def _call(self, what: str, command: Any, *args: Any) -> Any:
        try:
            return command(*args)
        except self._errors as exc:
            raise StoreUnavailableError(
                f"could not {what} the semantic index in {self._where}: {exc}"
            ) from exc
