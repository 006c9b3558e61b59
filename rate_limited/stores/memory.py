"""MemoryStore: outcomes in a dict, for one process; the default when no store is given.

Nothing is serialised: ``get_many`` hands back the very objects that were put, so there is
no pickling cost and no trust question. Everything is gone when the process ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rate_limited.stores.base import Store, StoredOutcome

__all__ = ["MemoryStore"]

_PAGE = 1000


class MemoryStore(Store):
    """Outcomes kept in this process's memory; ``put`` needs no flush."""

    def __init__(self, *, ttl: float | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(ttl=ttl, flush_size=1, flush_interval=0.0, clock=clock)
        self._records: dict[str, StoredOutcome] = {}

    def __repr__(self) -> str:
        return "MemoryStore()"

    def put(self, record: StoredOutcome) -> None:
        with self._lock:
            self._check_open()
            self._records[record.key] = record

    def _encode(self, record: StoredOutcome) -> Any:
        return record

    def _write(self, items: list[Any]) -> None:
        for record in items:
            self._records[record.key] = record

    def _read(self, keys: list[str], now: float) -> Iterable[StoredOutcome]:
        records = self._records
        return [records[key] for key in keys if key in records]

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self._records.pop(key, None)

    def _clear(self) -> None:
        self._records.clear()

    def _count(self, now: float) -> int:
        if self.ttl is None and not any(r.expires_at is not None for r in self._records.values()):
            return len(self._records)
        return sum(1 for record in self._records.values() if self._is_live(record, now))

    def _iter(self, now: float) -> Iterator[StoredOutcome]:
        with self._lock:
            keys = list(self._records)
        for start in range(0, len(keys), _PAGE):
            with self._lock:
                page = [self._records.get(key) for key in keys[start : start + _PAGE]]
            yield from (record for record in page if record is not None)

    def _close(self) -> None:
        self._records.clear()
