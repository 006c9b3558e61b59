"""OpenAI's wire format for the MockProvider: chat completions, responses, embeddings.

Parses request bodies into ``ApiCall``s (validating what the real API would refuse with
a 400) and renders answers, model lists and errors as the ``openai`` SDK expects them,
so it raises its own exception classes (``BadRequestError``, ``RateLimitError``, ...).
Chat completions stream (``stream: true``, see ``_stream``); the responses endpoint and
forced tool calls are answered whole only (a 400 for ``stream: true``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from collections.abc import Sequence
from typing import Any

from ._tokens import count_tokens, messages_tokens, text_of
from ._wire import (
    ApiCall,
    ApiError,
    Endpoint,
    Output,
    Shape,
    optional_int,
    require_list,
    require_str,
)

__all__ = ["error_body", "models_body", "parse", "rate_limit_message", "render"]

_ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 500: "server_error"}
_JSON_FORMATS = ("json_object", "json_schema")


def error_body(error: ApiError, *, kind: str | None = None) -> dict[str, Any]:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    error_type = kind or _ERROR_TYPES.get(error.status, "invalid_request_error")
    return {
        "error": {
            "message": error.message,
            "type": error_type,
            "param": error.param,
            "code": error.code,
        }
    }


def rate_limit_message(model: str, kind: str, limit: float, used: float, asked: float) -> str:
    """The 429 message, worded like OpenAI's."""
    unit = "RPM" if kind == "requests" else "TPM"
    if asked > limit:
        return (
            f"Request too large for {model} on {kind} per min ({unit}): Limit {limit:g}, "
            f"Requested {asked:g}. The input or output tokens must be reduced."
        )
    return (
        f"Rate limit reached for {model} on {kind} per min ({unit}): Limit {limit:g}, "
        f"Used {used:.0f}, Requested {asked:g}."
    )


def _check_stream(body: dict[str, Any], what: str) -> None:
    if body.get("stream"):
        raise ApiError(
            400, f"streaming is not supported by the mock provider for {what}", param="stream"
        )


def _forced_tool(tools: Any, choice: Any) -> str:
    """The name of the tool a ``tool_choice`` forces, or "" when the model may answer."""
    if not isinstance(tools, list) or not tools:
        return ""
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        return name if isinstance(name, str) else ""
    if choice == "required":
        first = tools[0] if isinstance(tools[0], dict) else {}
        function = first.get("function", first)
        name = function.get("name") if isinstance(function, dict) else None
        return name if isinstance(name, str) else "tool"
    return ""


def parse(endpoint: Endpoint, body: dict[str, Any], default_max_tokens: int) -> ApiCall:
    """Validate an OpenAI request body and measure it."""
    model = require_str(body, "model")
    if endpoint == "embeddings":
        return ApiCall(endpoint, model, body, prompt_tokens=_embedding_tokens(body))
    if endpoint == "responses":
        _check_stream(body, "the responses endpoint")
        return _parse_responses(model, body, default_max_tokens)
    messages = require_list(body, "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(
                400,
                f"Invalid 'messages[{index}]': expected an object with a 'role'.",
                param=f"messages[{index}]",
            )
    max_tokens = optional_int(body, "max_completion_tokens") or optional_int(body, "max_tokens")
    n = optional_int(body, "n") or 1
    if n > 128:
        raise ApiError(400, f"Invalid 'n': at most 128, got {n}.", param="n")
    response_format = body.get("response_format")
    tool_name = _forced_tool(body.get("tools"), body.get("tool_choice"))
    shape: Shape = "tool" if tool_name else "text"
    if not tool_name and isinstance(response_format, dict):
        shape = "json" if response_format.get("type") in _JSON_FORMATS else "text"
    if tool_name:
        _check_stream(body, "forced tool calls")
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        # "Only set this when you set stream: true." (the API answers 400 otherwise)
        raise ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    users = [m for m in messages if m.get("role") == "user"]
    return ApiCall(
        endpoint,
        model,
        body,
        prompt_tokens=messages_tokens(messages, body.get("tools"), response_format),
        max_output_tokens=max_tokens or default_max_tokens,
        choices=n,
        prompt_text=text_of(users[-1].get("content")) if users else "",
        shape=shape,
        tool_name=tool_name,
        stream=bool(body.get("stream")),
    )


def _parse_responses(model: str, body: dict[str, Any], default_max_tokens: int) -> ApiCall:
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input")
    instructions = body.get("instructions")
    text_format = body.get("text", {}).get("format") if isinstance(body.get("text"), dict) else None
    is_json = isinstance(text_format, dict) and text_format.get("type") in _JSON_FORMATS
    users = [i for i in items if isinstance(i, dict) and i.get("role") == "user"]
    return ApiCall(
        "responses",
        model,
        body,
        prompt_tokens=messages_tokens(
            items,
            instructions if isinstance(instructions, str) else None,
            body.get("tools"),
            text_format,
        ),
        max_output_tokens=optional_int(body, "max_output_tokens") or default_max_tokens,
        prompt_text=text_of(users[-1].get("content")) if users else "",
        shape="json" if is_json else "text",
    )


def _embedding_tokens(body: dict[str, Any]) -> int:
    inputs = body.get("input")
    if inputs is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(
            400, "Invalid 'input': expected a string or a non-empty array.", param="input"
        )
    if all(isinstance(i, int) for i in inputs):  # one input given as token ids
        return len(inputs)
    total = 0
    for item in inputs:
        if isinstance(item, str) and item:
            total += count_tokens(item)
        elif isinstance(item, list) and item and all(isinstance(i, int) for i in item):
            total += len(item)
        else:
            raise ApiError(
                400, "Invalid 'input': each item must be a non-empty string.", param="input"
            )
    return total


def _vector(item: Any, dimensions: int) -> list[float]:
    """A deterministic unit vector for one input (a hash of it seeds the numbers)."""
    digest = hashlib.sha256(json.dumps(item).encode()).hexdigest()
    rng = random.Random(digest)
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


def usage(call: ApiCall, completion: int) -> dict[str, Any]:
    """The ``usage`` of a chat completion answered with ``completion`` output tokens."""
    return _usage(call, completion)


def _usage(call: ApiCall, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": call.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def render(
    call: ApiCall, outputs: Sequence[Output], ident: str, created: int, dimensions: int
) -> dict[str, Any]:
    """The 200 body for ``call`` answered with ``outputs``."""
    if call.endpoint == "embeddings":
        return _render_embeddings(call, dimensions)
    if call.endpoint == "responses":
        return _render_responses(call, outputs[0], ident, created)
    choices = []
    for index, output in enumerate(outputs):
        message: dict[str, Any] = {"role": "assistant", "content": output.text, "refusal": None}
        finish = "length" if output.truncated else "stop"
        if call.shape == "tool":
            call_id = f"call_{ident[:16]}{index}"
            function = {"name": call.tool_name, "arguments": output.text}
            message.update(
                content=None, tool_calls=[{"id": call_id, "type": "function", "function": function}]
            )
            finish = "length" if output.truncated else "tool_calls"
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    return {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion",
        "created": created,
        "model": call.model,
        "choices": choices,
        "usage": _usage(call, sum(o.tokens for o in outputs)),
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def _render_embeddings(call: ApiCall, dimensions: int) -> dict[str, Any]:
    inputs = call.body["input"]
    if isinstance(inputs, str) or all(isinstance(i, int) for i in inputs):
        inputs = [inputs]
    size = optional_int(call.body, "dimensions") or dimensions
    as_base64 = call.body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(item, size)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    return {"object": "list", "data": data, "model": call.model, "usage": usage}


def _render_responses(call: ApiCall, output: Output, ident: str, created: int) -> dict[str, Any]:
    status = "incomplete" if output.truncated else "completed"
    text_part = {"type": "output_text", "text": output.text, "annotations": [], "logprobs": []}
    body = call.body
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if output.truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": call.model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{ident}",
                "status": status,
                "role": "assistant",
                "content": [text_part],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "metadata": {},
        "usage": {
            "input_tokens": call.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": call.prompt_tokens + output.tokens,
        },
    }


def models_body(models: Sequence[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    data = [{"id": m, "object": "model", "created": created, "owned_by": "mock"} for m in models]
    return {"object": "list", "data": data}
