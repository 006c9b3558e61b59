"""Streamed responses in the presets: chunks to ``on_chunk``, the whole response returned,
billed from the usage the stream reports.

``runner.schedule(model=..., messages=[...], stream=True, on_chunk=print)``: the preset
sends the request with ``stream=True``, hands each chunk (the SDK's chunk or event
object) to ``on_chunk`` as it arrives, and returns the assembled response, the same
object a call without ``stream`` returns (a ``ChatCompletion``, a ``Message``), so the
usage extractors, validators, the store and ``as_completed()`` see no difference.

Usage: OpenAI sends it only when asked, in one last chunk ("If set, an additional chunk
will be streamed before the data: [DONE] message. The usage field on this chunk shows the
token usage statistics for the entire request", stream_options.include_usage in the API
reference), so the preset sets ``stream_options={"include_usage": True}``. Anthropic's
``message_start`` carries the input tokens and each ``message_delta`` the cumulative
output tokens ("The token counts shown in the usage field of the message_delta event are
cumulative", Streaming Messages). The assembling is the SDKs' own
(``ChatCompletionStreamState``, ``accumulate_event``).

A stream that breaks part-way raises ``StreamBrokenError``, which the Runner retries as
a whole; its ``partial_result`` is what arrived, with the usage known so far (Anthropic:
the input tokens and the output tokens counted, at least one a delta; OpenAI, which
reports usage only at the end: the prompt estimate plus a token a content chunk), and
the Runner bills that instead of the call's whole estimate.

The time from sending the request to the first chunk is the attempt's time to first
token (``outcome.time_to_first_token``), reported through the attempt's admission.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

from rate_limited.exceptions import ConfigurationError, StreamBrokenError

__all__ = ["Assembler", "anthropic_assembler", "check_on_chunk", "openai_assembler"]

OnChunk = Callable[[Any], object]


def check_on_chunk(params: Mapping[str, Any]) -> OnChunk | None:
    """The call's ``on_chunk`` (None if not given); a clear error for a wrong one."""
    on_chunk: OnChunk | None = params.get("on_chunk")
    if on_chunk is None:
        return None
    if not callable(on_chunk):
        raise ConfigurationError(f"on_chunk must be a callable taking a chunk, got {on_chunk!r}.")
    if not params.get("stream"):
        raise ConfigurationError("on_chunk= receives the chunks of a stream: pass stream=True too.")
    return on_chunk


class Assembler:
    """Builds a provider's whole response from its stream, and its usage so far."""

    def __init__(self, prompt_estimate: float) -> None:
        self.prompt_estimate = prompt_estimate
        self.chunks = 0
        self.started = time.monotonic()
        #: Seconds from sending the request to the first chunk (None: no chunk yet).
        self.first_token: float | None = None

    def add(self, chunk: Any) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic() - self.started
        self.chunks += 1
        self._add(chunk)

    def _add(self, chunk: Any) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        """The whole response (the stream ended)."""
        raise NotImplementedError

    def partial(self) -> SimpleNamespace:
        """What arrived before the stream broke: ``.partial`` (True) and ``.usage`` (the
        provider's usage fields, as far as known), read like a response."""
        raise NotImplementedError


class _OpenAIChat(Assembler):
    def __init__(self, prompt_estimate: float) -> None:
        super().__init__(prompt_estimate)
        from openai.lib.streaming.chat import ChatCompletionStreamState

        self._state = ChatCompletionStreamState()
        self._content_chunks = 0
        self._usage: Any = None

    def _add(self, chunk: Any) -> None:
        self._state.handle_chunk(chunk)
        if getattr(chunk, "usage", None) is not None:
            self._usage = chunk.usage
        for choice in getattr(chunk, "choices", None) or ():
            delta = choice.delta
            if delta is not None and (delta.content or delta.tool_calls):
                self._content_chunks += 1

    def result(self) -> Any:
        if self._usage is None:
            raise StreamBrokenError(
                "the stream ended without its usage chunk (stream_options.include_usage)",
                partial_result=self.partial(),
            )
        # The SDK's snapshot is the whole ChatCompletion (a subclass). Not its
        # get_final_completion(): that parses for structured outputs, and raises for an
        # answer cut short by max_tokens, which is an answer like any other here.
        completion = self._state.current_completion_snapshot
        if completion.usage is None:
            completion.usage = self._usage
        return completion

    def partial(self) -> SimpleNamespace:
        prompt = int(self.prompt_estimate)
        output = self._content_chunks
        usage = SimpleNamespace(
            prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output
        )
        return SimpleNamespace(partial=True, usage=usage)


class _AnthropicMessage(Assembler):
    def __init__(self, prompt_estimate: float) -> None:
        super().__init__(prompt_estimate)
        from anthropic.lib.streaming._messages import accumulate_event

        self._accumulate = accumulate_event
        self._takes_bufs = "json_bufs" in inspect.signature(accumulate_event).parameters
        self._bufs: dict[int, bytes] = {}
        self._snapshot: Any = None
        self._deltas = 0
        self._stopped = False

    def _add(self, chunk: Any) -> None:
        extra: dict[str, Any] = {"json_bufs": self._bufs} if self._takes_bufs else {}
        self._snapshot = self._accumulate(event=chunk, current_snapshot=self._snapshot, **extra)
        kind = getattr(chunk, "type", None)
        if kind == "content_block_delta":
            self._deltas += 1
        elif kind == "message_stop":
            self._stopped = True

    def result(self) -> Any:
        if self._snapshot is None or not self._stopped:
            raise StreamBrokenError(
                "the stream ended before message_stop", partial_result=self.partial()
            )
        return self._snapshot

    def partial(self) -> SimpleNamespace:
        usage = getattr(self._snapshot, "usage", None)
        reported_input = getattr(usage, "input_tokens", None)
        reported_output = getattr(usage, "output_tokens", None) or 0
        input_tokens = reported_input if reported_input is not None else int(self.prompt_estimate)
        return SimpleNamespace(
            partial=True,
            usage=SimpleNamespace(
                input_tokens=input_tokens,
                output_tokens=max(int(reported_output), self._deltas),
                cache_creation_input_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
            ),
        )


def openai_assembler(prompt_estimate: float) -> Assembler:
    return _OpenAIChat(prompt_estimate)


def anthropic_assembler(prompt_estimate: float) -> Assembler:
    return _AnthropicMessage(prompt_estimate)


def broken(assembler: Assembler, exc: BaseException) -> StreamBrokenError:
    """The error for a stream that failed part-way with ``exc``."""
    error = StreamBrokenError(
        f"the stream broke after {assembler.chunks} chunk(s): {type(exc).__name__}: {exc}",
        partial_result=assembler.partial(),
    )
    error.__cause__ = exc
    return error
