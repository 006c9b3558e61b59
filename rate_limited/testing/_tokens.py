"""The MockProvider's own tokenizer: a simple, documented, deterministic token count.

tiktoken needs its vocabulary files from the internet, and the mock must not share code
with the package it checks, so it counts tokens by a rule a test can reproduce by hand:

* text: every match of the regex ``\\w+|[^\\w\\s]`` (a run of letters/digits/underscores,
  or one punctuation character) costs ``ceil(len(match) / 4)`` tokens, so "hello" is 2,
  "a" is 1, "," is 1 and whitespace is free — about 4 characters a token, like cl100k;
* a chat message costs ``MESSAGE_TOKENS`` (4, for the role and framing) plus its content
  (and its ``name``, tool calls and tool results, counted as text or as compact JSON);
* every prompt pays ``REPLY_TOKENS`` (3) once, as OpenAI primes the reply;
* a non-text content part (image, audio, file, document) costs a flat ``MEDIA_TOKENS``
  (85, OpenAI's price of a low-detail image), whatever its size;
* tool definitions and ``response_format`` cost the tokens of their compact JSON (keys
  sorted, no spaces), as do tool calls and any content that is neither text nor a list.

Generated replies are built so that ``count_tokens(reply)`` is exactly the number of
completion tokens reported in ``usage``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MEDIA_TOKENS",
    "MESSAGE_TOKENS",
    "REPLY_TOKENS",
    "content_tokens",
    "count_tokens",
    "fit_tokens",
    "messages_tokens",
    "text_of",
]

#: Cost of one message's role and framing.
MESSAGE_TOKENS = 4
#: Cost of priming the reply, paid once per prompt.
REPLY_TOKENS = 3
#: Flat cost of one non-text content part (image, audio, file, document).
MEDIA_TOKENS = 85

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
# One-token words (at most 4 characters each) for filler text.
_FILLER_WORDS = (
    "the of and to in is it for on that as with was be by this at from or an are data rate "
    "call fast slow time load mock test unit work job task run step page word line text note "
    "list item code path node edge core part bit byte"
)
_FILLER = tuple(_FILLER_WORDS.split())


def count_tokens(text: str) -> int:
    """Tokens of ``text``: each ``\\w+|[^\\w\\s]`` match costs ceil(len / 4)."""
    return sum((len(piece) + 3) // 4 for piece in _TOKEN_RE.findall(text))


def _json_tokens(value: Any) -> int:
    return count_tokens(json.dumps(value, separators=(",", ":"), sort_keys=True))


def content_tokens(content: Any) -> int:
    """Tokens of a message's content: a string, a list of typed parts, or None."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        return sum(_part_tokens(part) for part in content)
    return _json_tokens(content)


def _part_tokens(part: Any) -> int:
    if isinstance(part, str):
        return count_tokens(part)
    if not isinstance(part, dict):
        return _json_tokens(part)
    kind = part.get("type")
    if kind in _TEXT_PART_TYPES:
        text = part.get("text", "")
        return count_tokens(text) if isinstance(text, str) else _json_tokens(text)
    if kind == "tool_use":  # Anthropic: the model's own tool call, echoed back
        return count_tokens(str(part.get("name", ""))) + _json_tokens(part.get("input", {}))
    if kind == "tool_result":
        return content_tokens(part.get("content"))
    if kind in ("function_call", "function_call_output"):  # Responses API items
        return _json_tokens({k: v for k, v in part.items() if k not in ("id", "type")})
    return MEDIA_TOKENS


def messages_tokens(messages: Sequence[Any], *extras: Any) -> int:
    """Prompt tokens of a message list plus ``extras`` (system text, tools, formats).

    A string extra is counted as text; any other non-None extra as its compact JSON.
    """
    total = REPLY_TOKENS
    for message in messages:
        if not isinstance(message, dict):
            total += MESSAGE_TOKENS + content_tokens(message)
            continue
        if "role" not in message and "type" in message:  # a bare Responses input item
            total += MESSAGE_TOKENS + _part_tokens(message)
            continue
        total += MESSAGE_TOKENS + content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += count_tokens(name)
        if message.get("tool_calls"):
            total += _json_tokens(message["tool_calls"])
    for extra in extras:
        if isinstance(extra, str):
            total += count_tokens(extra)
        elif extra is not None:
            total += _json_tokens(extra)
    return total


def text_of(content: Any) -> str:
    """The plain text of a message's content (text parts joined by newlines)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") in _TEXT_PART_TYPES
            and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def fit_tokens(prefix: str, n_tokens: int, rng: random.Random) -> str:
    """A text of exactly ``n_tokens`` tokens: as much of ``prefix`` as fits, then filler.

    The prefix is cut only at the end of a token, so it keeps its original spelling;
    filler words are one token each, so the total is exact.
    """
    used = 0
    end = 0
    for match in _TOKEN_RE.finditer(prefix):
        cost = (len(match.group()) + 3) // 4
        if used + cost > n_tokens:
            break
        used += cost
        end = match.end()
    head = prefix[:end]
    missing = n_tokens - used
    if missing <= 0:
        return head
    filler = " ".join(rng.choices(_FILLER, k=missing))
    return f"{head} {filler}" if head else filler
