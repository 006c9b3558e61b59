"""Preset for Anthropic's Messages API (the ``anthropic`` SDK): ``messages.create``.

Anthropic limits each model by three per-minute buckets, all refilling continuously, all
billed by the actual usage at the end (``settle="actual"``):

* ``requests_per_minute``: 1 per call;
* ``input_tokens_per_minute``: the prompt (system, messages, tools) estimated while the
  call is in flight, then ``usage.input_tokens`` plus ``cache_creation_input_tokens``
  (cache reads do not count against it);
* ``output_tokens_per_minute``: ``max_tokens`` while in flight (Anthropic reserves it at
  admission), then ``usage.output_tokens``.

That is Anthropic's documented accounting (docs.anthropic.com/en/api/rate-limits): "ITPM
rate limits are estimated at the beginning of each request, and the estimate is adjusted
during the request to reflect the actual number of input tokens used. The final
adjustment counts input_tokens and cache_creation_input_tokens towards ITPM rate limits"
("For all other models, cache_read_input_tokens do not count towards ITPM rate limits",
a few older models excepted), and "OTPM rate limits are estimated based on max_tokens at
the beginning of each request, and the estimate is adjusted at the end of the request to
reflect the actual number of output tokens used." Also: "Rate limits are applied
separately for each model", so the limits are per model here too.

Limits left as None are read from the ``anthropic-ratelimit-*`` headers, per model (their
token counts are "rounded to the nearest thousand": see ``rate_limited.apis._headers``). Claude's
tokenizer is not public, so prompts are estimated with the conservative counter unless
``tokenizer=`` says otherwise; the calibration learned from ``usage`` then shrinks
(or grows) later estimates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from rate_limited._price import Price
from rate_limited.apis._headers import Family, reported
from rate_limited.apis._preset import AsyncPreset, Preset, field, twin_of
from rate_limited.apis._prompts import HIGH_DETAIL_IMAGE_TOKENS, PromptEstimator
from rate_limited.apis._stream import Assembler, anthropic_assembler
from rate_limited.apis._tokens import Tokenizer
from rate_limited.resources import Settle

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = ["AsyncMessages", "Messages"]


def _count(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return 0.0


class Messages(Preset):
    """``client.messages.create`` with RPM, input TPM and output TPM limits.

    ``claude = Messages(anthropic.Anthropic(), requests_per_minute=50,
    input_tokens_per_minute=40_000, output_tokens_per_minute=8_000)``;
    ``runner = claude.runner()``; ``runner.schedule(model=..., max_tokens=...,
    messages=[...])``. Returns what ``create`` returns (a ``Message``). For an
    ``AsyncAnthropic`` client, ``Messages(client)`` is an ``AsyncMessages``.
    """

    family: ClassVar[Family] = "anthropic"
    limit_kinds = (
        ("requests_per_minute", "requests"),
        ("input_tokens_per_minute", "input_tokens"),
        ("output_tokens_per_minute", "output_tokens"),
    )
    endpoint = ("messages",)
    streams = True

    def _assembler(self, prompt_estimate: float) -> Assembler:
        return anthropic_assembler(prompt_estimate)

    auto_tokenizer: ClassVar[Literal["auto", "conservative"]] = "conservative"
    settle_rules: ClassVar[Mapping[str, Settle]] = {
        "input_tokens": "actual",
        "output_tokens": "actual",
    }
    sdk = ("anthropic", "Anthropic", "AsyncAnthropic")

    def __init__(
        self,
        client: Any = None,
        *,
        requests_per_minute: float | None = None,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        model_limits: Mapping[str, Mapping[str, float | None]] | None = None,
        tokenizer: Tokenizer = "auto",
        image_tokens: int | None = None,
        media_tokens: int = HIGH_DETAIL_IMAGE_TOKENS,
        client_max_retries: int | None = 0,
        prices: Mapping[str, Price] | None = None,
        ledger: str | None = None,
    ) -> None:
        """Wrap ``client`` (default: ``anthropic.Anthropic()``, or ``AsyncAnthropic()``
        for ``AsyncMessages``) with each model's limits (None: read from the headers);
        ``model_limits={"claude-opus-4-1": {"output_tokens_per_minute": 8_000}}`` gives
        some models limits of their own.

        ``tokenizer``: ``"auto"`` (the conservative counter), ``"conservative"`` or a
        callable counting the tokens of a text. ``image_tokens``, ``media_tokens``: tokens
        per image, per document part. ``client_max_retries``: the SDK's own retries
        (default 0, so the Runner sees every attempt; None leaves the client as it is).
        ``prices``: ``{"my-model": Price(...)}`` before genai-prices' table (for
        ``Outcome.cost`` and a ``Budget``).
        ``ledger``: the ``ledger=`` of the Runners ``runner()`` makes (a ``redis://`` URL
        shares the limits across processes and machines).
        """
        super().__init__(
            client,
            {
                "requests": requests_per_minute,
                "input_tokens": input_tokens_per_minute,
                "output_tokens": output_tokens_per_minute,
            },
            model_limits=model_limits,
            tokenizer=tokenizer,
            image_tokens=image_tokens,
            media_tokens=media_tokens,
            client_max_retries=client_max_retries,
            prices=prices,
            ledger=ledger,
        )

    def _usage_of(
        self, kind: str
    ) -> tuple[Callable[[Call, Any], float] | None, Callable[[Call], float] | None]:
        if kind == "input_tokens":
            return self._actual_input, self._estimate_input
        if kind == "output_tokens":
            return self._actual_output, self._estimate_output
        return None, None

    def _prompt(self, estimator: PromptEstimator, params: Mapping[str, Any]) -> int:
        return estimator.anthropic(params)

    def _reserved_output(self, params: Mapping[str, Any]) -> float:
        return _count(params.get("max_tokens"))

    def _may_write_cache(self, params: Mapping[str, Any]) -> bool:
        # Anthropic writes the prompt cache (at a rate above the input's) only where the
        # request marks a breakpoint with cache_control.
        return "cache_control" in repr(params)

    def _estimate_input(self, call: Call) -> float:
        demand = float(self.prompt_tokens(self._params(call)))
        self._note_demand("input_tokens_per_minute", call, demand)
        return demand

    def _estimate_output(self, call: Call) -> float:
        demand = self._reserved_output(self._params(call))
        self._note_demand("output_tokens_per_minute", call, demand)
        return demand

    def _actual_input(self, call: Call, result: Any) -> float:
        billed = reported(result, "input_tokens")
        if not call.args and not field(result, "partial"):
            self.calibration.observe(self.raw_prompt_tokens(call.kwargs), billed)
        return billed + _count(field(result, "usage", "cache_creation_input_tokens"))

    def _actual_output(self, call: Call, result: Any) -> float:
        return reported(result, "output_tokens")


@twin_of(Messages)
class AsyncMessages(AsyncPreset, Messages):
    """``Messages`` for ``anthropic.AsyncAnthropic``: calling it returns a coroutine."""
