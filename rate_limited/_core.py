"""The engine's state machine: where a call's status and every counter of a run change.

A call moves ``PENDING -> RUNNING -> SUCCEEDED | FAILED``, or back to ``PENDING`` to be
retried, or to ``CANCELLED`` when its run is abandoned. ``EngineCore`` owns those moves
and the counters that follow them, one method per transition, each the only place that
counter changes:

=======================  ==================================================================
``_start_attempt``        admitted: RUNNING, one more in flight
``_unstart``              admitted but never sent (a stop, no thread): back to PENDING
``_finish``               the end of a call (SUCCEEDED or FAILED): its store record, the
                          calls that end with it (same store key, the semantic cache),
                          the run's end, the progress display
``_end_with``             a call that ends with another's outcome, never sent
``_reopen``               a late result revives a call that had failed (a thread's answer
                          after its timeout)
``_back_off``             a failed attempt to be retried: PENDING, after its backoff
``_cancelled``            abandoned while running
=======================  ==================================================================

The async workers' fast loop (``rate_limited._workers.Workers._work_fast``) writes out
``_start_attempt`` and, for a call that succeeded, ``_finish`` in its own body, for speed;
it is tested equal to the general path.

Settling an attempt (billing it, validating its value, retrying or not, the 429
cool-down and patience) is ``rate_limited._settling.Settling``, the layer above this one;
admission is ``rate_limited._admitting``, the workers ``rate_limited._workers``, and
running batches ``rate_limited._engine.Engine``, the top of the stack.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rate_limited._admission import Admission
from rate_limited._billing import Billing
from rate_limited._checkpoint import Checkpoint
from rate_limited._claims import Claims
from rate_limited._redact import get_logger
from rate_limited._stats import RunStats
from rate_limited._status import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, Status
from rate_limited.exceptions import (
    RateLimitedTooLongError,
    RateLimitedWarning,
)

if TYPE_CHECKING:
    from rate_limited._config import RunnerConfig
    from rate_limited._priorities import Priorities
    from rate_limited._spend import SpendControl
    from rate_limited._stats import Progress
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Ledger
    from rate_limited.semantic._match import SemanticStats
    from rate_limited.semantic._step import SemanticStep

logger = get_logger("rate_limited")


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """What ``loop.time()`` reads, as the engine's hot paths call it: asyncio's own loops
    return ``time.monotonic()`` (``BaseEventLoop.time``), which they then call directly,
    a Python frame less per read (two per call); any other loop (a ``FakeClock``'s,
    uvloop's) keeps its own ``time``."""
    if getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


#: A warning for the caller's thread: its category and message.
Notice = tuple[type[Warning], str]


@dataclass(frozen=True)
class EngineParts:
    """What an engine is built from, handed down its layers whole (see ``Engine``)."""

    config: RunnerConfig
    loop: asyncio.AbstractEventLoop
    #: Shared by every engine of one Runner: quota used on one loop counts on another.
    ledger: Ledger[Any]
    #: How the function is named in messages and store keys.
    function_name: str = ""
    semantic: SemanticStep | None = None
    #: Money: prices and the budget (``rate_limited._spend``).
    spend: SpendControl | None = None
    #: Escalation (``rate_limited._escalate``): whether a failed call's next attempt goes
    #: to the next rung (and its arguments then).
    escalate: Callable[[Call, BaseException], bool] | None = None


class EngineCore:
    """Calls' transitions and a run's counters, on the engine's loop thread."""

    def __init__(self, parts: EngineParts) -> None:
        config, loop, ledger, spend = parts.config, parts.loop, parts.ledger, parts.spend
        function_name, semantic, escalate = parts.function_name, parts.semantic, parts.escalate
        self.config = config
        self.function = config.function
        self.function_name = function_name
        self.resources = list(config.resources)
        #: Shared by every engine of one Runner: quota used on one loop counts on another.
        self.ledger = ledger
        #: Money: prices and the budget (``rate_limited._spend``); escalation
        #: (``rate_limited._escalate``): the next attempt's arguments after a failure.
        self.spend = spend
        self.escalate = escalate
        #: The head call the budget could not admit with nothing running: the run stopped.
        self.budget_stopped: Call | None = None
        self._has_ledger = bool(self.resources) or spend is not None
        self.billing = Billing(ledger, self.resources, spend)
        self.loop = loop
        #: ``loop.time``, or what it calls (``loop_clock``): the engine's clock.
        self.clock = loop_clock(loop)
        self.max_concurrent = config.max_concurrent
        self.validators = config.validators
        self.timeout = config.timeout
        self.progress_interval = config.progress_interval
        self.progress: Progress | None = None
        self.store = config.store
        self.checkpoint: Checkpoint | None = None
        if config.store is not None:
            self.checkpoint = Checkpoint(
                config.store,
                loop,
                refresh=config.refresh,
                retry_failed=config.retry_failed,
                function_name=function_name,
            )
        #: Claims on a store other processes share (see ``rate_limited._claims``).
        self.claims: Claims | None = None
        if config.store is not None and config.store.shares_work:
            self.claims = Claims(self, config.store, config.long_wait_warning_seconds)
        #: The semantic cache (see ``rate_limited.semantic._step``), if the Runner has one.
        self.semantic = semantic
        self.admission = Admission(loop)
        #: Told of each call that becomes final, on the loop thread (``as_completed()``,
        #: online callers); a tuple, replaced whole when a listener comes or goes.
        self.final_listeners: tuple[Callable[[Call], None], ...] = ()
        #: Arbitrates admission between the Runner's engines by priority (None: alone).
        self.priorities: Priorities | None = None
        #: Warnings for the thread that called run() (it emits them, see take_notices).
        self._notices: list[Notice] = []
        # Counters of the run; only the transitions below change them.
        self.stats = RunStats(0, 0, 0, loop.time(), self)
        self._in_flight = 0
        self._unfinished = 0
        self._backing_off = 0
        # 429 streaks: attempts answered otherwise (successes are counted in stats), the
        # count when the streak was last checked, and when the streak started.
        self._answered = 0
        self._answers_seen = 0
        self._streak_since = -math.inf
        self._gave_up: RateLimitedTooLongError | None = None
        self._epoch = 0  # run number: a backoff timer of an earlier run is a no-op
        self._stopping = False
        self._done: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._next_progress = -math.inf

    # -- what RunStats reads (StatsSource) -----------------------------------------------------
    def time(self) -> float:
        return self.loop.time()

    @property
    def running_calls(self) -> int:
        """Calls started and not settled yet (e.g. still running after an interrupt)."""
        return max(0, self._in_flight)

    @property
    def backing_off(self) -> int:
        return self._backing_off

    @property
    def store_failures(self) -> int:
        return 0 if self.checkpoint is None else self.checkpoint.failures

    @property
    def paused_until(self) -> float:
        return self.admission.paused_until

    @property
    def semantic_stats(self) -> SemanticStats | None:
        return None if self.semantic is None else self.semantic.stats

    def usage(self, now: float) -> dict[str, tuple[float, float, float]]:
        usage = self.ledger.snapshot(now) if self._has_ledger else {}
        spend = self.spend
        if spend is not None and spend.budget is not None:
            spent, reserved = spend.state(now)
            usage["budget_usd"] = (spent, reserved, spend.budget.usd)  # a quota in dollars
        return usage

    @property
    def cost_total(self) -> float | None:
        """USD of every response priced so far (None: the calls are not priced)."""
        return None if self.spend is None else self.spend.cost_total

    # -- hooks the engine provides ---------------------------------------------------------------
    def _start_runners(self) -> None:
        """Make sure workers run to admit the calls waiting (see ``Engine``)."""
        raise NotImplementedError

    def _crash(self, exc: BaseException) -> None:
        """An error of the engine itself ends the run, which raises it (see ``Engine``)."""
        raise NotImplementedError

    def _resolve_done(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def wait_idle(self) -> None:
        """Until no call is running (loop thread): what ``close()`` waits for."""
        while self._in_flight > 0:
            if self._idle is None or self._idle.done():
                self._idle = self.loop.create_future()
            await self._idle

    # -- what work sharing asks (``rate_limited._claims``) -----------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def retry_failed(self) -> bool:
        return self.config.retry_failed

    def adopt(self, call: Call, status: Status) -> None:
        """``call`` (pending) ends with an outcome another worker stored."""
        self._finish(call, status, self.loop.time(), running=False, save=False)

    def requeue(self, call: Call) -> None:
        """``call`` waited for another worker, and is this process's to send after all."""
        self._due(call, self._epoch)

    def claims_failed(self, exc: BaseException) -> None:
        """The claims' own code failed (a bug, not the store): the run ends and raises it,
        rather than leave the calls waiting on other workers waiting for ever."""
        self._crash(exc)

    def waiting_on_claims(self, text: str, seconds: float, what: str) -> None:
        """Calls wait on other workers' claims (said once a run): the run's warning, and
        the progress display at once."""
        logger.warning("%s", text)
        self._notices.append((RateLimitedWarning, text))
        if self.progress is not None:
            self._report(self.progress.waiting, self.stats, seconds, what)

    # -- transitions -------------------------------------------------------------------------
    def _start_attempt(self, call: Call, now: float) -> None:
        self._in_flight += 1
        call.status = RUNNING
        call.attempts += 1  # also the token that tells a thread's result apart
        call.started_at = now

    def _out_of_flight(self) -> None:
        self._in_flight -= 1
        if self._in_flight <= 0 and self._idle is not None:
            self._now_idle()

    def _now_idle(self) -> None:
        """Nothing is in flight any more: wake ``wait_idle``."""
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def _unstart(self, call: Call, now: float) -> None:
        call.attempts -= 1
        self.billing.release(call, now)
        call.status = PENDING
        self._out_of_flight()

    def _cancelled(self, call: Call, now: float) -> None:
        self.billing.keep(call, now)  # it may have reached the provider: stay conservative
        call.status = CANCELLED
        self._out_of_flight()

    def _reopen(self, call: Call) -> None:
        """A late result of ``call`` is to be settled as if its attempt had just returned."""
        if call.status is FAILED:  # counted out already: count it back in
            self.stats.failed -= 1
            self._unfinished += 1
        call.status = RUNNING
        call.reservation = None
        self._in_flight += 1

    def _finish(
        self, call: Call, status: Status, now: float, *, running: bool = True, save: bool = True
    ) -> None:
        """``call`` ends ``status`` (``running``: its attempt was in flight).

        ``Workers._work_fast`` writes out this step (with ``_out_of_flight`` and
        ``_end_with``) for a call that succeeded on an engine without a store or a
        semantic cache: a change here is a change there."""
        call.status = status
        call.finished_at = now
        call.reservation = None
        if save and self.checkpoint is not None and call.key is not None:
            self.checkpoint.save(call, now)
        if running:
            self._out_of_flight()
        self._end_with(call, status, now)
        if self._unfinished <= 0 and self._in_flight <= 0:
            self._resolve_done()
            self.admission.wake()
        if self.progress is not None and now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self._report(self.progress.update, self.stats)

    def _end_with(self, call: Call, status: Status, now: float, *, sent: bool = True) -> None:
        """Count ``call`` (just ended ``status``) out of the run, and end the calls that
        take its outcome: the followers of its store key and, if it was ``sent`` (its
        outcome is the provider's answer), the calls the semantic cache matched with it."""
        if status is SUCCEEDED:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        self._unfinished -= 1
        if self.final_listeners:
            for listener in self.final_listeners:
                listener(call)
        if self.checkpoint is not None:
            for follower in self.checkpoint.followers_of(call):
                follower.status = call.status
                follower.result = call.result
                follower.exceptions = list(call.exception_history)
                follower.semantic = call.semantic
                follower.finished_at = now
                self._end_with(follower, status, now, sent=False)
        if sent and self.semantic is not None:
            answered, unanswered = self.semantic.settled(call)
            for match in answered:
                match.finished_at = now
                self._end_with(match, SUCCEEDED, now, sent=False)
            for match in unanswered:
                self._due(match, self._epoch)

    def _back_off(self, call: Call, delay: float, now: float) -> None:
        """A failed attempt of ``call`` is retried after ``delay`` seconds."""
        self.stats.retries += 1
        self._out_of_flight()
        call.status = PENDING
        if delay > 0 and not self._stopping:
            self._backing_off += 1
            self.loop.call_at(now + delay, self._due, call, self._epoch, True)
        else:
            self._due(call, self._epoch)

    def _due(self, call: Call, epoch: int, backed_off: bool = False) -> None:
        """``call`` may be tried again (its backoff is over)."""
        if backed_off and epoch == self._epoch:
            self._backing_off -= 1
        if epoch != self._epoch or self._stopping or self._done is None:
            return  # the next run() requeues it
        if call.status is not PENDING:
            return  # the next run() requeues it
        if self._gave_up is not None:
            call.exceptions.append(self._gave_up)
            self._finish(call, FAILED, self.loop.time(), running=False)
            return
        self.admission.push_retry(call)
        self._start_runners()
        self.admission.wake()

    def _report(self, method: Callable[..., None], *args: Any) -> None:
        """Call the progress display; a display that raises is dropped, not the run."""
        try:
            method(*args)
        except BaseException:
            logger.exception("The progress display failed; the run goes on without it")
            self.progress = None
