"""Reading the providers' rate-limit headers.

OpenAI sends ``x-ratelimit-limit-{requests,tokens}`` and ``x-ratelimit-remaining-...``;
Anthropic ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``
(and ``-tokens-`` for the tightest token bucket, which the presets do not need). Both
describe buckets right after the provider admitted the request. The ``reset`` headers
are not read: with continuous refill at limit/60 per second they add nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Family", "LimitReading", "headers_of", "read_limits"]

Family = Literal["openai", "anthropic"]

_KINDS: dict[Family, tuple[str, ...]] = {
    "openai": ("requests", "tokens"),
    "anthropic": ("requests", "input_tokens", "output_tokens"),
}


@dataclass(frozen=True)
class LimitReading:
    """What a response said about one bucket: its limit and what was left (None: absent)."""

    limit: float | None
    remaining: float | None


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = headers.get(name)
    except Exception:  # exotic header containers
        return None
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 and number != float("inf") else None


def read_limits(headers: Mapping[str, str] | None, family: Family) -> dict[str, LimitReading]:
    """``{kind: LimitReading}`` for each bucket the headers describe (kinds: "requests",
    "tokens" for OpenAI; "requests", "input_tokens", "output_tokens" for Anthropic)."""
    if headers is None:
        return {}
    readings: dict[str, LimitReading] = {}
    for kind in _KINDS[family]:
        if family == "openai":
            limit = _number(headers, f"x-ratelimit-limit-{kind}")
            remaining = _number(headers, f"x-ratelimit-remaining-{kind}")
        else:
            label = kind.replace("_", "-")
            limit = _number(headers, f"anthropic-ratelimit-{label}-limit")
            remaining = _number(headers, f"anthropic-ratelimit-{label}-remaining")
        if limit is not None or remaining is not None:
            readings[kind] = LimitReading(limit, remaining)
    return readings


def headers_of(obj: Any) -> Mapping[str, str] | None:
    """The HTTP headers of a raw response or of an SDK exception (via its ``response``)."""
    for holder in (obj, getattr(obj, "response", None)):
        headers = getattr(holder, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            return headers  # type: ignore[no-any-return]
    return None
