"""The other workers whose claims are in the way (``rate_limited._claims``): who they are,
whether they have ended, and what the user is told about the calls waiting on them.

A holder string names a process's life lock (``rate_limited._holder``). ``has_ended``
probes a holder of this machine at most every ``POLL`` seconds and remembers the ones
proven ended (a token is never reused), whose claims are then taken over at once.
``describe_waiting`` is the once-a-run notice: how many calls wait, held by whom (the
``_NAMED`` busiest holders, the rest counted) and until when those claims hold unless
renewed, with what happens then to each kind of holder.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rate_limited._holder import Holder, has_ended, process_token
from rate_limited._redact import redact

if TYPE_CHECKING:
    from rate_limited.stores.base import ClaimState, Store

__all__ = ["POLL", "ClaimHolders"]

#: Seconds between two reads of the outcomes the waiting calls wait for (and between two
#: probes of one live holder).
POLL = 0.25
#: Holders named in the waiting notice (the rest are counted).
_NAMED = 4


class ClaimHolders:
    """The holders one engine's claims met (loop thread only)."""

    def __init__(self) -> None:
        self._parsed: dict[str, Holder] = {}  # holder string -> parsed
        #: Holders proven ended (a token is never reused): their claims count as expired.
        self.ended: set[str] = set()
        self._probed: dict[str, float] = {}  # live holder -> monotonic time of its probe

    def get(self, text: str) -> Holder:
        holder = self._parsed.get(text)
        if holder is None:
            holder = self._parsed[text] = Holder.parse(text)
        return holder

    def has_ended(self, text: str) -> bool:
        """Whether the holder ``text`` is proven ended (probed at most every POLL s)."""
        if text in self.ended:
            return True
        holder = self.get(text)
        if holder.token is None or not holder.here:
            return False  # can't be told: its claims lapse by expiry
        now = time.monotonic()
        if now - self._probed.get(text, -1e9) < POLL:
            return False
        self._probed[text] = now
        if not has_ended(holder):
            return False
        self.ended.add(text)
        del self._probed[text]
        return True

    def describe_waiting(
        self, held_by: dict[str, ClaimState], store: Store
    ) -> tuple[str, str, float]:
        """The notice for the calls waiting now (``held_by``: waiting key -> the claim in
        its way, on ``store``): its text, a short form (what is waited for) and the
        seconds until the last of their claims lapses unless renewed."""
        by_holder: dict[str, list[float | None]] = {}
        for state in held_by.values():
            by_holder.setdefault(state.holder or "?", []).append(state.expires_at)
        wall = store.clock()
        parts: list[str] = []
        latest = wall
        ranked = sorted(by_holder.items(), key=lambda item: -len(item[1]))
        for text, expiries in ranked[:_NAMED]:
            holder = self.get(text)
            known = [t for t in expiries if t is not None]
            until = max(known) if known else None
            latest = max(latest, until or wall)
            when = (
                "with no expiry"
                if until is None
                else f"until {time.strftime('%H:%M:%S', time.localtime(until))} "
                f"(in {max(0.0, until - wall):.0f} s)"
            )
            if holder.token is not None and holder.token == process_token():
                fate = "another Runner of this process"
            elif holder.here and holder.token is not None:
                fate = "a running process of this machine: taken over as soon as it ends"
            elif holder.here:
                fate = (
                    "written by an older rate_limited, whose end can't be seen here: taken "
                    "over when its claims lapse"
                )
            else:
                fate = "taken over then if its worker stops renewing them"
            parts.append(f"{len(expiries)} held by {holder.describe()} {when}, {fate}")
        if len(ranked) > _NAMED:
            rest = sum(len(expiries) for _, expiries in ranked[_NAMED:])
            parts.append(f"{rest} held by {len(ranked) - _NAMED} other workers")
        count = len(held_by)
        text = (
            f"{count} call{'s are' if count != 1 else ' is'} waiting for other workers on "
            f"the store {store!r}, which claimed them first: {'; '.join(parts)}. Each "
            "ends with the outcome its worker stores. (A worker renews its claims while it "
            f"runs; they last claim_ttl={store.claim_ttl:g} s, see open_store.)"
        )
        first = self.get(ranked[0][0]).describe() if ranked else "?"
        others = " and others" if len(ranked) > 1 else ""
        what = f"{count} call{'s' if count != 1 else ''} claimed by {first}{others}"
        return redact(text), redact(what), latest - wall
