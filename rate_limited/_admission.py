"""The queues a run admits from, and how waiting admission is woken.

``Admission`` belongs to one engine and runs on its loop thread. It keeps

* the *ready* queue (fresh calls in schedule order) and the *retry* heap (calls due to
  be tried again, by (failures, index): among retries the one that failed least goes
  first, so a call that keeps failing cannot take every free slot). ``head()`` is the
  call admission looks at: the lower schedule index of the two queues' heads, so a
  retried call goes back ahead of calls scheduled after it and no call starves;
* with partitioned resources, the *lanes*: the fresh calls of each partition, so that
  the first call of another partition may pass a head waiting for its own (``pass_head``);
* one timer, armed for the earliest moment something will fit, and the future idle
  workers wait on; a timer firing, a call settling or a new call wakes them. Nothing polls;
* the cool-down: after a 429 with ``Retry-After`` nothing is admitted before ``paused_until``;
* the *urgent* heap: calls with a priority other than 0 (``schedule(priority=)``,
  ``Runner.call()``), by priority then index, ahead of the FIFO calls when their priority
  is above 0 and behind them when below (a retry keeps its priority). ``others`` wakes and
  pauses the Runner's other engines too (``rate_limited._online.Priorities``).

What may start is decided against the ledger by the engine (``Engine._admit``); this
module holds no counters of calls.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from rate_limited._status import Status

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.ledgers import Ledger

__all__ = ["Admission", "Others"]

PENDING = Status.PENDING


class Others(Protocol):
    """The Runner's other engines, as one engine's admission reaches them."""

    def wake(self) -> None: ...

    def pause(self, until: float) -> None: ...


class Admission:
    """Ready queue, retry heap, lanes, the wake-up timer and the cool-down (loop thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: deque[Call] = deque()
        self.retry: list[tuple[int, int, int, Call]] = []  # (failures, index, seq, call)
        self.urgent: list[tuple[int, int, int, Call]] = []  # (-priority, index, seq, call)
        self._retry_seq = 0
        #: The Runner's other engines: ``wake()`` and ``pause()`` reach them too (set by
        #: ``Priorities`` once there are two engines; None: this engine alone).
        self.others: Others | None = None
        #: Partitioned resources: fresh calls by partition keys, each (call, attempts then).
        self._lanes: dict[tuple[Any, ...], deque[tuple[Call, int]]] | None = None
        self._passed: set[Call] = set()  # admitted from a lane, still in ready
        #: What idle workers wait on (None: no worker waits).
        self.wake_future: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        #: No call is admitted before this (loop time): a cool-down after HTTP 429.
        self.paused_until = -math.inf

    # -- the queues --------------------------------------------------------------------------
    def reset(self, ready: Iterable[Call], partitioned: bool) -> None:
        """A new run: ``ready`` in schedule order, no retries due."""
        self.retry.clear()
        self.urgent.clear()
        calls = ready if isinstance(ready, list) else list(ready)
        # Calls with a priority are rare: one comprehension finds the others, then the
        # deque is made in C (~230 instructions a call against ~380 appending each).
        fifo = [
            call
            for call in calls
            if call._extras is None or not call._extras.priority  # (call.priority, inline)
        ]
        self.ready = deque(fifo)
        if len(fifo) != len(calls):
            for call in calls:
                if call.priority:
                    self._push_urgent(call)
        self._passed.clear()
        self._lanes = None
        if partitioned:
            self._lanes = {}
            for call in (*self.ready, *(entry[3] for entry in self.urgent)):
                self._add_to_lane(call)

    def clear(self) -> list[Call]:
        """Empty every queue; returns the calls that were waiting (pending)."""
        waiting = [c for c in self.ready if c.status is PENDING]
        waiting += [entry[3] for entry in self.retry if entry[3].status is PENDING]
        waiting += [entry[3] for entry in self.urgent if entry[3].status is PENDING]
        self.ready = deque()
        self.retry.clear()
        self.urgent.clear()
        self._passed.clear()
        if self._lanes is not None:
            self._lanes.clear()
        return waiting

    def __bool__(self) -> bool:
        """Whether any call waits to be admitted."""
        return bool(self.ready or self.retry or self.urgent)

    def __len__(self) -> int:
        return len(self.ready) + len(self.retry) + len(self.urgent)

    def append(self, call: Call) -> None:
        """A fresh call, scheduled during the run."""
        if call.priority:
            self._push_urgent(call)
        else:
            self.ready.append(call)
        if self._lanes is not None:
            self._add_to_lane(call)

    def push_retry(self, call: Call) -> None:
        """``call`` is due to be tried again."""
        if call.priority:
            self._push_urgent(call)
            return
        self._retry_seq += 1
        heapq.heappush(self.retry, (call.failures, call.index, self._retry_seq, call))

    def _push_urgent(self, call: Call) -> None:
        self._retry_seq += 1
        heapq.heappush(self.urgent, (-call.priority, call.index, self._retry_seq, call))

    def head(self) -> Call | None:
        """The call admission tries next (dropping entries settled meanwhile)."""
        urgent = self.urgent
        if not urgent and not self.retry:  # the usual case: the first ready call
            ready = self.ready
            if ready and ready[0].status is PENDING and not self._passed:
                return ready[0]
            return self._fifo_head()
        if urgent:
            while urgent and urgent[0][3].status is not PENDING:
                heapq.heappop(urgent)  # admitted from a lane, withdrawn or settled late
            if urgent and urgent[0][0] < 0:
                return urgent[0][3]  # a priority above the FIFO calls'
        call = self._fifo_head()
        if call is None and urgent:
            return urgent[0][3]  # priorities below 0 go last
        return call

    def _fifo_head(self) -> Call | None:
        ready, retry = self.ready, self.retry
        while True:
            if retry and not (ready and ready[0].index < retry[0][1]):
                call = retry[0][3]
                if call.status is PENDING:
                    return call
                heapq.heappop(retry)  # settled meanwhile by a late result
            elif ready:
                call = ready[0]
                if call.status is PENDING and not (self._passed and call in self._passed):
                    return call
                self._passed.discard(ready.popleft())
            else:
                return None

    def pop_head(self, call: Call) -> None:
        """``call``, the head, was admitted (or failed for good)."""
        retry, urgent = self.retry, self.urgent
        if urgent and urgent[0][3] is call:
            heapq.heappop(urgent)
        elif retry and retry[0][3] is call:
            heapq.heappop(retry)
        else:
            self.ready.popleft()

    def simple_head(self) -> Call | None:
        """The fast paths' head: the first ready call, if no retry is due, nothing was
        admitted from a lane and it is pending; it is taken off the queue (``put_back``
        returns it, if it may not start after all)."""
        ready = self.ready
        if (
            ready
            and not self.retry
            and not self.urgent
            and not self._passed
            and ready[0].status is PENDING
        ):
            return ready.popleft()
        return None

    def put_back(self, call: Call) -> None:
        """``call``, taken by ``simple_head``, did not start: it is the head again."""
        self.ready.appendleft(call)

    # -- lanes (partitioned resources) --------------------------------------------------------
    @property
    def has_lanes(self) -> bool:
        """Whether calls of more than one partition wait."""
        return self._lanes is not None and len(self._lanes) > 1

    def _add_to_lane(self, call: Call) -> None:
        assert self._lanes is not None
        lane = tuple(need[2] for need in call.demand)
        self._lanes.setdefault(lane, deque()).append((call, call.attempts))

    def pass_head(
        self,
        head: Call,
        ledger: Ledger[Any],
        now: float,
        *,
        defer: bool,
        outranked: Callable[[Call], bool] | None = None,
        accept: Callable[[Call, Any, float], bool] | None = None,
        claim: Callable[[Call], bool] | None = None,
    ) -> tuple[Call | None, float]:
        """The head waits: reserve for the oldest first call of another lane that needs
        none of what the head waits for (so it cannot delay it), if one fits now, and
        return it. Else returns None and when the earliest of those lane heads will fit.
        ``accept(call, reservation, now)``: a last check of an admission (the budget's),
        which releases the reservation when it says no. ``claim(call)``: whether this
        process sends the call (work sharing)."""
        assert self._lanes is not None
        blocked = ledger.blocked_by(head.demand, now)
        own = tuple(need[2] for need in head.demand)
        firsts = []
        for lane, queue in list(self._lanes.items()):
            while queue and (
                queue[0][0].status is not PENDING or queue[0][0].attempts != queue[0][1]
            ):
                queue.popleft()  # admitted meanwhile (or finished): stale
            if not queue:
                del self._lanes[lane]
            elif lane != own:
                firsts.append(queue)
        when = math.inf
        for queue in sorted(firsts, key=lambda q: q[0][0].index):
            call = queue[0][0]
            if ledger.meter_ids(call.demand) & blocked:
                continue
            if outranked is not None and outranked(call):
                continue  # a call of another engine goes first
            if claim is not None and not claim(call):
                queue.popleft()  # another worker sends it (or sent it)
                continue
            reservation = ledger.try_reserve(call.demand, now, defer=defer)
            if (
                reservation is not None
                and accept is not None
                and not accept(call, reservation, now)
            ):
                continue  # the head waits on it too: the head decides
            if reservation is not None:
                call.reservation = reservation
                queue.popleft()
                self._passed.add(call)
                return call, now
            when = min(when, ledger.next_free_time(call.demand, now))
        return None, when

    # -- waiting and waking -------------------------------------------------------------------
    async def wait(self) -> None:
        """Wait until something may have changed (``wake``, the timer)."""
        future = self.wake_future
        if future is None or future.done():
            future = self.wake_future = self.loop.create_future()
        await future

    def wake(self) -> None:
        """Let waiting admission look again (capacity may have changed), here and in the
        Runner's other engines."""
        self.wake_here()
        if self.others is not None:
            self.others.wake()

    def wake_here(self) -> None:
        """``wake()``, for this engine only."""
        future = self.wake_future
        if future is not None:
            self.wake_future = None
            if not future.done():
                future.set_result(None)

    def arm_timer(self, when: float) -> None:
        """Wake at ``when`` (loop time), unless a timer fires earlier already."""
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = math.inf
        self.wake()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_when = math.inf

    def pause(self, until: float) -> bool:
        """Admit nothing before ``until`` (loop time); extends, never shortens, a pause.
        Returns whether it did extend it (a new cool-down)."""
        if until <= self.paused_until:
            return False
        self.paused_until = until
        if self.others is not None:  # one key: a 429's cool-down is everyone's
            self.others.pause(until)
        return True
