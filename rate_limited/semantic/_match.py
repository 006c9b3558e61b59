"""What the semantic cache did: ``SemanticMatch`` (how it answered one call) and
``SemanticStats`` (its counts in a run). Their own module, importing nothing of the
package, because calls, outcomes and the run's statistics carry them and the cache itself
sits far above those."""

from __future__ import annotations

import dataclasses

__all__ = ["SemanticMatch", "SemanticStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class SemanticMatch:
    """How a call was answered by the semantic cache: with the outcome of another call."""

    #: Store key of the call whose outcome answered this one.
    key: str
    #: That call's compared prompt text, redacted.
    text: str
    #: Cosine similarity of the two prompts' embeddings (at least the cache's threshold).
    similarity: float
    #: Usage the matched call was billed, per resource: what this call did not spend.
    saved: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class SemanticStats:
    """What the semantic cache did in the current run."""

    #: Calls compared with the index (and with each other).
    looked_up: int = 0
    #: Calls answered by the semantic cache (from the store or from an earlier call).
    hits: int = 0
    #: Calls with nothing to compare (no text, or not text), sent as usual.
    skipped: int = 0
    #: Usage the hits did not spend, per resource (what their matched calls were billed).
    saved: dict[str, float] = dataclasses.field(default_factory=dict)

    def count_hit(self, usage: dict[str, float]) -> None:
        self.hits += 1
        for name, amount in usage.items():
            self.saved[name] = self.saved.get(name, 0.0) + amount
