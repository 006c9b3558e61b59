"""What a batch run keeps in the store, so that a restarted kernel resumes instead of paying twice.

Two kinds of records, next to the calls' outcomes and under keys of their own:

* a **chunk** (``rate_limited.batch/<family>/chunk/<id>``): the requests of one batch (their
  ``custom_id`` and call key), its model and prompt tokens, and how far it got:
  ``planned`` → ``uploaded`` (the input file's id) → ``creating`` (the instant before the
  create call, so that a process killed during it looks for the batch before creating
  another) → ``submitted`` (the batch id) → ``collected`` (every answer stored); with a
  budget, the token of the batch's reservation from ``creating`` to ``collected``;
* a **call** (``rate_limited.batch/<family>/call/<custom_id>``): the chunk that holds the
  request now, and how many batches it has been in.

Every step is written and flushed before the next request to the provider, so the store
always knows at least as much as the provider about what was paid for. The records are
``StoredOutcome`` s (a dict as their result), so every store backend keeps them, signed
like any outcome; ``len(store)`` counts them too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rate_limited.stores.base import Store, StoredOutcome

__all__ = ["CallRecord", "Chunk", "Records", "custom_id_of"]

ChunkState = Literal["planned", "uploaded", "creating", "submitted", "collected"]
_FUNCTION = "rate_limited.batch"


def custom_id_of(key: str) -> str:
    """The ``custom_id`` of a call's request: a hash of its store key (both providers
    accept it: 35 characters of ``[a-z0-9-]``)."""
    return "rl-" + hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class Chunk:
    """One batch's requests and how far the batch got."""

    id: str
    family: str
    #: ``custom_id -> call key`` of every request, in input order.
    keys: dict[str, str]
    model: str | None = None
    tokens: float = 0.0
    state: ChunkState = "planned"
    file_id: str | None = None
    batch_id: str | None = None
    #: Epoch seconds of the last step, to find a batch created by a killed process.
    stamp: float = field(default_factory=time.time)
    #: The budget's reservation for this batch (``_budget``): its token in the spend
    #: book, held from before the create request until the answers are collected.
    token: str | None = None
    reserved: float = 0.0

    @staticmethod
    def new(family: str, keys: dict[str, str], model: str | None, tokens: float) -> Chunk:
        salt = f"{time.time_ns()}:{family}:{','.join(keys)}"
        ident = hashlib.sha256(salt.encode()).hexdigest()[:24]
        return Chunk(ident, family, keys, model, tokens)

    @property
    def open(self) -> bool:
        return self.state != "collected"


@dataclass
class CallRecord:
    """Where one request is: the chunk holding it, and how many batches it was in."""

    chunk: str
    batches: int = 0


class Records:
    """Reads and writes the batch records of one provider family in a store."""

    def __init__(self, store: Store, family: str) -> None:
        self.store = store
        self.family = family
        self._prefix = f"rate_limited.batch/{family}/"

    def _put(self, key: str, value: dict[str, Any]) -> None:
        self.store.put(StoredOutcome(key, "succeeded", value, function=_FUNCTION))

    def save(
        self, chunks: Iterable[Chunk] = (), calls: dict[str, CallRecord] | None = None
    ) -> None:
        """Write chunks and call records, and flush: durable before the caller goes on."""
        for chunk in chunks:
            chunk.stamp = time.time()
            self._put(self._prefix + "chunk/" + chunk.id, asdict(chunk))
        for custom_id, record in (calls or {}).items():
            self._put(self._prefix + "call/" + custom_id, asdict(record))
        self.store.flush()

    def calls(self, custom_ids: Sequence[str]) -> dict[str, CallRecord]:
        keys = [self._prefix + "call/" + c for c in custom_ids]
        found = self.store.get_many(keys)
        return {
            key[len(self._prefix) + 5 :]: CallRecord(**record.result)
            for key, record in found.items()
        }

    def chunks(self, ids: Iterable[str]) -> dict[str, Chunk]:
        keys = [self._prefix + "chunk/" + c for c in dict.fromkeys(ids)]
        found = self.store.get_many(keys)
        return {record.result["id"]: Chunk(**record.result) for record in found.values()}
