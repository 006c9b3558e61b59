"""Presets for the ``openai>=1`` SDK: chat completions, responses and embeddings.

Each preset wraps one ``create`` method of a client (``openai.OpenAI`` or
``openai.AsyncOpenAI``; Azure and other compatible clients work too) with OpenAI's two
per-minute limits, per model, both refilling continuously:

* ``requests_per_minute``: 1 per call;
* ``tokens_per_minute``: the prompt estimate plus the output the provider reserves
  (``max_completion_tokens`` or ``max_tokens``, times ``n``; the model's maximum output
  when neither is given), billed when the call is admitted and never less
  (``settle="reserved"``); a response whose ``usage.total_tokens`` is larger is billed the
  difference on top.

That is OpenAI's documented accounting. Its rate-limit guide: "Your rate limit is
calculated as the maximum of max_tokens and the estimated number of tokens based on the
character count of your request. Try to set the max_tokens value as close to your expected
response size as possible." (platform.openai.com/docs/guides/rate-limits, "Reduce the
max_tokens to match the size of your completions"); its cookbook's parallel processor
counts a request as "prompt + n * max_tokens" (openai-cookbook,
examples/api_request_parallel_processor.py). Nothing says the unused part comes back, and
"Note that unsuccessful requests contribute to your per-minute limit". A compatible server
that does hand it back is discovered from its headers (see ``rate_limited.ledgers.memory``).

Either limit left as None is read from the ``x-ratelimit-*`` headers, per model (see
``Preset``); ``model_limits`` gives some models limits of their own.
``ChatCompletions(client)`` returns an ``AsyncChatCompletions`` for an async client, so
the same line makes a sync or an async Runner function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from rate_limited._price import Price
from rate_limited.apis._headers import Family, reported
from rate_limited.apis._preset import AsyncPreset, Preset, field, twin_of
from rate_limited.apis._prompts import HIGH_DETAIL_IMAGE_TOKENS, PromptEstimator
from rate_limited.apis._stream import Assembler, openai_assembler
from rate_limited.apis._tokens import Tokenizer
from rate_limited.resources import Settle

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = [
    "AsyncChatCompletions",
    "AsyncEmbeddings",
    "AsyncResponses",
    "ChatCompletions",
    "Embeddings",
    "Responses",
    "default_max_output_tokens",
]

#: Most output tokens of a model family, by model-name prefix (longest prefix first):
#: what a call without ``max_tokens`` may generate, so what is reserved for it.
MODEL_MAX_OUTPUT_TOKENS: tuple[tuple[str, int], ...] = (
    ("gpt-5", 128_000),
    ("gpt-4.1", 32_768),
    ("gpt-4o", 16_384),
    ("chatgpt-4o", 16_384),
    ("gpt-4-turbo", 4_096),
    ("gpt-4", 8_192),
    ("gpt-3.5", 4_096),
    ("o1", 100_000),
    ("o3", 100_000),
    ("o4", 100_000),
)
#: Reserved for a model not in the table.
FALLBACK_MAX_OUTPUT_TOKENS = 4_096


def default_max_output_tokens(model: object) -> int:
    """The output reserved for a call to ``model`` that sets no maximum."""
    if isinstance(model, str):
        for prefix, tokens in MODEL_MAX_OUTPUT_TOKENS:
            if model.startswith(prefix):
                return tokens
    return FALLBACK_MAX_OUTPUT_TOKENS


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


class _OpenAIPreset(Preset):
    family: ClassVar[Family] = "openai"
    limit_kinds = (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens"))
    settle_rules: ClassVar[Mapping[str, Settle]] = {"tokens": "reserved"}
    sdk = ("openai", "OpenAI", "AsyncOpenAI")
    #: The ``usage`` field with the prompt tokens (for calibration).
    prompt_usage_field: ClassVar[str] = "prompt_tokens"

    def __init__(
        self,
        client: Any = None,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        model_limits: Mapping[str, Mapping[str, float | None]] | None = None,
        tokenizer: Tokenizer = "auto",
        default_max_tokens: int | None = None,
        image_tokens: int | None = None,
        media_tokens: int = HIGH_DETAIL_IMAGE_TOKENS,
        client_max_retries: int | None = 0,
        prices: Mapping[str, Price] | None = None,
        ledger: str | None = None,
    ) -> None:
        """Wrap ``client`` (default: ``openai.OpenAI()``, or ``AsyncOpenAI()`` for the
        async classes) with its limits.

        Args:
            client: an ``openai`` client; the preset uses a copy of it with
                ``max_retries=client_max_retries``.
            requests_per_minute: each model's RPM limit; None reads it from the headers.
            tokens_per_minute: each model's TPM limit; None reads it from the headers.
            model_limits: limits of some models, e.g. ``{"gpt-4o": {"requests_per_minute":
                500, "tokens_per_minute": 30_000}}``; a limit a model does not list (or
                lists as None) is the preset's.
            tokenizer: ``"auto"`` (tiktoken when its encoding is available offline, else
                the conservative estimate), ``"tiktoken"``, ``"conservative"``, or a
                callable counting the tokens of a text.
            default_max_tokens: output reserved for a call that sets no maximum (default:
                the model's maximum output, see ``MODEL_MAX_OUTPUT_TOKENS``).
            image_tokens: tokens per image part (default: 85 for ``detail="low"``, else
                the gpt-4o family's maximum, 1445).
            media_tokens: tokens per audio or file part.
            client_max_retries: the SDK's own retries (default 0: the Runner retries, and
                its ledger sees every attempt); None leaves the client as it is.
            prices: ``{"my-model": Price(input_per_mtok=..., output_per_mtok=...)}``,
                before genai-prices' table: what ``Outcome.cost`` and a ``Budget`` use.
            ledger: the ``ledger=`` of the Runners ``runner()`` makes: a
                ``"redis://host:6379/0?name=team-key"`` URL shares the limits with every
                process and machine on the same key (None: each Runner its own).
        """
        super().__init__(
            client,
            {"requests": requests_per_minute, "tokens": tokens_per_minute},
            model_limits=model_limits,
            tokenizer=tokenizer,
            image_tokens=image_tokens,
            media_tokens=media_tokens,
            client_max_retries=client_max_retries,
            prices=prices,
            ledger=ledger,
        )
        self._default_max_tokens = _positive_int(default_max_tokens)

    def _usage_of(
        self, kind: str
    ) -> tuple[Callable[[Call, Any], float] | None, Callable[[Call], float] | None]:
        if kind == "tokens":
            return self._actual_tokens, self._estimate_tokens
        return None, None

    def _max_output(self, params: Mapping[str, Any]) -> int:
        return self._default_max_tokens or default_max_output_tokens(params.get("model"))

    def _estimate_tokens(self, call: Call) -> float:
        params = self._params(call)
        demand = float(self.prompt_tokens(params) + self._reserved_output(params))
        self._note_demand("tokens_per_minute", call, demand)
        return demand

    def _actual_tokens(self, call: Call, result: Any) -> float:
        total = reported(result, "total_tokens")
        prompt = field(result, "usage", self.prompt_usage_field)
        if isinstance(prompt, int) and not call.args and not field(result, "partial"):
            self.calibration.observe(self.raw_prompt_tokens(call.kwargs), prompt)
        return total


class ChatCompletions(_OpenAIPreset):
    """``client.chat.completions.create`` with RPM and TPM limits.

    ``chat = ChatCompletions(openai.OpenAI(), requests_per_minute=500,
    tokens_per_minute=200_000)``; ``runner = chat.runner()`` (or ``Runner(chat,
    chat.resources)``); ``runner.schedule(model=..., messages=[...], max_tokens=...)``.
    Returns what ``create`` returns (a ``ChatCompletion``). For an ``AsyncOpenAI``
    client, ``ChatCompletions(client)`` is an ``AsyncChatCompletions``.
    """

    endpoint = ("chat", "completions")
    streams = True

    def _assembler(self, prompt_estimate: float) -> Assembler:
        return openai_assembler(prompt_estimate)

    def _prompt(self, estimator: PromptEstimator, params: Mapping[str, Any]) -> int:
        return estimator.chat(params)

    def _stream_request(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """OpenAI reports a stream's usage only if asked: ``include_usage`` is set."""
        request = super()._stream_request(params)
        options = request.get("stream_options")
        request["stream_options"] = {**(options or {}), "include_usage": True}
        return request

    def _reserved_output(self, params: Mapping[str, Any]) -> float:
        maximum = _positive_int(params.get("max_completion_tokens")) or _positive_int(
            params.get("max_tokens")
        )
        choices = _positive_int(params.get("n")) or 1
        return float((maximum or self._max_output(params)) * choices)


@twin_of(ChatCompletions)
class AsyncChatCompletions(AsyncPreset, ChatCompletions):
    """``ChatCompletions`` for ``openai.AsyncOpenAI``: calling it returns a coroutine."""


class Responses(_OpenAIPreset):
    """``client.responses.create`` with RPM and TPM limits (``max_output_tokens`` is the
    output reserved). For an ``AsyncOpenAI`` client, ``Responses(client)`` is an
    ``AsyncResponses``."""

    endpoint = ("responses",)
    prompt_usage_field = "input_tokens"

    def _prompt(self, estimator: PromptEstimator, params: Mapping[str, Any]) -> int:
        return estimator.responses(params)

    def _reserved_output(self, params: Mapping[str, Any]) -> float:
        maximum = _positive_int(params.get("max_output_tokens"))
        return float(maximum or self._max_output(params))


@twin_of(Responses)
class AsyncResponses(AsyncPreset, Responses):
    """``Responses`` for ``openai.AsyncOpenAI``: calling it returns a coroutine."""


class Embeddings(_OpenAIPreset):
    """``client.embeddings.create`` with RPM and TPM limits (the input's tokens; no
    output). For an ``AsyncOpenAI`` client, ``Embeddings(client)`` is an
    ``AsyncEmbeddings``."""

    endpoint = ("embeddings",)

    def _prompt(self, estimator: PromptEstimator, params: Mapping[str, Any]) -> int:
        return estimator.embeddings(params)

    def _reserved_output(self, params: Mapping[str, Any]) -> float:
        return 0.0


@twin_of(Embeddings)
class AsyncEmbeddings(AsyncPreset, Embeddings):
    """``Embeddings`` for ``openai.AsyncOpenAI``: calling it returns a coroutine."""
