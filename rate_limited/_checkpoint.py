"""The store side of a run: outcomes restored before it, saved as calls end, flushed.

A ``Checkpoint`` belongs to one engine and runs on its loop thread. It

* restores the outcomes an earlier run stored (this process or another) before a run
  starts, so a stored success is never paid for twice;
* elects one *leader* per store key among the calls of a run: the other calls with that
  key (*followers*) are never sent, and end as their leader does;
* saves each finished call's outcome, and commits what settled in one pass of the loop
  together, as soon as the pass ends (a crash loses at most one pass, not a buffer);
* tells the ledger what the calls it restored were billed recently (``earlier``), so
  that a fresh process resuming a run does not believe the provider's buckets full;
* when the store cannot write (disk full, Redis gone), keeps the outcomes in the store's
  buffer, retries after the store's backoff, and counts what stayed unwritten, so the
  engine can warn the caller (``take_failures``) rather than lose results silently.

**Resuming without a 429 storm.** A process that resumes a run (after Ctrl-C, a kernel
restart, a crash) starts with an empty ledger, while the process before may have drained
the provider's buckets seconds ago: a run limited by the ledger alone would burst a full
quota into a provider that has none left. Each stored outcome records what the call was
billed per resource (``usage``: by the settle rule, so OpenAI's ``max_tokens`` included)
and when it finished, by the store's clock. Before a run, the records restored for its
calls that finished before this Checkpoint (and so its Runner's ledger) existed are
handed to ``Ledger.charge_earlier``, dated at their ``finished_at``: a bucket is charged
the level they leave now, a window each usage until it expires. That stays on the safe
side of the provider whatever the rule: it billed no call later than the call's answer
(OpenAI at arrival, Anthropic's output at the end), so the ledger believes in at most the
room the provider can have. No field is added to the records (stores written by earlier
versions have ``usage`` and ``finished_at`` too), and the records are the ones the
restore reads anyway: no extra store round trip.

Why this and not waiting for the provider's headers: headers exist only for the presets,
and only after a first answer, by when a burst of a full quota is on the wire. The
ledger's own records are exact, cover every Resource (the user's own APIs too), and need
no request. What they cannot see: calls of the earlier process that never got an outcome
stored (in flight at a SIGKILL) and calls of other keys (another job on the same quota);
the presets' header feedback corrects those from the first answers. Records finished
after this Checkpoint was made are this Runner's own (its ledger billed them already) or
a concurrent process's, which only a shared ledger (``RedisLedger``) can account for.
With ``refresh=True`` the store is not read, so nothing is charged either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rate_limited._redact import describe, get_logger, redact
from rate_limited._status import Status
from rate_limited.exceptions import CallError, StoreError, StoreWarning, warn
from rate_limited.stores.base import Store, StoredOutcome

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Earlier
    from rate_limited.semantic._index import SemanticIndex

__all__ = ["Checkpoint", "close_store"]

logger = get_logger("rate_limited")


class Checkpoint:
    """Restores, saves and flushes one engine's outcomes in its store (loop thread)."""

    def __init__(
        self,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        *,
        refresh: bool,
        retry_failed: bool,
        function_name: str,
    ) -> None:
        self.store = store
        self.loop = loop
        self.refresh = refresh
        self.retry_failed = retry_failed
        self.function_name = function_name
        #: A commit is queued for the end of this pass of the loop.
        self.flush_pending = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._wall = store.clock
        self._wall_offset = self._wall() - loop.time()  # loop time -> epoch seconds
        #: When this Checkpoint, and its Runner's ledger, began (store's clock).
        self._born = self._wall()
        #: Usage billed recently by an earlier process to calls restored (``earlier``).
        self._earlier: list[Earlier] = []
        #: Outcomes that could not be stored since the last report, and why (the first).
        self.failures = 0
        self._problem: str | None = None
        #: Keys a StoreWarning already named (so closing the Runner does not name them again).
        self.reported_unstored: set[str] = set()
        self._followers: dict[Call, list[Call]] = {}
        self._leaders: dict[str, Call] = {}

    # -- before a run ------------------------------------------------------------------------
    def begin(self, calls: Sequence[Call]) -> None:
        """Start a run: restore what earlier runs stored for ``calls``, elect leaders anew."""
        self._wall_offset = self._wall() - self.loop.time()
        self._followers = {}
        self._leaders = {}
        self._restore(calls)

    def _restore(self, calls: Sequence[Call]) -> None:
        """Outcomes stored by an earlier run (this process or another) replace calling."""
        wanted = [c for c in calls if c.key is not None and not c.status.is_final]
        if not wanted or self.refresh:
            return
        if any(c.status is Status.RUNNING for c in wanted):
            wanted = [c for c in wanted if c.status is not Status.RUNNING]
        stored = self.store.get_many([c.key for c in wanted if c.key is not None])
        if not stored:
            return
        for call in wanted:
            assert call.key is not None
            record = stored.get(call.key)
            if record is None:
                continue
            self._note_earlier(call, record)  # a failure retried now was billed all the same
            if record.status == "succeeded":
                call.result = record.result
                call.status = Status.SUCCEEDED
            elif not self.retry_failed:
                call.status = Status.FAILED
                earlier = redact(record.error or "unknown error")
                call.exceptions.append(CallError(f"failed in an earlier run: {earlier}"))
            else:
                continue  # failed before: try again
            call.from_store = True
            call.attempts = max(call.attempts, record.attempts)
            call.usage = dict(record.usage)

    def _note_earlier(self, call: Call, record: StoredOutcome) -> None:
        """Keep ``record``'s usage for ``earlier`` if an earlier process billed it."""
        if record.usage and record.finished_at <= self._born and call.demand:
            at = record.finished_at - self._wall_offset
            self._earlier.append((call.demand, record.usage, at))

    def earlier(self) -> list[Earlier]:
        """The usage the calls restored by ``begin`` were billed by an earlier process, and
        when (loop time): for ``Ledger.charge_earlier`` (once: it is forgotten here)."""
        found, self._earlier = self._earlier, []
        return found

    def follows(self, call: Call) -> bool:
        """Whether ``call`` (not final) has the store key of an earlier call of this run:
        then it is not sent, and ends as that leader does (``followers_of``)."""
        key = call.key
        if key is None:
            return False
        leader = self._leaders.setdefault(key, call)
        if leader is call:
            return False
        self._followers.setdefault(leader, []).append(call)
        if not _same_arguments(call, leader):
            logger.warning(
                "%r and %r have the same store key but different arguments; "
                "they share one outcome (check key=)",
                leader,
                call,
            )
        return True

    def forget(self, call: Call) -> None:
        """``call`` was withdrawn: it follows no leader any more."""
        for followers in self._followers.values():
            if call in followers:
                followers.remove(call)
                return

    def lead(self, leader: Call, followers: list[Call]) -> None:
        """``leader`` is sent in place of a withdrawn call; ``followers`` follow it."""
        if leader.key is not None:
            self._leaders[leader.key] = leader
        if followers:
            self._followers[leader] = followers

    def followers_of(self, leader: Call) -> list[Call]:
        """The calls that end as ``leader`` did (once: they are forgotten here)."""
        if not self._followers:
            return []
        return self._followers.pop(leader, [])

    # -- as calls end ------------------------------------------------------------------------
    def save(self, call: Call, now: float) -> None:
        """Store the outcome of ``call``, just finished; the commit follows this pass."""
        assert call.key is not None
        succeeded = call.status is Status.SUCCEEDED
        errors = call.exceptions if call.failures and not succeeded else ()
        error = errors[-1] if errors else None
        offset = self._wall_offset
        record = StoredOutcome(
            key=call.key,
            status="succeeded" if succeeded else "failed",
            result=call.result if succeeded else None,
            error=None if error is None else describe(error, call),
            attempts=call.attempts,
            usage=call.usage_copy(),
            started_at=None if call.started_at is None else call.started_at + offset,
            finished_at=now + offset,
            function=self.function_name,
        )
        try:
            self.store.put(record)
        except Exception as exc:  # unpicklable result, store closed: the call still succeeded
            self.failures += 1
            self._failed(describe(exc, call), f"could not store the outcome of {call!r}")
            return
        if not self.flush_pending:
            # Commit what settled in this pass of the loop, together, as soon as it ends:
            # a crash loses at most the outcomes of one pass, not a whole buffer.
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self, final: bool = False) -> None:
        """Write the store's buffer; if it can't (disk full, Redis gone), try again after
        the store's backoff. ``final`` (the end of a run) tries at once, and counts the
        outcomes still unwritten as store failures of the run."""
        self.flush_pending = False
        store = self.store
        if self._flush_timer is not None:
            if not final:
                return  # a failed flush: the timer tries again after the store's backoff
            self._flush_timer.cancel()
            self._flush_timer = None
        try:
            if store.try_flush(force=final):
                return
        except Exception as exc:  # a store that breaks its contract: as if it failed
            self._failed(describe(exc), "could not write to the store")
            return
        error = store.flush_error
        self._failed(
            "unknown error" if error is None else describe(error),
            "could not write to the store (the outcomes are kept in memory and retried)",
        )
        if final:
            unreported = set(store.pending_keys()) - self.reported_unstored
            self.failures += len(unreported)
            self.reported_unstored |= unreported
        if self._flush_timer is None:
            self._flush_timer = self.loop.call_later(store.retry_in(), self._retry_flush)

    def end(self) -> None:
        """The run ended: forget its leaders and commit what is left."""
        self._followers = {}
        self._leaders = {}
        self.flush(final=True)

    def take_failures(self) -> tuple[int, str | None]:
        """How many outcomes could not be stored since the last call, and the warning's
        text (None if none)."""
        count = self.failures
        if not count:
            return 0, None
        text = (
            f"{count} finished call(s) could not be written to the store "
            f"{self.store!r} ({self._problem}). Their results are in this RunResult, "
            "but a later process would call the API again for them."
        )
        self.failures, self._problem = 0, None
        return count, text

    def _retry_flush(self) -> None:
        self._flush_timer = None
        self.flush()

    def _failed(self, reason: str, what: str) -> None:
        first = self._problem is None
        if first:
            self._problem = reason
        logger.log(logging.WARNING if first else logging.DEBUG, "%s: %s", what, reason)


def close_store(
    store: Store,
    *,
    owned: bool,
    checkpoints: Iterable[Checkpoint | None],
    index: SemanticIndex | None = None,
) -> None:
    """The Runner closes: flush ``store`` (close it, and the semantic ``index`` kept with
    it, if the Runner ``owned`` it). A flush that fails is never raised: a
    ``StoreWarning`` counts what no run's warning has named yet (``checkpoints``)."""
    try:
        if owned:
            if index is not None:
                index.close()
            store.close()
        else:
            store.flush()
    except StoreError as exc:
        reported: set[str] = set()
        for checkpoint in checkpoints:
            if checkpoint is not None:
                reported |= checkpoint.reported_unstored
        unreported = [key for key in store.pending_keys() if key not in reported]
        if unreported:
            warn(
                f"{len(unreported)} finished call(s) could not be written to the store "
                f"{store!r} when the Runner closed ({describe(exc)}): a later process "
                "would call the API again for them.",
                StoreWarning,
            )


def _same_arguments(one: Call, other: Call) -> bool:
    try:
        return bool(one.args == other.args and dict(one.kwargs) == dict(other.kwargs))
    except Exception:  # arguments whose == raises: can't tell, don't warn
        return True
