"""Reading what the providers send back: the rate-limit headers, a response's fields.

OpenAI sends ``x-ratelimit-limit-{requests,tokens}`` and ``x-ratelimit-remaining-...``;
Anthropic ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``
(and ``-tokens-`` for the tightest token bucket, which the presets do not need). Both
describe buckets right after the provider admitted the request. The ``reset`` headers
are not read: with continuous refill at limit/60 per second they add nothing.

Anthropic documents its token counts as rounded: "anthropic-ratelimit-input-tokens-remaining:
The number of input tokens remaining (rounded to the nearest thousand) before being rate
limited" (the same for output tokens), so those readings carry a precision of 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Family", "LimitReading", "field", "headers_of", "read_limits", "reported"]

Family = Literal["openai", "anthropic"]

_KINDS: dict[Family, tuple[str, ...]] = {
    "openai": ("requests", "tokens"),
    "anthropic": ("requests", "input_tokens", "output_tokens"),
}
#: How far a ``remaining`` header may be from the truth, by family and kind.
_PRECISION: dict[tuple[Family, str], float] = {
    ("anthropic", "input_tokens"): 500.0,
    ("anthropic", "output_tokens"): 500.0,
}


@dataclass(frozen=True)
class LimitReading:
    """What a response said about one bucket: its limit and what was left (None: absent),
    and how far ``remaining`` may be from the truth (it was rounded)."""

    limit: float | None
    remaining: float | None
    precision: float = 0.0


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
            readings[kind] = LimitReading(limit, remaining, _PRECISION.get((family, kind), 0.0))
    return readings


def headers_of(obj: Any) -> Mapping[str, str] | None:
    """The HTTP headers of a raw response or of an SDK exception (via its ``response``)."""
    for holder in (obj, getattr(obj, "response", None)):
        headers = getattr(holder, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            return headers  # type: ignore[no-any-return]
    return None


def field(obj: Any, *path: str) -> Any:
    """``obj.a.b`` or ``obj["a"]["b"]`` (SDK objects and plain dicts alike); None if absent."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


def reported(result: Any, name: str) -> float:
    """``result.usage.<name>``, the count a response reports; a ``ValueError`` (the
    results extractor's error, named by the engine) when it has none."""
    usage = field(result, "usage")
    count = field(usage, name)
    if not isinstance(count, int | float) or isinstance(count, bool):
        raise ValueError(f"the response has no usage.{name} (usage: {usage!r})")
    return float(count)
