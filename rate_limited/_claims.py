"""Work sharing: Runners in many processes schedule the same calls on one store, and each
call is sent once, by whoever claims it first.

A store that other processes see (``Store.shares_work``: SQLite, Redis) keeps a *claim* per
call key: a holder and an expiry (``Store.claim_ttl``). The engine claims the head call
just before it would admit it (``take``), so N workers going through the same list in the
same order interleave: each sends the calls it claimed and waits for the others'.

* ``"ours"``: this process sends it. Its claims are renewed every ``claim_ttl / 3`` s while
  the calls run, so a slow call is not taken over.
* ``"taken"``: another worker holds it. The call waits here (not in the engine's queues);
  every ``POLL`` s the waiting calls' outcomes are read from the store, and each one that
  has arrived ends the call as it ended there (``from_store``). Every ``claim_ttl / 2`` s the
  waiting calls without an outcome are claimed again: the claims of a worker that died
  have expired by then, so its calls are taken over and sent here.
* ``"stored"``: its outcome arrived since the run started: the call takes it. An outcome
  that failed in an earlier run is sent again (``retry_failed``), one that failed in
  another worker during this run is taken as it is (every worker would fail it again).

A store error while claiming sends the call (a StoreWarning says so): it cannot be
coordinated, and stopping the run would lose more than a possible duplicate.
At the end of a run (its outcomes flushed) the claims of calls not started and of calls
whose outcome is written are given up, so that another worker takes the first at once (a
Ctrl-C here does not hold them up for ``claim_ttl``) and reads the others' outcomes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Protocol

from rate_limited._redact import describe, get_logger, redact
from rate_limited._status import Status
from rate_limited.exceptions import CallError, StoreError

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.stores.base import Store, StoredOutcome

__all__ = ["POLL", "Claims", "ClaimsOwner"]

logger = get_logger("rate_limited")

#: Seconds between two reads of the outcomes the waiting calls wait for.
POLL = 0.25


class ClaimsOwner(Protocol):
    """What the claims ask of the engine (``rate_limited._core.EngineCore``)."""

    loop: asyncio.AbstractEventLoop

    @property
    def stopping(self) -> bool: ...

    @property
    def retry_failed(self) -> bool: ...

    def adopt(self, call: Call, status: Status) -> None:
        """End the pending ``call`` with an outcome another worker stored."""

    def requeue(self, call: Call) -> None:
        """``call`` waited for another worker and is this process's to send after all."""


class Claims:
    """The claims of one engine on its store (loop thread only)."""

    def __init__(self, engine: ClaimsOwner, store: Store) -> None:
        self._engine = engine
        self._store = store
        #: Who this engine is in the store's claims (host, pid and a random part).
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._mine: dict[str, Call] = {}
        self._renewed: dict[str, float] = {}  # key -> monotonic time of its last claim
        self._waiting: dict[str, Call] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._renewal: asyncio.TimerHandle | None = None
        self._next_claim = 0.0
        self._run_started = time.time()
        self._refresh = False
        self._problem: str | None = None
        #: Calls whose outcome came from another worker in this run, and calls taken over.
        self.adopted = 0
        self.taken_over = 0

    def start(self, refresh: bool) -> None:
        """A run starts: outcomes finished from now on were sent by a worker of it.
        ``refresh``: the outcomes stored before it do not count (they are sent again)."""
        self._run_started = time.time()
        self._refresh = refresh
        self._waiting.clear()

    def take(self, call: Call) -> bool:
        """Whether this process sends ``call`` (the head call, about to be admitted).
        False: it waits for another worker's outcome, or just took a stored one."""
        key = call.key
        if key is None:
            return True
        if key in self._waiting:
            return False
        now = time.monotonic()
        if key in self._mine and now - self._renewed.get(key, -1e9) < self._store.claim_ttl / 3:
            return True
        try:
            answer = self._store.claim([key], self.holder)[key]
        except StoreError as exc:
            self._store_failed(exc)
            return True
        if answer == "ours":
            self._own(call, now)
            return True
        if answer == "stored" and not self._refresh and self._adopt_stored(call):
            return False
        if answer == "stored":  # a failure of an earlier run (or refresh=True): send again
            try:
                answer = self._store.claim([key], self.holder, over_records=True)[key]
            except StoreError as exc:
                self._store_failed(exc)
                return True
            if answer == "ours":
                self._own(call, now)
                return True
        self._wait(call)
        return False

    def _own(self, call: Call, now: float) -> None:
        assert call.key is not None
        self._mine[call.key] = call
        self._renewed[call.key] = now
        if self._renewal is None:
            loop = self._engine.loop
            self._renewal = loop.call_later(self._store.claim_ttl / 3, self._renew)

    def _wait(self, call: Call) -> None:
        assert call.key is not None
        self._waiting[call.key] = call
        if self._timer is None:
            self._next_claim = time.monotonic() + self._store.claim_ttl / 2
            self._timer = self._engine.loop.call_later(POLL, self._poll)

    # -- outcomes of other workers ----------------------------------------------------------
    def _adopt_stored(self, call: Call) -> bool:
        assert call.key is not None
        try:
            record = self._store.get(call.key)
        except StoreError as exc:
            self._store_failed(exc)
            return False
        return record is not None and self._adopt(call, record)

    def _adopt(self, call: Call, record: StoredOutcome) -> bool:
        """End ``call`` with the outcome another worker stored (False: send it again)."""
        engine = self._engine
        if call.status is not Status.PENDING:
            return True  # ended meanwhile
        if self._refresh and record.finished_at < self._run_started:
            return False  # refresh=True: only what a worker of this run stored counts
        if record.status == "succeeded":
            call.result = record.result
            status = Status.SUCCEEDED
        elif not engine.retry_failed or record.finished_at >= self._run_started:
            error = redact(record.error or "unknown error")
            call.exceptions.append(CallError(f"failed in another worker: {error}"))
            status = Status.FAILED
        else:
            return False
        call.from_store = True
        call.attempts = max(call.attempts, record.attempts)
        call.usage = dict(record.usage)
        self.adopted += 1
        engine.adopt(call, status)
        return True

    def _poll(self) -> None:
        self._timer = None
        engine = self._engine
        waiting = self._waiting
        if not waiting or engine.stopping:
            return
        try:
            records = self._store.get_many(list(waiting))
            for key, record in records.items():
                call = waiting.pop(key)
                if not self._adopt(call, record):
                    waiting[key] = call  # an old failure: claimed again below
            now = time.monotonic()
            if waiting and now >= self._next_claim:
                self._next_claim = now + self._store.claim_ttl / 2
                answers = self._store.claim(list(waiting), self.holder, over_records=True)
                for key, answer in answers.items():
                    if answer == "ours":  # its worker died (or gave it up): send it here
                        call = waiting.pop(key)
                        self.taken_over += 1
                        self._own(call, now)
                        engine.requeue(call)
        except StoreError as exc:
            self._store_failed(exc)
        if waiting:
            self._timer = engine.loop.call_later(POLL, self._poll)

    def _renew(self) -> None:
        """Renew the claims of the calls this process still has to send or is sending."""
        self._renewal = None
        mine = self._mine
        for key in [k for k, call in mine.items() if call.status.is_final]:
            del mine[key]
            self._renewed.pop(key, None)
        if not mine:
            return
        try:
            self._store.claim(list(mine), self.holder)
            now = time.monotonic()
            self._renewed = dict.fromkeys(mine, now)
        except StoreError as exc:
            self._store_failed(exc)
        self._renewal = self._engine.loop.call_later(self._store.claim_ttl / 3, self._renew)

    # -- the end of a run ---------------------------------------------------------------------
    def finish(self) -> None:
        """The run ended (its outcomes flushed): give up the claims of calls not started
        and of those whose outcome is written; stop waiting."""
        for handle in (self._timer, self._renewal):
            if handle is not None:
                handle.cancel()
        self._timer = self._renewal = None
        self._waiting.clear()
        unwritten = set(self._store.pending_keys())
        done = [
            key
            for key, call in self._mine.items()
            if call.status is Status.PENDING or (call.status.is_final and key not in unwritten)
        ]
        for key in done:
            del self._mine[key]
            self._renewed.pop(key, None)
        try:
            self._store.unclaim(done, self.holder)
        except StoreError as exc:
            self._store_failed(exc)
        if self._mine:  # still running (after an interrupt): keep them claimed meanwhile
            self._renewal = self._engine.loop.call_later(self._store.claim_ttl / 3, self._renew)

    def _store_failed(self, exc: StoreError) -> None:
        if self._problem is not None:
            return
        self._problem = (
            f"Could not claim calls in the store {self._store!r} ({describe(exc)}): they are "
            "sent without checking whether another worker sends them too."
        )
        logger.warning("%s", self._problem)

    def take_problem(self) -> str | None:
        """What went wrong with the claims since the last call (for the run's one
        StoreWarning, see ``Engine.take_notices``), or None."""
        problem, self._problem = self._problem, None
        return problem
