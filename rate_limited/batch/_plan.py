"""Splitting requests into batches that fit a provider's limits (pure functions).

A batch holds at most ``max_requests`` requests and ``max_bytes`` bytes of input, one
model only where the provider says so (OpenAI), and at most ``max_tokens`` prompt tokens
where the model's queue is limited (OpenAI's enqueued tokens), so that every batch can
enter the queue once the batches before it have left it. Requests keep their order
within a model, and batches are made as full as the limits allow.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from rate_limited.exceptions import ConfigurationError

__all__ = ["Request", "split"]

#: Bytes a batch's envelope adds to its requests (Anthropic's ``{"requests": [...]}``).
ENVELOPE_BYTES = 64


@dataclass(frozen=True)
class Request:
    """One request to place: its id, its input line, its model and prompt tokens."""

    custom_id: str
    line: bytes
    model: Hashable
    tokens: float


def split(
    requests: Sequence[Request],
    *,
    max_requests: int,
    max_bytes: int,
    one_model: bool,
    max_tokens: dict[Hashable, float] | None = None,
) -> list[list[Request]]:
    """The batches for ``requests``, in order of each model's first request.

    Raises ``ConfigurationError`` for a request that no batch can hold (larger than
    ``max_bytes`` alone, or more prompt tokens than its model's queue limit).
    """
    groups: dict[Hashable, list[Request]] = {}
    for request in requests:
        groups.setdefault(request.model if one_model else None, []).append(request)
    batches: list[list[Request]] = []
    room = max_bytes - ENVELOPE_BYTES
    for model, group in groups.items():
        token_limit = (max_tokens or {}).get(model) if one_model else None
        current: list[Request] = []
        size = 0
        tokens = 0.0
        for request in group:
            length = len(request.line)
            if length > room:
                raise ConfigurationError(
                    f"Request {request.custom_id} is {length:,} bytes as batch input, more "
                    f"than a whole batch may hold ({max_bytes:,} bytes): send it online."
                )
            if token_limit is not None and request.tokens > token_limit:
                raise ConfigurationError(
                    f"Request {request.custom_id} has ~{request.tokens:,.0f} prompt tokens, "
                    f"more than the enqueued-token limit of {model!r} ({token_limit:,.0f}): "
                    "no batch of this model can hold it; raise enqueued_token_limit if your "
                    "account's is higher, or send it online."
                )
            full = (
                len(current) >= max_requests
                or size + length > room
                or (token_limit is not None and tokens + request.tokens > token_limit)
            )
            if current and full:
                batches.append(current)
                current, size, tokens = [], 0, 0.0
            current.append(request)
            size += length
            tokens += request.tokens
        if current:
            batches.append(current)
    return batches
