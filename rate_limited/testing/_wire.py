"""What the MockProvider's wire formats share: a parsed call, its outputs, client errors.

Each provider module (``_openai_wire``, ``_anthropic_wire``) turns a JSON body into an
``ApiCall`` — what admission needs (prompt tokens, reserved output) and what generation
needs (how many answers, in which shape, echoing what) — and renders ``Output``s and
``ApiError``s back in its own format. The server in between does not know either format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

__all__ = [
    "ApiCall",
    "ApiError",
    "Endpoint",
    "Output",
    "Shape",
    "body_hash",
    "json_object",
    "optional_int",
    "require_list",
    "require_str",
    "rfc3339",
]

T = TypeVar("T")

Endpoint = Literal["chat.completions", "embeddings", "responses", "messages"]
#: How a reply is shaped: plain text, a JSON object (``{"text": ...}``), or a tool call.
Shape = Literal["text", "json", "tool"]


class ApiError(Exception):
    """A client error, answered in the provider's error format with ``status``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass
class ApiCall:
    """One parsed API request."""

    endpoint: Endpoint
    model: str
    body: dict[str, Any]
    #: Prompt tokens by the mock's tokenizer (input tokens, for Anthropic).
    prompt_tokens: int
    #: Most output tokens per answer: ``max_tokens`` or the server's default (0: none).
    max_output_tokens: int = 0
    #: Answers asked for (OpenAI's ``n``).
    choices: int = 1
    #: Text of the last user message, for replies that echo or hash it.
    prompt_text: str = ""
    shape: Shape = "text"
    #: The tool a forced tool call names.
    tool_name: str = ""
    #: ``stream: true``: answered as server-sent events (``_stream``).
    stream: bool = False

    @property
    def reserved_output_tokens(self) -> int:
        """Output tokens charged at admission: ``max_output_tokens * choices``."""
        return self.max_output_tokens * self.choices


@dataclass
class Output:
    """One generated answer: its text (JSON text for json and tool shapes)."""

    text: str
    tokens: int
    #: Whether it stopped at the output limit (finish reason "length" / "max_tokens").
    truncated: bool


def body_hash(body: Any) -> str:
    """A stable hash of a JSON body: sha256 of its canonical JSON, 32 hex characters."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or the 400 the providers answer."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request.")
    return body


def require_str(body: dict[str, Any], key: str) -> str:
    """``body[key]`` as a non-empty string, or a 400 naming the parameter."""
    return _required(body, key, str, "a non-empty string")


def require_list(body: dict[str, Any], key: str) -> list[Any]:
    """``body[key]`` as a non-empty list, or a 400 naming the parameter."""
    return _required(body, key, list, "a non-empty array")


def _required(body: dict[str, Any], key: str, kind: type[T], expected: str) -> T:
    value = body.get(key)
    if value is None:
        raise ApiError(400, f"Missing required parameter: '{key}'.", param=key)
    if not isinstance(value, kind) or not value:
        raise ApiError(400, f"Invalid '{key}': expected {expected}.", param=key)
    return value


def optional_int(body: dict[str, Any], key: str, *, minimum: int = 1) -> int | None:
    """``body[key]`` as an int of at least ``minimum``, None if absent, else a 400."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(
            400, f"Invalid '{key}': expected an integer >= {minimum}, got {value!r}.", param=key
        )
    return value


def rfc3339(epoch: float | None) -> str | None:
    """Epoch seconds as the RFC 3339 UTC timestamp Anthropic's API shows (None stays None)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")
