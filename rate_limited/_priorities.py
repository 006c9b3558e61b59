"""``Priorities``: which waiting call takes freed quota, across the engines of one Runner.

The batch's engine and the online calls' (``rate_limited._online``) share one ledger on
one loop thread. Each tells ``Priorities`` when its head call waits for quota; from then
until its run ends the engine *waits*, and its head is whatever its queue holds first
(``Admission.head()``, read when asked). An engine whose head is outranked (a lower
``priority``) by a waiting engine's head on a shared meter does not reserve. Wake-ups and
429 cool-downs of one engine's admission reach the others (``Admission.others``).
Engines consult it only once a second engine has joined: a batch alone pays nothing.

Two rules keep freed quota for the higher priority, on a loaded machine too:

* The head is read live, not remembered. When the waiting engine admits its head, its
  next call is the head at once: had the record ended with the admission, the other
  engine (woken by it) would run before the next call asked for quota again and take
  whatever else had freed meanwhile (a late timer frees several units at once).
* An outranked engine wakes the engine that outranks it. It asks only when capacity may
  have changed (one of its calls settled, a wake-up): that is quota the outranking engine
  may now take, and it would not otherwise look before its own timer, or ever, for quota
  no timer frees (a reservation handed back when an async call returns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from rate_limited._admission import Admission
from rate_limited._status import Status

if TYPE_CHECKING:
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Ledger

__all__ = ["Member", "Priorities"]


class Member(Protocol):
    """What Priorities needs of an engine (``EngineCore``; not imported: it imports this)."""

    admission: Admission
    priorities: Priorities | None
    function_name: str

    @property
    def running_calls(self) -> int: ...


class Priorities:
    """Which waiting call goes first, across the engines of one Runner (loop thread).

    Each engine tells it the head call it is waiting to admit (``waiting``) and when that
    wait ends (``admitted``, ``idle``); ``outranked`` says whether an engine must let
    another's head go first. Engines only consult it once a second engine has joined.
    """

    def __init__(self, ledger: Ledger[Any]) -> None:
        self._ledger = ledger
        self._engines: list[Member] = []
        self._waiting: dict[Member, Call] = {}

    def join(self, engine: Member) -> None:
        """Arbitrate for ``engine`` too (an engine alone needs no arbitration)."""
        self._engines.append(engine)
        if len(self._engines) > 1:
            for member in self._engines:
                member.priorities = self
                member.admission.others = _Others(self, member)

    def outranked(self, engine: Member, call: Call) -> bool:
        """Whether a waiting engine's head has a higher priority than ``call`` and needs
        some of the same quota. Then ``call`` waits (woken when that engine admits its
        last waiting call or stops), and that engine is woken to look again: the caller
        asks because capacity may have changed, and the capacity is that head's."""
        ids: set[int] | None = None
        for other in self._waiting:
            if other is engine:
                continue
            head = other.admission.head()  # live: the next call once the last one went
            if head is None or head.priority <= call.priority:
                continue
            if head.status is not Status.PENDING:
                continue
            if ids is None:
                ids = self._ledger.meter_ids(call.demand)
            if self._ledger.meter_ids(head.demand) & ids:
                other.admission.wake_here()
                return True
        return False

    def others_in_flight(self, engine: Member) -> bool:
        """Whether another engine has calls in flight (their settling frees quota)."""
        return any(other.running_calls for other in self._engines if other is not engine)

    def waiting(self, engine: Member, call: Call) -> None:
        """``engine``'s head ``call`` waits for quota: ``engine`` waits until its run ends."""
        self._waiting[engine] = call

    def admitted(self, engine: Member) -> None:
        """``engine`` admitted its head: the engines it held back may look again (still
        outranked if its next call outranks them: the head is read when they ask)."""
        if engine in self._waiting:
            self.wake(engine)

    def idle(self, engine: Member) -> None:
        """``engine`` has stopped waiting (its run ended)."""
        if self._waiting.pop(engine, None) is not None:
            self.wake(engine)

    def wake(self, source: Member) -> None:
        """Capacity may have changed (``source`` settled a call, or a limit moved)."""
        for engine in self._engines:
            if engine is not source:
                engine.admission.wake_here()

    def pause(self, source: Member, until: float) -> None:
        """A 429's cool-down in ``source`` pauses every engine: the key is the same."""
        for engine in self._engines:
            if engine is not source:
                engine.admission.pause(until)

    def __repr__(self) -> str:
        waiting = {e.function_name or id(e): c.priority for e, c in self._waiting.items()}
        return f"<Priorities of {len(self._engines)} engines, waiting heads {waiting}>"


class _Others:
    """What one engine's admission reaches of the others (``Admission.others``)."""

    __slots__ = ("_engine", "_priorities")

    def __init__(self, priorities: Priorities, engine: Member) -> None:
        self._priorities = priorities
        self._engine = engine

    def wake(self) -> None:
        self._priorities.wake(self._engine)

    def pause(self, until: float) -> None:
        self._priorities.pause(self._engine, until)
