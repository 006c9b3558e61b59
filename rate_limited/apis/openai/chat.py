"""rate_limited 0.4's OpenAI chat helper, at its 0.4 import path, for the ``openai>=1`` SDK.

``openai_chat_resources(requests_per_minute, tokens_per_minute, model_max_len)`` returns
the two Resources to pass to ``Runner`` together with any function whose keyword
arguments are those of ``chat.completions.create`` (``messages``, ``max_tokens``...) and
whose result has a ``usage.total_tokens``: a dict (pre-1.0 SDK, ``.model_dump()``) or an
SDK object. What changed since 0.4:

* both limits refill continuously (``refill="bucket"``), as OpenAI counts them, and apply
  to each model separately (the calls' ``model`` argument), as OpenAI's do;
* tokens are billed by OpenAI's documented rule (``settle="reserved"``): the prompt plus
  ``max_tokens * n`` when the call is admitted, never less, the ``usage`` above that on
  top (see ``rate_limited.apis.openai._presets``); ``settle="actual"`` for a compatible
  server that hands the unused output back;
* no fixed 5% margin on the token limit: the estimate errs high instead and the actual
  ``usage`` replaces it as soon as the call returns;
* the prompt estimate counts every message part (text, images, tool calls), ``tools``,
  ``functions`` and ``response_format`` with the conservative counter (CJK, JSON and URLs
  are no longer under-counted as 2 tokens per space-separated word);
* the output reserved is ``max_completion_tokens`` or ``max_tokens`` (else
  ``model_max_len``) times ``n``, plus the prompt once (0.4 multiplied the prompt by n).

For new code, ``rate_limited.apis.openai.ChatCompletions`` does all this and also reads
the rate-limit headers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import partial
from typing import TYPE_CHECKING

from rate_limited.apis._preset import field
from rate_limited.apis._prompts import PromptEstimator
from rate_limited.apis._tokens import conservative_tokens
from rate_limited.apis.common import PROVIDER_REFILL_DELAY, get_requests_per_minute
from rate_limited.exceptions import ConfigurationError
from rate_limited.resources import Resource, Settle

if TYPE_CHECKING:
    from rate_limited.calls import Call, Result

__all__ = [
    "estimate_input_tokens",
    "estimate_tokens_used",
    "get_tokens_per_minute",
    "get_used_tokens",
    "model_argument",
    "openai_chat_resources",
]

_ESTIMATOR = PromptEstimator(conservative_tokens)


def openai_chat_resources(
    requests_per_minute: int | float,
    tokens_per_minute: int | float,
    model_max_len: int,
    *,
    settle: Settle = "reserved",
    model_limits: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Resource]:
    """``[requests_per_minute, tokens_per_minute]`` Resources for chat completions, per
    model.

    ``model_max_len``: output reserved for a call that sets no ``max_tokens``.
    ``settle``: ``"reserved"`` (OpenAI's rule) or ``"actual"`` (a server that refunds).
    ``model_limits``: limits of some models, e.g. ``{"gpt-4o": {"tokens_per_minute":
    30_000}}`` (the others have the limits given).
    """
    quotas: dict[str, dict[Hashable, float]] = {
        "requests_per_minute": {},
        "tokens_per_minute": {},
    }
    for model, limits in (model_limits or {}).items():
        for name, value in limits.items():
            if name not in quotas:
                raise ConfigurationError(
                    f"model_limits[{model!r}] has an unknown limit {name!r}; the limits are "
                    "requests_per_minute and tokens_per_minute."
                )
            quotas[name][model] = value
    return [
        get_requests_per_minute(
            requests_per_minute,
            partition=model_argument,
            partition_quotas=quotas["requests_per_minute"] or None,
        ),
        get_tokens_per_minute(
            tokens_per_minute,
            model_max_len,
            settle=settle,
            partition_quotas=quotas["tokens_per_minute"] or None,
        ),
    ]


def get_tokens_per_minute(
    quota: int | float,
    model_max_len: int,
    *,
    settle: Settle = "reserved",
    partition_quotas: Mapping[Hashable, float] | None = None,
) -> Resource:
    """A ``"tokens_per_minute"`` Resource (continuous refill, per model) for chat
    completions, billed by OpenAI's rule unless ``settle`` says otherwise."""
    return Resource(
        name="tokens_per_minute",
        quota=quota,
        time_window_seconds=60,
        max_results_usage_estimator=partial(estimate_tokens_used, model_max_len=model_max_len),
        results_usage_extractor=get_used_tokens,
        refill="bucket",
        refill_delay=PROVIDER_REFILL_DELAY,
        settle=settle,
        partition=model_argument,
        partition_quotas=partition_quotas,
    )


def model_argument(call: Call) -> Hashable:
    """The ``model`` a call is for: each model has limits of its own."""
    model = call.get_argument("model")
    return model if isinstance(model, Hashable) else repr(model)


def get_used_tokens(call: Call, results: Result) -> int:
    """``usage.total_tokens`` of a response: a dict or an SDK object."""
    total_tokens = field(results, "usage", "total_tokens")
    if total_tokens is None:
        raise ValueError("Could not find total_tokens in results")
    return int(total_tokens)


def estimate_tokens_used(call: Call, model_max_len: int) -> int:
    """Upper bound of the tokens a call uses: its prompt plus the output reserved."""
    maximum = call.get_argument("max_completion_tokens") or call.get_argument("max_tokens")
    choices = call.get_argument("n") or 1
    output = maximum if maximum is not None else model_max_len
    return estimate_input_tokens(call) + int(output) * int(choices)


def estimate_input_tokens(call: Call) -> int:
    """Upper bound of the prompt tokens of a call (messages, tools, functions, format)."""
    names = ("messages", "tools", "functions", "response_format")
    params = {name: call.get_argument(name) for name in names}
    return _ESTIMATOR.chat(params)
