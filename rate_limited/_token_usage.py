"""``TokenUsage``: the tokens a provider billed for one response, read from its ``usage``.

One shape for the usages the providers report, so that one price formula serves them all.
``input_tokens`` is every prompt token, however billed; the cache counts are parts of it:

* OpenAI chat completions and embeddings: ``prompt_tokens`` (cached ones included),
  ``prompt_tokens_details.cached_tokens`` and ``.cache_write_tokens``,
  ``completion_tokens`` (reasoning tokens are part of it; embeddings have none);
* OpenAI Responses API: ``input_tokens`` (cached included),
  ``input_tokens_details.cached_tokens`` and ``.cache_write_tokens``, ``output_tokens``
  (reasoning included);
* Anthropic messages: ``input_tokens`` counts only the tokens after the last cache
  breakpoint, so the prompt is ``input_tokens + cache_creation_input_tokens +
  cache_read_input_tokens``; ``cache_creation.ephemeral_1h_input_tokens`` are the writes
  kept for one hour (billed higher than the 5-minute ones).

SDK objects (``openai.types``, ``anthropic.types``), their ``model_dump()`` and plain dicts
are read alike, as is a whole response (its ``usage``). Audio and image tokens are counted
with the text tokens they are part of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TokenUsage", "field", "read_usage"]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens billed for one response. Cache counts are parts of ``input_tokens``."""

    #: Every prompt token: uncached, read from the cache and written to it.
    input_tokens: int = 0
    #: Output tokens, reasoning included, summed over the ``n`` choices.
    output_tokens: int = 0
    #: Prompt tokens read from the prompt cache (OpenAI's ``cached_tokens``).
    cached_input_tokens: int = 0
    #: Prompt tokens written to the prompt cache, of any lifetime.
    cache_write_tokens: int = 0
    #: Of ``cache_write_tokens``, those written for one hour instead of five minutes.
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"TokenUsage: {name} must be a non-negative int (tokens), got {value!r}."
                )
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                f"TokenUsage: cached_input_tokens ({self.cached_input_tokens}) plus "
                f"cache_write_tokens ({self.cache_write_tokens}) exceed input_tokens "
                f"({self.input_tokens}), of which they are parts."
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                f"TokenUsage: cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceed "
                f"cache_write_tokens ({self.cache_write_tokens}), of which they are a part."
            )


def field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]`` (SDK objects and dicts alike); None when absent."""
    cls = type(obj)
    if cls is dict:
        return obj.get(name)
    if obj is None:
        return None
    kind = _kinds.get(cls)
    if kind is None:
        kind = _kinds.setdefault(cls, _kind(cls))
    if kind is _MAPPING:
        return obj.get(name)
    if kind is not _OBJECT and name not in kind:
        # A field the model lacks, found without the AttributeError of a getattr miss
        # (several microseconds on pydantic models); what a newer API added is an extra.
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(name) if isinstance(extra, dict) else None
    return getattr(obj, name, None)


_MAPPING: frozenset[str] = frozenset({"<mapping>"})
_OBJECT: frozenset[str] = frozenset({"<object>"})
#: Per class: ``_MAPPING``, a pydantic model's field names, or ``_OBJECT`` (anything else).
_kinds: dict[type, frozenset[str]] = {}


def _kind(cls: type) -> frozenset[str]:
    if issubclass(cls, Mapping):
        return _MAPPING
    fields = getattr(cls, "model_fields", None)  # pydantic v2 models
    return frozenset(fields) if isinstance(fields, dict) else _OBJECT


def _count(obj: Any, *path: str) -> int:
    """The token count at ``path`` (0 when absent or None), checked to be a count."""
    value = obj
    for name in path:
        value = field(value, name)
        if value is None:
            return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a JSON round trip through some proxies
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"usage.{'.'.join(path)} is not a number of tokens: {value!r}")
    return value


def _has(obj: Any, name: str) -> bool:
    return field(obj, name) is not None


def read_usage(response: Any) -> TokenUsage:
    """The ``TokenUsage`` of a response, or of its ``usage`` object or dict.

    Raises ValueError when there is no usage the providers report (see the module
    docstring for the shapes read), or when its counts are not counts.
    """
    if isinstance(response, TokenUsage):
        return response
    usage = field(response, "usage")
    if usage is None:
        usage = response
    if _has(usage, "prompt_tokens"):  # OpenAI chat completions, embeddings, compatibles
        return TokenUsage(
            input_tokens=_count(usage, "prompt_tokens"),
            output_tokens=_count(usage, "completion_tokens"),
            cached_input_tokens=_count(usage, "prompt_tokens_details", "cached_tokens"),
            cache_write_tokens=_count(usage, "prompt_tokens_details", "cache_write_tokens"),
        )
    if _has(usage, "input_tokens"):
        if _has(usage, "input_tokens_details"):  # OpenAI Responses API
            return TokenUsage(
                input_tokens=_count(usage, "input_tokens"),
                output_tokens=_count(usage, "output_tokens"),
                cached_input_tokens=_count(usage, "input_tokens_details", "cached_tokens"),
                cache_write_tokens=_count(usage, "input_tokens_details", "cache_write_tokens"),
            )
        # Anthropic (and a bare {"input_tokens", "output_tokens"}: the same either way).
        read = _count(usage, "cache_read_input_tokens")
        written = _count(usage, "cache_creation_input_tokens")
        return TokenUsage(
            input_tokens=_count(usage, "input_tokens") + read + written,
            output_tokens=_count(usage, "output_tokens"),
            cached_input_tokens=read,
            cache_write_tokens=written,
            cache_write_1h_tokens=_count(usage, "cache_creation", "ephemeral_1h_input_tokens"),
        )
    fields = f" with keys {sorted(map(str, usage))[:12]}" if isinstance(usage, Mapping) else ""
    raise ValueError(
        "no token usage found: expected OpenAI's usage.prompt_tokens (chat completions, "
        "embeddings) or usage.input_tokens (Responses API, Anthropic messages), got a "
        f"{type(usage).__name__}{fields}."
    )
