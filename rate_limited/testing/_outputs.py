"""What the MockProvider answers and how long it takes: lengths, text, latency.

Output lengths are heavy-tailed like real model output (lognormal by default, median
``median_output_tokens``), capped at the request's ``max_tokens``; a fixed int or a
callable ``(rng) -> int`` replaces the distribution. Every draw comes from the request's
own seeded ``random.Random``, so answers are reproducible.

The reply starts with something derived from the last user message — the message itself
(``reply="echo"``), its ``prompt_digest`` (``"hash"``), nothing (``"filler"``) or what a
callable makes of it — cut to fit, then filler words up to exactly the drawn number of
tokens. JSON-mode and forced tool-call answers are ``{"text": "..."}`` objects (8 tokens
of JSON plus the words), cut short like a real model if ``max_tokens`` is below that.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ._tokens import count_tokens, fit_tokens
from ._wire import ApiCall, Output

__all__ = ["OutputModel", "OutputTokens", "ReplyMode", "prompt_digest"]

#: "echo", "hash", "filler", or a callable turning the last user message into a prefix.
ReplyMode = Literal["echo", "hash", "filler"] | Callable[[str], str]
#: None (lognormal), a fixed count, or a callable drawing a count from the request's rng.
OutputTokens = int | Callable[[random.Random], int] | None

_WORD_RE = re.compile(r"\w+")
_JSON_SEPARATORS = (",", ":")
_JSON_OVERHEAD = count_tokens(json.dumps({"text": ""}, separators=_JSON_SEPARATORS))


def prompt_digest(text: str) -> str:
    """The 8 hex characters a ``reply="hash"`` answer starts with (2 tokens)."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class OutputModel:
    """How answers are drawn: their length, their text and the time they take."""

    output_tokens: OutputTokens = None
    median_output_tokens: float = 100.0
    #: Spread of the lognormal length distribution (sigma of the underlying normal).
    output_sigma: float = 1.0
    reply: ReplyMode = "echo"
    #: Seconds before every answer, plus this per output token, plus uniform [0, jitter).
    latency: float = 0.0
    latency_per_token: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency", "latency_per_token", "jitter"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if isinstance(self.output_tokens, int) and self.output_tokens < 0:
            raise ValueError(f"output_tokens must be >= 0, got {self.output_tokens}")
        if isinstance(self.reply, str) and self.reply not in ("echo", "hash", "filler"):
            raise ValueError(
                f"reply must be 'echo', 'hash', 'filler' or a callable: {self.reply!r}"
            )

    def length(self, rng: random.Random, cap: int) -> int:
        """One answer's output tokens, at most ``cap``."""
        if self.output_tokens is None:
            drawn = rng.lognormvariate(math.log(self.median_output_tokens), self.output_sigma)
            tokens = max(1, round(drawn))
        elif isinstance(self.output_tokens, int):
            tokens = self.output_tokens
        else:
            tokens = int(self.output_tokens(rng))
        return max(0, min(cap, tokens))

    def answer(self, call: ApiCall, rng: random.Random) -> list[Output]:
        """The answers to ``call`` (``call.choices`` of them)."""
        cap = call.max_output_tokens
        lengths = [self.length(rng, cap) for _ in range(call.choices)]
        prefix = self._prefix(call.prompt_text)
        outputs = []
        for target in lengths:
            if call.shape == "text":
                text = fit_tokens(prefix, target, rng)
            else:
                target = max(target, min(cap, _JSON_OVERHEAD))
                words = " ".join(_WORD_RE.findall(prefix))
                inner = fit_tokens(words, max(0, target - _JSON_OVERHEAD), rng)
                text = json.dumps({"text": inner}, ensure_ascii=False, separators=_JSON_SEPARATORS)
                if target < _JSON_OVERHEAD:
                    text = fit_tokens(text, target, rng)
            outputs.append(Output(text, count_tokens(text), truncated=target >= cap))
        return outputs

    def delay(self, output_tokens: int, rng: random.Random) -> float:
        """Seconds to wait before answering a request that generated ``output_tokens``."""
        jitter = rng.uniform(0.0, self.jitter) if self.jitter else 0.0
        return self.latency + self.latency_per_token * output_tokens + jitter

    def _prefix(self, prompt_text: str) -> str:
        if callable(self.reply):
            return self.reply(prompt_text)
        if self.reply == "echo":
            return prompt_text
        if self.reply == "hash":
            return prompt_digest(prompt_text)
        return ""
