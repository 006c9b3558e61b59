"""Server-sent events for the MockProvider's ``stream: true`` answers, as each provider
documents them.

OpenAI (platform.openai.com/docs/api-reference/chat/create, ``stream`` and
``stream_options``): "If set to true, the model response data will be streamed to the
client as it is generated using server-sent events"; the stream is data-only and ends
with ``data: [DONE]``. ``stream_options.include_usage``: "If set, an additional chunk
will be streamed before the data: [DONE] message. The usage field on this chunk shows
the token usage statistics for the entire request, and the choices field will always be
an empty array. All other chunks will also include a usage field, but with a null value.
NOTE: If the stream is interrupted, you may not receive the final usage chunk which
contains the total token usage for the request." Without it, no chunk carries usage.

Anthropic (docs.anthropic.com/en/docs/build-with-claude/streaming, "Event types"):
"1. message_start: contains a Message object with empty content. 2. A series of content
blocks, each of which have a content_block_start, one or more content_block_delta
events, and a content_block_stop event. 3. One or more message_delta events, indicating
top-level changes to the final Message object. 4. A final message_stop event." and "The
token counts shown in the usage field of the message_delta event are cumulative." Ping
events may come anywhere ("Event streams may also include any number of ping events").

The answer's text is cut into pieces of about one token each; what is billed is the
``Output``'s token count, as for a whole answer. A ``stream_break`` fault sends the first
half of the events, then closes the connection (the provider billed the request).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._wire import ApiCall, Output

__all__ = ["anthropic_events", "openai_events", "pieces"]


def pieces(text: str, tokens: int) -> list[str]:
    """``text`` in about ``tokens`` consecutive pieces (at least one; none empty)."""
    if not text:
        return [""]
    count = max(1, min(tokens, len(text)))
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}\n\n".encode()


def openai_events(
    call: ApiCall, outputs: Sequence[Output], ident: str, created: int, usage: dict[str, Any]
) -> list[bytes]:
    """A chat completion's chunks, then the usage chunk if asked for, then ``[DONE]``."""
    options = call.body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    base = {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": call.model,
        "system_fingerprint": "fp_mock",
        "service_tier": "default",
    }

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        body = {**base, "choices": choices}
        if include_usage:
            body["usage"] = None
        return _sse(body)

    events = []
    for index, output in enumerate(outputs):
        role: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        events.append(
            chunk([{"index": index, "delta": role, "logprobs": None, "finish_reason": None}])
        )
        for piece in pieces(output.text, output.tokens):
            delta = {"content": piece}
            events.append(
                chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])
            )
        finish = "length" if output.truncated else "stop"
        events.append(
            chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}])
        )
    if include_usage:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(_sse("[DONE]"))
    return events


def anthropic_events(message: dict[str, Any], output: Output) -> list[bytes]:
    """A message's events, from ``message_start`` to ``message_stop``."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": 1}  # as the documented example shows
    start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    events = [_sse({"type": "message_start", "message": start}, "message_start")]
    block = message["content"][0]
    if block["type"] == "text":
        events.append(
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
        )
        events.append(_sse({"type": "ping"}, "ping"))
        for piece in pieces(block["text"], output.tokens):
            delta = {"type": "text_delta", "text": piece}
            events.append(
                _sse(
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                    "content_block_delta",
                )
            )
    else:  # a tool call: its input as partial JSON
        opening = {**block, "input": {}}
        events.append(
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": opening},
                "content_block_start",
            )
        )
        arguments = json.dumps(block["input"])
        for piece in pieces(arguments, output.tokens):
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(
                _sse(
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                    "content_block_delta",
                )
            )
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    stop: dict[str, Any] = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events.append(
        _sse(
            {
                "type": "message_delta",
                "delta": stop,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            "message_delta",
        )
    )
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return events
