"""Work sharing: Runners in many processes schedule the same calls on one store, and each
call is sent once, by whoever claims it first.

A store that other processes see (``Store.shares_work``: SQLite, Redis) keeps a *claim* per
call key: a holder and an expiry (``Store.claim_ttl``, ``open_store(url, claim_ttl=60)``).
The engine claims the head call just before it would admit it (``take``), so N workers
going through the same list in the same order interleave: each sends the calls it claimed
and waits for the others'.

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

**Ended holders are taken over at once.** A holder names its process's life lock
(``rate_limited._holder``): when the holder of a claim in the way is a process of this
machine proven to have ended (``kill -9`` of a script, a restarted notebook kernel), its
claims count as expired and the call is sent here right away, in ``take`` and on every
poll of the waiting calls, instead of after up to ``claim_ttl`` seconds of silence. The
proof is the lock, never a pid (pids are reused): a live process's claim is never taken
over, and claims of other machines (or written by older versions) lapse by expiry only.

**Waiting is said once a run.** When calls have waited on other workers' claims for the
Runner's ``long_wait_warning_seconds`` (None: never said), a ``RateLimitedWarning`` (and
the progress display, at once) says how many calls wait, on which holders and until when
(``rate_limited._claim_holders``, which also tells which holders have ended).

A store error while claiming sends the call (a StoreWarning says so): it cannot be
coordinated, and stopping the run would lose more than a possible duplicate.

**A store lost while calls wait.** Calls waiting on other workers' claims learn their
outcomes from the store only; a store this process can no longer reach would keep them
waiting for ever. They go on waiting while the store fails for less than ``claim_ttl``
seconds (a warning in the log says so at once): a connection blip or a Redis failover
must not send again calls another worker is known to be sending. Once it has failed for
``claim_ttl`` s they are sent here, and the run's StoreWarning says so (they may have been
sent twice). Why ``claim_ttl`` and not at once, as for a call whose claim fails in
``take``: that call has no known sender, a waiting call has one; and ``claim_ttl`` is the
patience given to a silent holder anyway: had the store gone for every worker, the
holder could not renew either, and its claims would have lapsed by then. A read that
succeeds meanwhile starts the count again.
**Nothing waits for ever.** The look at the waiting calls runs on a timer of the loop,
where an error escaping it would only be logged and the next look never armed: an error
that is not the store's (a bug) ends the run instead, and ``run()`` raises it.

At the end of a run (its outcomes flushed) the claims of calls not started and of calls
whose outcome is written are given up, so that another worker takes the first at once (a
Ctrl-C here does not hold them up for ``claim_ttl``) and reads the others' outcomes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from rate_limited._claim_holders import POLL, ClaimHolders
from rate_limited._holder import new_holder
from rate_limited._redact import describe, get_logger, redact
from rate_limited._status import Status
from rate_limited.exceptions import CallError, StoreError
from rate_limited.stores.base import ClaimState

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.stores.base import Store, StoredOutcome

__all__ = ["POLL", "Claims", "ClaimsOwner"]

logger = get_logger("rate_limited")


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

    def claims_failed(self, exc: BaseException) -> None:
        """An error of the claims' own code (a bug): the run ends and ``run()`` raises it."""

    def waiting_on_claims(self, text: str, seconds: float, what: str) -> None:
        """Tell the user (once a run) that calls wait on other workers' claims: ``text``
        for the warning, ``what`` they wait for and ``seconds`` for the progress display."""


class Claims:
    """The claims of one engine on its store (loop thread only).

    ``tell_after``: seconds calls wait on other workers' claims before the user is told
    (the Runner's ``long_wait_warning_seconds``; None: never).
    """

    def __init__(self, engine: ClaimsOwner, store: Store, tell_after: float | None = 2.0) -> None:
        self._engine = engine
        self._store = store
        self._tell_after = tell_after
        #: Who this engine is in the store's claims (``rate_limited._holder``).
        self.holder = new_holder()
        self._mine: dict[str, Call] = {}
        self._renewed: dict[str, float] = {}  # key -> monotonic time of its last claim
        self._waiting: dict[str, Call] = {}
        self._held_by: dict[str, ClaimState] = {}  # waiting key -> the claim in its way
        self._wait_since: float | None = None  # monotonic time calls started waiting
        self._told = False
        #: The other workers in the way: parsed, proven ended or not.
        self._holders = ClaimHolders()
        self._took_from: Counter[str] = Counter()  # ended holder -> calls taken over
        self._timer: asyncio.TimerHandle | None = None
        self._renewal: asyncio.TimerHandle | None = None
        self._next_claim = 0.0
        self._run_started = time.time()
        self._refresh = False
        self._problem: str | None = None
        self._lost_since: float | None = None  # monotonic time the waiting lost the store
        #: Calls whose outcome came from another worker in this run, and calls taken over
        #: (from ended holders at once, or after their claims expired).
        self.adopted = 0
        self.taken_over = 0

    def start(self, refresh: bool) -> None:
        """A run starts: outcomes finished from now on were sent by a worker of it.
        ``refresh``: the outcomes stored before it do not count (they are sent again)."""
        self._run_started = time.time()
        self._refresh = refresh
        self._waiting.clear()
        self._held_by.clear()
        self._wait_since = None
        self._lost_since = None
        self._told = False

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
            state = self._claim([key], over_records=False)[key]
        except StoreError as exc:
            self._store_failed(exc)
            return True
        if state.answer == "stored" and not self._refresh and self._adopt_stored(call):
            return False
        if state.answer == "stored":  # a failure of an earlier run (or refresh=True): send again
            try:
                state = self._claim([key], over_records=True)[key]
            except StoreError as exc:
                self._store_failed(exc)
                return True
        if state.answer == "ours":
            self.taken_over += state.holder is not None  # from a holder that ended
            self._own(call, now)
            return True
        self._wait(call, state, now)
        return False

    def _claim(self, keys: list[str], over_records: bool) -> dict[str, ClaimState]:
        """Claim ``keys``, taking over at once those whose holder is proven ended (their
        state is then ``"ours"`` with the ended holder). Raises StoreError."""
        store = self._store
        states = store.claim_states(
            keys, self.holder, over_records=over_records, take_over=self._holders.ended
        )
        ended = [
            key
            for key, state in states.items()
            if state.answer == "taken" and self._holders.has_ended(state.holder or "")
        ]
        if ended:
            states.update(
                store.claim_states(
                    ended, self.holder, over_records=over_records, take_over=self._holders.ended
                )
            )
        for state in states.values():
            if state.answer == "ours" and state.holder is not None:
                self._took_from[state.holder] += 1
        return states

    def _own(self, call: Call, now: float) -> None:
        assert call.key is not None
        self._mine[call.key] = call
        self._renewed[call.key] = now
        if self._renewal is None:
            loop = self._engine.loop
            self._renewal = loop.call_later(self._store.claim_ttl / 3, self._renew)

    def _wait(self, call: Call, state: ClaimState, now: float) -> None:
        assert call.key is not None
        self._waiting[call.key] = call
        self._held_by[call.key] = state
        if self._wait_since is None:
            self._wait_since = now
        if self._timer is None:
            self._next_claim = now + self._store.claim_ttl / 2
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
        """The waiting calls' look at the store, every ``POLL`` s while any waits. Unless
        the run ends, it arms the next one: an error of its own (a bug, not the store's)
        ends the run, which raises it, instead of leaving the calls waiting for ever."""
        self._timer = None
        engine = self._engine
        if not self._waiting or engine.stopping:
            return
        try:
            try:
                self._look_again()
            except StoreError as exc:
                self._store_lost(exc, time.monotonic())
            if self._waiting:
                self._maybe_tell(time.monotonic())
        except Exception as exc:
            engine.claims_failed(exc)
            return
        if self._waiting:
            self._timer = engine.loop.call_later(POLL, self._poll)
        else:
            self._wait_since = None

    def _look_again(self) -> None:
        """Take the outcomes that arrived; claim again the calls whose holders ended (at
        once) or whose claims may have lapsed (every ``claim_ttl / 2`` s). Raises
        StoreError."""
        waiting, held_by = self._waiting, self._held_by
        records = self._store.get_many(list(waiting))
        for key, record in records.items():
            call = waiting.pop(key)
            if self._adopt(call, record):
                held_by.pop(key, None)
            else:
                waiting[key] = call  # an old failure: claimed again below
        now = time.monotonic()
        holders = {state.holder for state in held_by.values() if state.holder is not None}
        ended = {text for text in holders if self._holders.has_ended(text)}
        if now >= self._next_claim:  # expired claims (a dead worker elsewhere)
            self._next_claim = now + self._store.claim_ttl / 2
            keys = list(waiting)
        else:  # only those of holders proven ended, at once
            keys = [key for key in waiting if held_by[key].holder in ended]
        if keys:
            self._claim_waiting(keys, now)
        self._lost_since = None

    def _store_lost(self, exc: StoreError, now: float) -> None:
        """The waiting calls can't read the store: they wait ``claim_ttl`` s more at most,
        then are sent here (see the module docstring)."""
        waiting, ttl = self._waiting, self._store.claim_ttl
        if self._lost_since is None:
            self._lost_since = now
            logger.warning(
                "The store %r can't be read (%s): %d calls waiting on other workers' claims "
                "wait for it up to claim_ttl=%g s, then are sent here.",
                self._store,
                describe(exc),
                len(waiting),
                ttl,
            )
        if now - self._lost_since < ttl:
            return
        keys = list(waiting)
        for key in keys:
            call = waiting.pop(key)
            self._held_by.pop(key, None)
            self._own(call, now)
            self._engine.requeue(call)
        self._lost_since = None
        self._tell_problem(
            f"{len(keys)} call{'s' if len(keys) != 1 else ''} waiting on other workers' "
            f"claims could not read the store {self._store!r} for claim_ttl={ttl:g} s "
            f"({describe(exc)}): sent here, so they may have been sent twice."
        )

    def _claim_waiting(self, keys: list[str], now: float) -> None:
        """Claim waiting calls again; send here those that come out ours. An outcome
        stored meanwhile (its worker finished it, then ended) is taken, not sent again:
        the store checks for it in the same step as the claim."""
        waiting, held_by = self._waiting, self._held_by
        states = self._claim(keys, over_records=False)
        stored = [key for key, state in states.items() if state.answer == "stored"]
        if stored:
            records = self._store.get_many(stored)
            resend = []
            for key in stored:
                record = records.get(key)
                if record is not None and self._adopt(waiting[key], record):
                    del waiting[key], states[key]
                    held_by.pop(key, None)
                else:
                    resend.append(key)  # an old failure: sent again, if it is ours
            if resend:
                states.update(self._claim(resend, over_records=True))
        for key, state in states.items():
            if state.answer != "ours":
                held_by[key] = state  # who holds it now, and until when
                continue
            call = waiting.pop(key)  # its worker ended (or gave it up): send it here
            held_by.pop(key, None)
            self.taken_over += 1
            self._own(call, now)
            self._engine.requeue(call)

    # -- telling the user what is waited for ---------------------------------------------------
    def _maybe_tell(self, now: float) -> None:
        """Once a run, when calls have waited ``tell_after`` seconds on other workers'
        claims: say how many, held by whom, until when."""
        since, after = self._wait_since, self._tell_after
        if self._told or since is None or after is None or now - since < after:
            return
        self._told = True
        text, what, seconds = self.describe_waiting()
        self._engine.waiting_on_claims(text, seconds, what)

    def describe_waiting(self) -> tuple[str, str, float]:
        """The notice for the calls waiting now (see ``ClaimHolders.describe_waiting``)."""
        return self._holders.describe_waiting(self._held_by, self._store)

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
        self._held_by.clear()
        self._wait_since = self._lost_since = None
        for text, count in self._took_from.items():
            logger.info(
                "Took over at once %d calls claimed by %s, a process of this machine that "
                "has ended",
                count,
                self._holders.get(text).describe(),
            )
        self._took_from.clear()
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
        self._tell_problem(
            f"Could not claim calls in the store {self._store!r} ({describe(exc)}): they are "
            "sent without checking whether another worker sends them too."
        )

    def _tell_problem(self, text: str) -> None:
        """``text`` goes to the log now and into the run's StoreWarning."""
        logger.warning("%s", text)
        self._problem = text if self._problem is None else f"{self._problem} {text}"

    def take_problem(self) -> str | None:
        """What went wrong with the claims since the last call (for the run's one
        StoreWarning, see ``Engine.take_notices``), or None."""
        problem, self._problem = self._problem, None
        return problem
