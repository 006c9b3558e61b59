"""Seeded fault injection for the MockProvider: 500s, hangs, malformed bodies, drops.

Faults strike only requests that passed admission (a 429 is decided first, as at the
real providers), and a faulted request keeps everything admission charged it — the
request and its prompt and reserved output tokens — because a provider that failed
mid-way has usually billed the quota already. That is the strict choice for a client
ledger: one that refunds on a 5xx is caught over-sending.

Which fault (if any) strikes is drawn from the request's own seeded random stream
(see ``MockProvider``), so the same seed and the same requests give the same faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["FAULT_KINDS", "FaultKind", "Faults", "draw_fault"]

FaultKind = Literal["error_500", "hang", "malformed", "drop", "stream_break"]
#: Every fault kind, in the order their probabilities are stacked when drawing.
FAULT_KINDS: tuple[FaultKind, ...] = ("error_500", "hang", "malformed", "drop", "stream_break")


@dataclass(frozen=True)
class Faults:
    """Probabilities of each fault per admitted request (they must sum to at most 1).

    * ``error_500``: answer 500 with an error body in the provider's format;
    * ``hang``: hold the request ``hang_seconds`` without answering, then close the
      connection (set it past the client's timeout to make the client time out);
    * ``malformed``: answer 200 with a body that is not valid JSON;
    * ``drop``: close the connection without answering;
    * ``stream_break``: a ``stream: true`` answer stops half-way (the connection closes
      after half of its events; the request was billed). Other requests are answered.
    """

    error_500: float = 0.0
    hang: float = 0.0
    malformed: float = 0.0
    drop: float = 0.0
    stream_break: float = 0.0
    hang_seconds: float = 30.0

    def __post_init__(self) -> None:
        total = 0.0
        for kind in FAULT_KINDS:
            value = getattr(self, kind)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{kind} is a probability in [0, 1], got {value!r}")
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:g}; they must sum to <= 1")
        if not self.hang_seconds >= 0:
            raise ValueError(f"Faults.hang_seconds must be >= 0, got {self.hang_seconds!r}")

    def any(self) -> bool:
        """Whether any fault can strike."""
        return any(getattr(self, kind) > 0 for kind in FAULT_KINDS)


def draw_fault(faults: Faults, rng: random.Random) -> FaultKind | None:
    """The fault that strikes, or None; always uses exactly one draw of ``rng``."""
    point = rng.random()
    for kind in FAULT_KINDS:
        point -= getattr(faults, kind)
        if point < 0:
            return kind
    return None
