"""Prompt tokens of an API request body, estimated before it is sent.

One walker for every request shape the presets know: OpenAI chat completions
(``messages``, ``tools``, legacy ``functions``, ``response_format``), the Responses API
(``input`` items, ``instructions``, ``tools``, ``text.format``), embeddings (``input``
strings or token arrays) and Anthropic messages (``system``, ``messages``, ``tools``).

Text goes through a ``TextCounter`` (tiktoken or the conservative counter); structure is
charged as the providers frame it, rounded up: every message ``MESSAGE_TOKENS`` (OpenAI
documents 3 plus the role), every prompt ``REPLY_TOKENS``, tool definitions and formats
as their compact JSON, images by detail (a low-detail image is 85 tokens, a high or auto
one at most ``HIGH_DETAIL_IMAGE_TOKENS`` for the gpt-4o family), other media (audio,
files, documents) a flat ``media_tokens``. Tune those two per preset when your model
charges more (gpt-4o-mini multiplies image tokens); the calibration learned from
``usage`` also scales estimates up after the first call that proved them low.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rate_limited.apis._tokens import TextCounter, json_tokens

__all__ = [
    "HIGH_DETAIL_IMAGE_TOKENS",
    "LOW_DETAIL_IMAGE_TOKENS",
    "MESSAGE_TOKENS",
    "REPLY_TOKENS",
    "PromptEstimator",
]

#: Framing of one message (OpenAI: 3, plus 1 for the role; the MockProvider: 4).
MESSAGE_TOKENS = 5
#: Priming of the reply, once per prompt.
REPLY_TOKENS = 3
LOW_DETAIL_IMAGE_TOKENS = 85
#: 85 + 170 per 512 px tile, at most 8 tiles once scaled to 768 px on the short side.
HIGH_DETAIL_IMAGE_TOKENS = 1445

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_ITEM_PARTS = frozenset({"function_call", "function_call_output"})


class PromptEstimator:
    """Estimates the prompt tokens of request bodies with one text counter."""

    __slots__ = ("count", "image_tokens", "media_tokens")

    def __init__(
        self,
        count: TextCounter,
        *,
        image_tokens: int | None = None,
        media_tokens: int = HIGH_DETAIL_IMAGE_TOKENS,
    ) -> None:
        self.count = count
        #: Tokens per image; None: 85 for ``detail="low"``, else ``HIGH_DETAIL_IMAGE_TOKENS``.
        self.image_tokens = image_tokens
        #: Tokens per audio, file or document part.
        self.media_tokens = media_tokens

    # -- building blocks ---------------------------------------------------------------------
    def text(self, value: Any) -> int:
        if isinstance(value, str):
            return self.count(value)
        return 0 if value is None else json_tokens(value, self.count)

    def content(self, content: Any) -> int:
        """A message's content: a string, a list of typed parts, or anything else as JSON."""
        if content is None:
            return 0
        if isinstance(content, str):
            return self.count(content)
        if isinstance(content, list | tuple):
            return sum(self.part(part) for part in content)
        return json_tokens(content, self.count)

    def part(self, part: Any) -> int:
        if isinstance(part, str):
            return self.count(part)
        if not isinstance(part, Mapping):
            return json_tokens(part, self.count)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            return self.text(part.get("text", ""))
        if kind in _IMAGE_PARTS:
            return self._image(part)
        if kind == "tool_use":  # Anthropic: the model's own tool call, sent back
            return self.text(part.get("name", "")) + json_tokens(part.get("input", {}), self.count)
        if kind == "tool_result":
            return self.content(part.get("content")) + 1
        if kind in _ITEM_PARTS:  # Responses API items
            fields = {k: v for k, v in part.items() if k not in ("id", "type")}
            return json_tokens(fields, self.count)
        return self.media_tokens  # audio, file, document, refusal ...

    def _image(self, part: Mapping[str, Any]) -> int:
        if self.image_tokens is not None:
            return self.image_tokens
        detail = part.get("detail")
        image = part.get("image_url")
        if isinstance(image, Mapping):
            detail = image.get("detail", detail)
        return LOW_DETAIL_IMAGE_TOKENS if detail == "low" else HIGH_DETAIL_IMAGE_TOKENS

    def message(self, message: Any) -> int:
        if not isinstance(message, Mapping):
            return MESSAGE_TOKENS + self.content(message)
        if "role" not in message and "type" in message:  # a bare Responses input item
            return MESSAGE_TOKENS + self.part(message)
        total = MESSAGE_TOKENS + self.content(message.get("content"))
        for key in ("name", "tool_call_id"):
            value = message.get(key)
            if isinstance(value, str):
                total += self.count(value) + 1
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                total += json_tokens(message[key], self.count)
        return total

    def messages(self, messages: Any, *extras: Any) -> int:
        """A message list, the reply priming, and ``extras`` (strings as text, else JSON)."""
        items: Iterable[Any] = messages if isinstance(messages, list | tuple) else [messages]
        total = REPLY_TOKENS + sum(self.message(m) for m in items if m is not None)
        for extra in extras:
            total += self.text(extra)
        return total

    # -- request bodies ----------------------------------------------------------------------
    def chat(self, params: Mapping[str, Any]) -> int:
        """``chat.completions.create(**params)``."""
        return self.messages(
            params.get("messages") or [],
            params.get("tools"),
            params.get("functions"),
            params.get("response_format"),
        )

    def responses(self, params: Mapping[str, Any]) -> int:
        """``responses.create(**params)``."""
        items = params.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        text = params.get("text")
        text_format = text.get("format") if isinstance(text, Mapping) else None
        return self.messages(
            items or [], params.get("instructions"), params.get("tools"), text_format
        )

    def embeddings(self, params: Mapping[str, Any]) -> int:
        """``embeddings.create(**params)``: strings counted, token arrays by length."""
        inputs = params.get("input")
        if isinstance(inputs, str):
            return self.count(inputs)
        if not isinstance(inputs, list | tuple):
            return self.text(inputs)
        if inputs and all(isinstance(i, int) for i in inputs):
            return len(inputs)
        total = 0
        for item in inputs:
            if isinstance(item, str):
                total += self.count(item)
            elif isinstance(item, list | tuple):
                total += len(item)
            else:
                total += self.text(item)
        return total

    def anthropic(self, params: Mapping[str, Any]) -> int:
        """``messages.create(**params)`` of Anthropic: system, messages and tools."""
        return self.content(params.get("system")) + self.messages(
            params.get("messages") or [], params.get("tools")
        )
