"""``SemanticMatch``: how the semantic cache answered a call. Its own module, with no
imports of the package, because calls and outcomes carry one and the cache itself sits
far above them."""

from __future__ import annotations

import dataclasses

__all__ = ["SemanticMatch"]


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
