"""``Priorities``: which waiting call takes freed quota, across the engines of one Runner.

The batch's engine and the online calls' (``rate_limited._online``) share one ledger on
one loop thread. Each tells ``Priorities`` the head call it waits to admit; an engine
whose head is outranked (a lower ``priority``) by another's waiting head on a shared
meter does not reserve, and is woken when that head is admitted or gone. Wake-ups and
429 cool-downs of one engine's admission reach the others (``Admission.others``).
Engines consult it only once a second engine has joined: a batch alone pays nothing.
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
        """Whether another engine's waiting head has a higher priority than ``call`` and
        needs some of the same quota (then ``call`` waits, and is woken when it is not)."""
        ids: set[int] | None = None
        for other, head in self._waiting.items():
            if other is engine or head.priority <= call.priority:
                continue
            if head.status is not Status.PENDING:
                continue
            if ids is None:
                ids = self._ledger.meter_ids(call.demand)
            if self._ledger.meter_ids(head.demand) & ids:
                return True
        return False

    def others_in_flight(self, engine: Member) -> bool:
        """Whether another engine has calls in flight (their settling frees quota)."""
        return any(other.running_calls for other in self._engines if other is not engine)

    def waiting(self, engine: Member, call: Call) -> None:
        """``engine``'s head ``call`` waits for quota."""
        self._waiting[engine] = call

    def admitted(self, engine: Member) -> None:
        """``engine`` admitted its head: the engines it held back may look again."""
        if self._waiting.pop(engine, None) is not None:
            self.wake(engine)

    idle = admitted  #: ``engine`` has stopped waiting (its run ended).

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
