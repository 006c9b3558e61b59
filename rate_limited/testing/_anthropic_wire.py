"""Anthropic's wire format for the MockProvider: ``POST /v1/messages`` and its errors.

Parses Messages API bodies into ``ApiCall``s (``max_tokens`` is required, as it is at
Anthropic, and is what the output-token bucket reserves at admission) and renders
answers, model lists and errors as the ``anthropic`` SDK expects them, so it raises its
own exception classes (``BadRequestError``, ``RateLimitError``, ``InternalServerError``...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._tokens import content_tokens, messages_tokens, text_of
from ._wire import ApiCall, ApiError, Output, optional_int, require_list, require_str

__all__ = ["error_body", "models_body", "parse", "rate_limit_message", "render"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(error: ApiError, *, request_id: str = "") -> dict[str, Any]:
    """An Anthropic error body: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(error.status, "api_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": error.message}}
    if request_id:
        body["request_id"] = request_id
    return body


def rate_limit_message(model: str, kind: str, limit: float, used: float, asked: float) -> str:
    """The 429 message, worded like Anthropic's."""
    what = kind.replace("_", " ")
    if asked > limit:
        return (
            f"This request would exceed the rate limit for {model} of {limit:g} {what} per "
            f"minute on its own (it asks {asked:g}); reduce the prompt or max_tokens."
        )
    return (
        f"This request would exceed the rate limit for your organization of {limit:g} {what} "
        f"per minute for {model} ({used:.0f} in use, {asked:g} asked). Please retry later."
    )


def _forced_tool(tools: Any, choice: Any) -> str:
    if not isinstance(tools, list) or not tools or not isinstance(choice, dict):
        return ""
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if choice.get("type") == "any":
        first = tools[0] if isinstance(tools[0], dict) else {}
        return str(first.get("name", "tool"))
    return ""


def parse(body: dict[str, Any]) -> ApiCall:
    """Validate a Messages API body and measure it."""
    model = require_str(body, "model")
    max_tokens = optional_int(body, "max_tokens")
    if max_tokens is None:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens")
    messages = require_list(body, "messages")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise ApiError(400, "system: Input should be a valid string or list of text blocks")
    tool_name = _forced_tool(body.get("tools"), body.get("tool_choice"))
    users = [m for m in messages if m["role"] == "user"]
    return ApiCall(
        "messages",
        model,
        body,
        prompt_tokens=content_tokens(system) + messages_tokens(messages, body.get("tools")),
        max_output_tokens=max_tokens,
        prompt_text=text_of(users[-1].get("content")) if users else "",
        shape="tool" if tool_name else "text",
        tool_name=tool_name,
        stream=bool(body.get("stream")),
    )


def render(call: ApiCall, outputs: Sequence[Output], ident: str) -> dict[str, Any]:
    """The 200 body for ``call`` answered with ``outputs[0]``."""
    output = outputs[0]
    block: dict[str, Any] = {"type": "text", "text": output.text}
    stop = "max_tokens" if output.truncated else "end_turn"
    if call.shape == "tool":
        try:
            arguments = json.loads(output.text)
        except ValueError:  # cut short by max_tokens: no valid tool call
            arguments = None
        if isinstance(arguments, dict):
            block = {
                "type": "tool_use",
                "id": f"toolu_{ident[:24]}",
                "name": call.tool_name,
                "input": arguments,
            }
            stop = "max_tokens" if output.truncated else "tool_use"
    return {
        "id": f"msg_{ident}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [block],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": call.prompt_tokens,
            "output_tokens": output.tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def models_body(models: Sequence[str]) -> dict[str, Any]:
    """``GET /v1/models`` in Anthropic's paginated shape."""
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in models
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": models[0] if models else None,
        "last_id": models[-1] if models else None,
    }
