"""The store interface: what the engine asks of every backend, and the write buffer they share.

The engine calls a store from one thread (its event loop's), so every method is quick; they
are also safe to call from another thread (``Runner.snapshot()`` reads while a run writes),
because each store serialises its own calls with a lock. Writes are buffered: ``put`` keeps
the record and ``flush`` writes the buffer in one small transaction, by itself once
``flush_size`` records wait or the oldest has waited ``flush_interval`` seconds (checked on
``put`` and by ``maybe_flush``). A process killed with SIGKILL loses at most the records put
since the last flush. Reads see buffered records as if they were written.

A flush that fails (a full disk, Redis gone) keeps the records buffered. ``flush()`` raises
the error; the flushes ``put`` and ``try_flush`` attempt by themselves never raise it, and
after a failure wait a growing delay (``retry_in``, 0.05 s doubling to 5 s) before the next
attempt, so a failing store does not rewrite a growing buffer on every ``put``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "ClaimState",
    "Store",
    "StoreCorruptedError",
    "StoreError",
    "StoreIntegrityError",
    "StoreSerializationError",
    "StoreUnavailableError",
    "StoreVersionError",
    "StoredOutcome",
    "UnknownStoreError",
]


# The exceptions live in rate_limited.exceptions (one tree for the package).
from rate_limited._gc import bulk_allocation
from rate_limited.exceptions import (
    ConfigurationError,
    StoreCorruptedError,
    StoreError,
    StoreIntegrityError,
    StoreSerializationError,
    StoreUnavailableError,
    StoreVersionError,
    UnknownStoreError,
)

#: Statuses a stored outcome can have.
STATUSES = ("succeeded", "failed")

#: Seconds before retrying a failed flush: the first delay, doubling up to the last.
_RETRY_FIRST, _RETRY_MAX = 0.05, 5.0


@dataclasses.dataclass(slots=True)
class StoredOutcome:
    """One finished call as a store keeps it: its result and plain facts about how it went."""

    #: The call's key (see ``rate_limited._keys.call_key``).
    key: str
    #: ``"succeeded"`` or ``"failed"``.
    status: str
    #: The value the call returned (None for a failed call).
    result: Any = None
    #: ``"ExcType: message"`` of the last error; never the exception object.
    error: str | None = None
    #: Attempts made, retries included.
    attempts: int = 1
    #: Usage billed per resource name.
    usage: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Wall-clock epoch seconds when the first attempt started, if known.
    started_at: float | None = None
    #: Wall-clock epoch seconds when the call finished.
    finished_at: float = dataclasses.field(default_factory=time.time)
    #: The function's readable identity, for humans (``function_identity``).
    function: str = ""
    #: Wall-clock epoch seconds after which the record counts as absent, if any.
    expires_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimState:
    """What ``Store.claim_states`` found for one key."""

    #: ``"ours"``, ``"taken"`` or ``"stored"`` (see ``Store.claim``).
    answer: str
    #: For ``"taken"``: the holder string of the claim in the way (see
    #: ``rate_limited._holder``); for ``"ours"``: the ended holder (one of ``take_over``)
    #: whose unexpired claim this one replaced, if any.
    holder: str | None = None
    #: Wall-clock epoch seconds when that claim lapses (lapsed) unless renewed.
    expires_at: float | None = None


_S = TypeVar("_S", bound="Store")
_OURS, _STORED = ClaimState("ours"), ClaimState("stored")


def _gc_paused(count: int) -> contextlib.AbstractContextManager[None]:
    """Pause the cyclic garbage collector while ``count`` records are decoded at once:
    unpickling 100,000 results makes millions of objects (see ``rate_limited._gc``)."""
    return bulk_allocation(count)


class Store(abc.ABC):
    """A durable map from call key to ``StoredOutcome``; see the module docstring.

    ``ttl`` is a maximum age in seconds: a record whose ``finished_at`` is older counts as
    absent (as does one past its own ``expires_at``). ``clock`` gives wall-clock epoch
    seconds and is there for tests.
    """

    def __init__(
        self,
        *,
        ttl: float | None = None,
        flush_size: int = 256,
        flush_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
        claim_ttl: float = 60.0,
    ) -> None:
        if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
            raise ConfigurationError(
                f"ttl must be a positive number of seconds or None, not {ttl!r}"
            )
        if flush_size < 1:
            raise ConfigurationError(f"flush_size must be at least 1, not {flush_size!r}")
        if not flush_interval >= 0:
            raise ConfigurationError(f"flush_interval must be >= 0 seconds, not {flush_interval!r}")
        if not (claim_ttl > 0 and math.isfinite(claim_ttl)):
            raise ConfigurationError(
                f"claim_ttl must be a positive number of seconds, not {claim_ttl!r}"
            )
        #: Maximum age of a record in seconds (None: records never expire by age).
        self.ttl = ttl
        #: Seconds a claim lasts unless its holder renews it (see ``claim``): how long the
        #: calls of a worker that died wait before another worker takes them over.
        self.claim_ttl = float(claim_ttl)
        #: Buffered records that trigger a flush.
        self.flush_size = flush_size
        #: Seconds the oldest buffered record may wait before a flush.
        self.flush_interval = flush_interval
        self._clock = clock
        self._lock = threading.RLock()
        # key -> (record, the backend's encoded form of it)
        self._pending: dict[str, tuple[StoredOutcome, Any]] = {}
        self._pending_since: float | None = None
        self._closed = False
        #: The error of the last flush, if it failed (None once a flush succeeds).
        self.flush_error: StoreError | None = None
        self._flush_failures = 0
        self._retry_at = -math.inf

    # -- what the engine calls ---------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock (epoch seconds) records are dated and aged by."""
        return getattr(self, "_clock", time.time)

    def get_many(self, keys: Sequence[str]) -> dict[str, StoredOutcome]:
        """The present, unexpired records among ``keys``, by key."""
        with self._lock:
            self._check_open()
            now = self._clock()
            found: dict[str, StoredOutcome] = {}
            missing: list[str] = []
            for key in dict.fromkeys(keys):
                pending = self._pending.get(key)
                if pending is None:
                    missing.append(key)
                elif self._is_live(pending[0], now):
                    found[key] = pending[0]
            if missing:
                with _gc_paused(len(missing)):
                    records = self._read(missing, now)
                for record in records:
                    if self._is_live(record, now):
                        found[record.key] = record
            return found

    def get(self, key: str) -> StoredOutcome | None:
        """The record of ``key``, or None when it is absent or expired."""
        return self.get_many([key]).get(key)

    def put(self, record: StoredOutcome) -> None:
        """Buffer ``record`` (replacing any record of its key); flush when the buffer is due.

        The result is serialised now, so an unpicklable one raises StoreSerializationError
        here, and later changes to the object are not stored.
        """
        with self._lock:
            self._check_open()
            encoded = self._encode(record)
            self._pending.pop(record.key, None)
            self._pending[record.key] = (record, encoded)
            now = self._clock()
            if self._pending_since is None:
                self._pending_since = now
            if len(self._pending) >= self.flush_size or self._flush_due(now):
                self.try_flush()

    def flush(self) -> None:
        """Write every buffered record, in one transaction. A failed flush keeps them
        (and raises)."""
        with self._lock:
            if not self._pending:
                return
            self._check_open()
            try:
                self._write([encoded for _, encoded in self._pending.values()])
            except StoreError as exc:
                self.flush_error = exc
                self._flush_failures += 1
                delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** min(self._flush_failures - 1, 20))
                self._retry_at = self._clock() + delay
                raise
            self._pending.clear()
            self._pending_since = None
            self.flush_error, self._flush_failures, self._retry_at = None, 0, -math.inf

    def try_flush(self, force: bool = False) -> bool:
        """Flush, without raising a store error: True when nothing is left buffered.

        After a failed flush it waits ``retry_in()`` seconds before trying again (unless
        ``force``); the error is in ``flush_error``.
        """
        with self._lock:
            if not self._pending:
                return True
            if not force and self._clock() < self._retry_at:
                return False
            try:
                self.flush()
            except StoreError:
                return False
            return True

    def retry_in(self) -> float:
        """Seconds until a failed flush may be tried again by ``try_flush`` (0 if now)."""
        with self._lock:
            return max(0.0, self._retry_at - self._clock())

    def pending_keys(self) -> list[str]:
        """Keys of the records buffered and not written yet."""
        with self._lock:
            return list(self._pending)

    def maybe_flush(self) -> bool:
        """Flush if the oldest buffered record has waited ``flush_interval``; True if it did.

        ``put`` checks this by itself; call it from a timer when no more puts may come soon.
        """
        with self._lock:
            if self._closed or not self._pending or not self._flush_due(self._clock()):
                return False
            return self.try_flush()

    # -- claims: who sends a call, when several processes share the store -----------------

    #: Whether other processes see this store's claims (then Runners on it share the work:
    #: each call is sent by the one that claims it first, see ``rate_limited._claims``).
    shares_work: bool = False

    def claim(
        self,
        keys: Sequence[str],
        holder: str,
        *,
        over_records: bool = False,
        take_over: Collection[str] = (),
    ) -> dict[str, str]:
        """Claim ``keys`` for ``holder`` for ``claim_ttl`` seconds (a key it holds already
        is renewed). Per key: ``"ours"``; ``"taken"`` (another holder's claim has not
        expired); or ``"stored"`` (its outcome is stored or buffered, so nobody needs to
        claim it; ``over_records`` claims it anyway, to send a failed call again).
        ``take_over``: holders known to have ended, whose claims count as expired (never
        pass a live one: its call would be sent twice)."""
        states = self.claim_states(keys, holder, over_records=over_records, take_over=take_over)
        return {key: state.answer for key, state in states.items()}

    def claim_states(
        self,
        keys: Sequence[str],
        holder: str,
        *,
        over_records: bool = False,
        take_over: Collection[str] = (),
    ) -> dict[str, ClaimState]:
        """``claim``, telling for each ``"taken"`` key who holds it and until when."""
        with self._lock:
            self._check_open()
            found: dict[str, ClaimState] = {}
            rest: list[str] = []
            for key in dict.fromkeys(keys):
                if key in self._pending and not over_records:
                    found[key] = _STORED
                else:
                    rest.append(key)
            if rest:
                ended = frozenset(take_over) - {holder}
                found.update(self._claim(rest, holder, over_records, ended, self._clock()))
            return found

    def unclaim(self, keys: Sequence[str], holder: str) -> None:
        """Give up ``holder``'s claims on ``keys`` (calls it will not send after all)."""
        with self._lock:
            self._check_open()
            if keys:
                self._unclaim(list(dict.fromkeys(keys)), holder)

    def _claim(
        self,
        keys: list[str],
        holder: str,
        over_records: bool,
        take_over: frozenset[str],
        now: float,
    ) -> dict[str, ClaimState]:
        """Claim ``keys`` atomically (see ``claim_states``). A store no other process sees:
        every claim is this process's."""
        return dict.fromkeys(keys, _OURS)

    def _unclaim(self, keys: list[str], holder: str) -> None:  # noqa: B027 - optional hook
        """Nothing to give up where nobody else claims."""

    def delete(self, keys: Iterable[str]) -> None:
        """Remove the records of ``keys`` (absent keys are ignored)."""
        with self._lock:
            self._check_open()
            keys = list(dict.fromkeys(keys))
            for key in keys:
                self._pending.pop(key, None)
            if not self._pending:
                self._pending_since = None
            if keys:
                self._delete(keys)

    def clear(self) -> None:
        """Remove every record of this store."""
        with self._lock:
            self._check_open()
            self._pending.clear()
            self._pending_since = None
            self._clear()

    def count(self) -> int:
        """How many present, unexpired records the store holds (buffered ones included)."""
        with self._lock:
            self._check_open()
            self.flush()
            return self._count(self._clock())

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:
        return True  # an empty store is still a store: ``store or default`` must keep it

    def iter_records(self) -> Iterator[StoredOutcome]:
        """Every present, unexpired record, read in pages so writers are not held up."""
        with self._lock:
            self._check_open()
            self.flush()
            now = self._clock()
        for record in self._iter(now):
            if self._is_live(record, now):
                yield record

    def close(self) -> None:
        """Flush, then release the connection. Closing twice is fine; using it after is not."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                self._close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed; open a new store with open_store(...)")

    def _flush_due(self, now: float) -> bool:
        since = self._pending_since
        # ``now < since``: the wall clock went back; flush rather than wait for it.
        return since is not None and (now - since >= self.flush_interval or now < since)

    def _is_live(self, record: StoredOutcome, now: float) -> bool:
        if record.expires_at is not None and record.expires_at <= now:
            return False
        return self.ttl is None or record.finished_at + self.ttl > now

    def _expiry(self, record: StoredOutcome) -> float | None:
        """When a record written now stops counting: its own expiry or its ttl, the earlier."""
        by_age = None if self.ttl is None else record.finished_at + self.ttl
        if record.expires_at is None:
            return by_age
        return record.expires_at if by_age is None else min(by_age, record.expires_at)

    # -- what a backend implements (called with the lock held, except ``_iter``) ---------

    @abc.abstractmethod
    def _encode(self, record: StoredOutcome) -> Any:
        """Serialise ``record`` for ``_write`` (raise StoreSerializationError if it can't)."""

    @abc.abstractmethod
    def _write(self, items: list[Any]) -> None:
        """Write encoded records, replacing those with the same keys, atomically if it can."""

    @abc.abstractmethod
    def _read(self, keys: list[str], now: float) -> Iterable[StoredOutcome]:
        """The stored records among ``keys`` (expired ones may be left out)."""

    @abc.abstractmethod
    def _delete(self, keys: list[str]) -> None: ...

    @abc.abstractmethod
    def _clear(self) -> None: ...

    @abc.abstractmethod
    def _count(self, now: float) -> int:
        """The number of live stored records (the buffer is flushed first)."""

    @abc.abstractmethod
    def _iter(self, now: float) -> Iterator[StoredOutcome]:
        """Every stored record; takes ``self._lock`` per page, not for the whole walk."""

    @abc.abstractmethod
    def _close(self) -> None: ...
