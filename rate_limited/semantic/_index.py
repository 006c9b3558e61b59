"""The semantic index: embedded prompts of paid-for calls, searched by cosine similarity.

An entry is ``(partition, call key, redacted prompt text, unit vector)``; it points at an
outcome in the store, never holds one, so every answer still comes from a signed record
of the store (and an expired or deleted outcome is simply not served). The partition is
the scope of the call (everything but the compared text) with the embedder's name: a
search only ever looks inside one partition. Entries are added once per key.

The index lives with the store (``_backends.index_for``):

* ``MemoryStore``: numpy in this process (``MemoryIndex``);
* ``SqliteStore``: tables in the same file (``rate_limited.semantic._sqlite``), searched by
  sqlite-vec when this Python's sqlite3 can load extensions, else with numpy;
* ``RedisStore``: lists in the same Redis, mirrored into numpy in each process and caught
  up at each lookup (``rate_limited.semantic._redis``).

Persistent entries are signed with the store's secret (HMAC, as records are): whoever can
write to the file or the Redis server but does not hold the secret can't make a prompt be
answered by another call's outcome. An entry that fails its check is skipped and counted
in ``problems`` (the lookup step turns them into a warning).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.semantic._embed import numpy_module

if TYPE_CHECKING:
    import numpy


__all__ = ["DOMAIN", "Candidate", "MemoryIndex", "SemanticIndex", "Signer"]

#: ``signer(partition, key, text, vector bytes) -> mac`` (None: entries are not signed).
Signer = Callable[[bytes, bytes, bytes, bytes], bytes]
DOMAIN = b"rate_limited.semantic.entry/1\0"


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """An entry found by a search: the call it points at, its prompt and how close it is."""

    key: str
    text: str
    similarity: float


class SemanticIndex(abc.ABC):
    """Where entries are kept and searched; one per store, shared by its Runners."""

    #: How searches are done: "numpy", "sqlite-vec".
    backend: str = "numpy"

    def __init__(self) -> None:
        #: Entries skipped because their signature did not verify (messages), since the
        #: last ``take_problems()``.
        self.problems: list[str] = []

    @abc.abstractmethod
    def search(
        self, partition: str, vectors: numpy.ndarray[Any, Any], k: int
    ) -> list[list[Candidate]]:
        """For each row of ``vectors``, up to ``k`` entries of ``partition``, closest first."""

    @abc.abstractmethod
    def add(
        self,
        partition: str,
        entries: Sequence[tuple[str, str]],
        vectors: numpy.ndarray[Any, Any],
    ) -> None:
        """Add ``(key, text)`` entries with their vectors (a key already there is kept)."""

    def close(self) -> None:  # noqa: B027 - most indexes hold nothing open
        """Release what the index holds open."""

    def take_problems(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ({self.backend})>"


class Partition:
    """One partition's vectors in a growing numpy matrix, searched by a matrix product."""

    __slots__ = ("keys", "known", "size", "texts", "vectors")

    def __init__(self) -> None:
        self.vectors: numpy.ndarray[Any, Any] | None = None
        self.size = 0
        self.keys: list[str] = []
        self.texts: list[str] = []
        self.known: set[str] = set()

    def add(self, key: str, text: str, vector: numpy.ndarray[Any, Any]) -> None:
        if key in self.known:
            return
        np = numpy_module()
        if self.vectors is None:
            self.vectors = np.empty((16, vector.shape[0]), dtype=np.float32)
        elif vector.shape[0] != self.vectors.shape[1]:
            raise ValueError(
                f"a vector of {vector.shape[0]} dimensions for a partition of "
                f"{self.vectors.shape[1]}; the embedder changed its output size"
            )
        if self.size == self.vectors.shape[0]:
            grown = np.empty((2 * self.size, self.vectors.shape[1]), dtype=np.float32)
            grown[: self.size] = self.vectors
            self.vectors = grown
        self.vectors[self.size] = vector
        self.size += 1
        self.keys.append(key)
        self.texts.append(text)
        self.known.add(key)

    def search(self, queries: numpy.ndarray[Any, Any], k: int) -> list[list[Candidate]]:
        if self.vectors is None or self.size == 0:
            return [[] for _ in range(len(queries))]
        np = numpy_module()
        if queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(
                f"query vectors of {queries.shape[1]} dimensions for a partition of "
                f"{self.vectors.shape[1]}; the embedder changed its output size"
            )
        found: list[list[Candidate]] = []
        k = min(k, self.size)
        for start in range(0, len(queries), 256):  # bounds the similarity block's memory
            block = queries[start : start + 256] @ self.vectors[: self.size].T
            if k < self.size:
                top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            else:
                top = np.broadcast_to(np.arange(self.size), (len(block), self.size))
            for row, columns in zip(block, top, strict=True):
                ordered = sorted(columns.tolist(), key=lambda c: -row[c])
                found.append(
                    [Candidate(self.keys[c], self.texts[c], similarity(row[c])) for c in ordered]
                )
        return found


class MemoryIndex(SemanticIndex):
    """Entries in this process only (the index of a ``MemoryStore``)."""

    def __init__(self) -> None:
        super().__init__()
        self._partitions: dict[str, Partition] = {}

    def search(
        self, partition: str, vectors: numpy.ndarray[Any, Any], k: int
    ) -> list[list[Candidate]]:
        found = self._partitions.get(partition)
        if found is None:
            return [[] for _ in range(len(vectors))]
        return found.search(vectors, k)

    def add(
        self,
        partition: str,
        entries: Sequence[tuple[str, str]],
        vectors: numpy.ndarray[Any, Any],
    ) -> None:
        target = self._partitions.setdefault(partition, Partition())
        for (key, text), vector in zip(entries, vectors, strict=True):
            target.add(key, text, vector)

    def __len__(self) -> int:
        return sum(p.size for p in self._partitions.values())


def similarity(value: object) -> float:
    """A cosine similarity as a float, rounding noise past 1 or -1 clipped."""
    return min(1.0, max(-1.0, float(value)))  # type: ignore[arg-type]


def sign_entry(signer: Signer, partition: str, key: str, text: str, vector: bytes) -> bytes:
    return signer(partition.encode(), key.encode(), text.encode("utf-8", "surrogatepass"), vector)
