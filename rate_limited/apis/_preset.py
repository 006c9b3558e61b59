"""``Preset``: what the API presets share — the SDK call, the quotas and the estimates.

A preset is the Runner's function and its quotas in one object: ``Runner(chat,
chat.resources)`` or ``chat.runner()``. Each call goes through the SDK's
``with_raw_response``, so the preset sees the rate-limit headers (``LimitTracker`` turns
them into ledger updates: shared keys, discovered limits), then returns the parsed
response as the SDK would. Each scheduled call's tokens are estimated once, with the
calibration learned so far; its ``usage`` then replaces the estimate and calibrates.

The SDK clients retry 429s and 5xx by themselves (``max_retries=2``), out of the
ledger's sight: a preset works on a copy of the client with ``max_retries=0``
(``client_max_retries=``) so the Runner sees, bills, cools down and retries every
attempt itself. A 429 that says retrying cannot help (``x-should-retry: false``: the
request is larger than a whole bucket) becomes a ``RequestTooLargeError``, not retried.

Every limit is per model, as at the providers: the resources are partitioned by the
``model`` argument, ``model_limits={"gpt-4o": {"tokens_per_minute": ...}}`` overrides
the preset's limits for one model, and limits left as None are discovered per model.
Each limit is billed by the rule its provider documents (``settle_rules``); a provider
whose headers show otherwise is discovered by the ledger (``rate_limited.ledgers.memory``).

``stream=True`` (chat completions, Anthropic messages): the chunks go to the call's
``on_chunk=`` and the call returns the assembled response, billed from the usage the
stream reports (``rate_limited.apis._stream``).

This base does no I/O of its own; the endpoint classes (``rate_limited.apis.openai``,
``rate_limited.apis.anthropic``) say how to estimate, what to call and what usage to read.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, overload

from rate_limited._feedback import LedgerControl
from rate_limited._price import Price
from rate_limited.apis._headers import Family, field
from rate_limited.apis._limits import MINUTE, UNKNOWN_QUOTA, LimitTracker
from rate_limited.apis._pricing import Priced
from rate_limited.apis._prompts import PromptEstimator
from rate_limited.apis._sending import Sender, is_async_client, request_model
from rate_limited.apis._stream import check_on_chunk
from rate_limited.apis._tokens import Calibration, TextCounter, Tokenizer, resolve_counter
from rate_limited.apis.common import PROVIDER_REFILL_DELAY
from rate_limited.cost import PriceTable
from rate_limited.exceptions import ArgumentTypeError, ConfigurationError
from rate_limited.resources import Resource, Settle

if TYPE_CHECKING:
    from rate_limited.batch import BatchRunner
    from rate_limited.calls import Call
    from rate_limited.runner import Runner

__all__ = [
    "MINUTE",
    "UNKNOWN_QUOTA",
    "AsyncPreset",
    "Preset",
    "field",
    "is_async_client",
    "model_of",
    "twin_of",
]

P = TypeVar("P", bound="Preset")
A = TypeVar("A", bound="AsyncPreset")

logger = logging.getLogger("rate_limited")


def _one(call: Call) -> float:
    return 1.0


def model_of(call: Call) -> Hashable:
    """A call's partition key for the presets' resources: its ``model`` argument."""
    return request_model(call.kwargs)


class Preset(Sender, Priced):
    """Base of the API presets; the endpoint classes fill in the ``_``-prefixed hooks."""

    #: Which provider's headers to read.
    family: ClassVar[Family]
    #: ``(resource name, header kind)`` of each limit; the first one counts requests.
    limit_kinds: ClassVar[tuple[tuple[str, str], ...]]
    #: The SDK resource the preset calls, e.g. ``("chat", "completions")``.
    endpoint: ClassVar[tuple[str, ...]]
    #: By header kind: what the provider documents it bills (``Resource(settle=...)``).
    settle_rules: ClassVar[Mapping[str, Settle]] = {}
    #: What ``tokenizer="auto"`` means for this provider.
    auto_tokenizer: ClassVar[Literal["auto", "conservative"]] = "auto"
    #: The SDK's module and its sync and async client classes: the client of a preset
    #: made without one (``_default_client``); the module is also the extra to install.
    sdk: ClassVar[tuple[str, str, str] | None] = None
    #: Whether calling the preset returns a coroutine (``AsyncPreset``).
    is_async: ClassVar[bool] = False
    #: The class this very class makes when given an async client (``twin_of``); read
    #: from the class's own ``__dict__``, so a user's subclass keeps its own class.
    _async_twin: ClassVar[type[Preset]]

    def __new__(cls: type[P], client: Any = None, **options: Any) -> P:
        """A preset class given an async client makes its async twin (``twin_of``)."""
        twin = cls.__dict__.get("_async_twin")
        if twin is not None and client is not None and is_async_client(client, cls.endpoint):
            return cast(P, object.__new__(twin))
        return object.__new__(cls)

    def __init__(
        self,
        client: Any,
        limits: Mapping[str, float | None],
        *,
        model_limits: Mapping[str, Mapping[str, float | None]] | None,
        tokenizer: Tokenizer,
        image_tokens: int | None,
        media_tokens: int,
        client_max_retries: int | None,
        prices: Mapping[str, Price] | None,
        ledger: str | None,
    ) -> None:
        """The options the endpoint classes take (each declares them, with their defaults
        and documentation, in its own signature) and ``limits`` by header kind."""
        #: What each model costs: ``prices`` first, then genai-prices' table.
        self.prices = PriceTable(prices)
        if ledger is not None:
            from rate_limited.ledgers.redis import parse_url

            parse_url(ledger)  # a clear error now, not at runner()
        #: Where ``runner()``'s Runners keep the quotas (None: each in its own process).
        self.ledger = ledger
        if client is None:
            client = self._default_client()
        if client_max_retries is not None and hasattr(client, "with_options"):
            client = client.with_options(max_retries=client_max_retries)
        #: The client the preset calls (a copy with ``max_retries=client_max_retries``).
        self.client = client
        target: Any = client
        for name in self.endpoint:
            target = getattr(target, name)
        raw = getattr(target, "with_raw_response", None)
        self._create: Callable[..., Any] = raw.create if raw is not None else target.create
        if not (callable(tokenizer) or tokenizer in ("auto", "tiktoken", "conservative")):
            raise ConfigurationError(
                "tokenizer must be 'auto', 'tiktoken', 'conservative' or a callable "
                f"counting the tokens of a text, got {tokenizer!r}."
            )
        self._tokenizer: Tokenizer = self.auto_tokenizer if tokenizer == "auto" else tokenizer
        self._image_tokens = image_tokens
        self._media_tokens = media_tokens
        self._estimators: dict[str | None, PromptEstimator] = {}
        self._warned_unattached = False
        #: Learned from ``usage``: scales prompt estimates of calls scheduled from then on.
        self.calibration = Calibration()
        given: dict[str, float | None] = {}
        for name, kind in self.limit_kinds:
            given[kind] = _limit(limits.get(kind), name)
        #: What is known of the provider's limits, per model; feeds the Runners' ledgers.
        self.tracker = LimitTracker(
            type(self).__name__,
            self.family,
            self.limit_kinds,
            given,
            self._model_limits(model_limits),
        )
        #: The quotas to give the Runner: ``Runner(preset, preset.resources)``.
        self.resources: list[Resource] = [
            self._resource(name, kind, given[kind] or UNKNOWN_QUOTA)
            for name, kind in self.limit_kinds
        ]
        self.tracker.declared = {r.name: r for r in self.resources}

    def _model_limits(
        self, model_limits: Mapping[str, Mapping[str, float | None]] | None
    ) -> dict[Hashable, dict[str, float | None]]:
        if model_limits is None:
            return {}
        names = [name for name, _ in self.limit_kinds]
        if not isinstance(model_limits, Mapping):
            raise ConfigurationError(
                "model_limits must map a model's name to its limits, e.g. "
                f"{{'gpt-4o': {{'{names[-1]}': 30_000}}}}; got {type(model_limits).__name__}."
            )
        checked: dict[Hashable, dict[str, float | None]] = {}
        for model, limits in model_limits.items():
            if not isinstance(limits, Mapping):
                raise ConfigurationError(
                    f"model_limits[{model!r}] must map limit names ({', '.join(names)}) to "
                    f"numbers, got {type(limits).__name__}."
                )
            unknown = sorted(set(limits) - set(names))
            if unknown:
                raise ConfigurationError(
                    f"model_limits[{model!r}] has unknown limits {unknown}; "
                    f"{type(self).__name__}'s limits are {', '.join(names)}."
                )
            checked[model] = {
                name: _limit(value, f"model_limits[{model!r}][{name!r}]")
                for name, value in limits.items()
            }
        return checked

    # -- hooks for the endpoint classes ------------------------------------------------------
    def _default_client(self) -> Any:
        """The SDK's client with its defaults (its API key from the environment)."""
        if self.sdk is None:
            raise ConfigurationError(f"{type(self).__name__} needs a client.")
        module, sync_class, async_class = self.sdk
        try:
            sdk = importlib.import_module(module)
        except ImportError:
            raise ImportError(
                f"{type(self).__name__} needs the {module} SDK: "
                f"pip install 'rate_limited[{module}]'"
            ) from None
        return getattr(sdk, async_class if self.is_async else sync_class)()

    def _prompt(self, estimator: PromptEstimator, params: Mapping[str, Any]) -> int:
        """Raw prompt-token estimate of one request."""
        raise NotImplementedError

    def _reserved_output(self, params: Mapping[str, Any]) -> float:
        """Output tokens the provider reserves at admission."""
        raise NotImplementedError

    def _resource(self, name: str, kind: str, quota: float) -> Resource:
        """The Resource for one limit (the requests one by default): refilled
        continuously, one quota per model, billed by the provider's rule."""
        extract, estimate = self._usage_of(kind)
        return Resource(
            name,
            quota,
            MINUTE,
            arguments_usage_extractor=_one if extract is None else None,
            results_usage_extractor=extract,
            max_results_usage_estimator=estimate,
            refill="bucket",
            refill_delay=PROVIDER_REFILL_DELAY,
            settle=self.settle_rules.get(kind, "actual"),
            partition=model_of,
            partition_quotas=self.tracker.quotas(name),
        )

    def _usage_of(
        self, kind: str
    ) -> tuple[Callable[[Call, Any], float] | None, Callable[[Call], float] | None]:
        """``(results_usage_extractor, max_results_usage_estimator)`` of a token limit;
        ``(None, None)`` for the requests limit (one per call, at admission)."""
        return None, None

    # -- estimates ---------------------------------------------------------------------------
    def estimator(self, model: str | None) -> PromptEstimator:
        """The prompt estimator for ``model`` (tiktoken's encoding when available)."""
        found = self._estimators.get(model)
        if found is None:
            counter: TextCounter = resolve_counter(self._tokenizer, model)
            found = PromptEstimator(
                counter, image_tokens=self._image_tokens, media_tokens=self._media_tokens
            )
            self._estimators[model] = found
        return found

    def raw_prompt_tokens(self, params: Mapping[str, Any]) -> int:
        """Prompt tokens of a request as counted, before calibration."""
        model = params.get("model")
        return self._prompt(self.estimator(model if isinstance(model, str) else None), params)

    def prompt_tokens(self, params: Mapping[str, Any]) -> int:
        """Prompt tokens of a request, calibrated by the usage reported so far."""
        return self.calibration.apply(self.raw_prompt_tokens(params))

    def _params(self, call: Call) -> Mapping[str, Any]:
        if call.args:
            raise ArgumentTypeError(
                f"{type(self).__name__} takes the API's parameters by keyword, as the SDK "
                f"does: schedule(model=..., ...), got positional arguments {call.args!r}."
            )
        if call.kwargs.get("stream") and not self.streams:
            raise ArgumentTypeError(
                f"{type(self).__name__} does not stream: the usage it bills comes with the "
                "whole response; leave stream unset."
            )
        check_on_chunk(call.kwargs)
        return call.kwargs

    def _stream_request(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The SDK's parameters for a streamed call (``on_chunk`` is the preset's)."""
        return {name: value for name, value in params.items() if name != "on_chunk"}

    def _note_demand(self, name: str, call: Call, demand: float) -> None:
        self.tracker.note_demand(name, model_of(call), demand)

    # -- the Runner ---------------------------------------------------------------------------
    def attach_ledger(self, control: LedgerControl) -> None:
        """Called by the Runner before its first run: feedback goes to its ledger."""
        self.tracker.attach(control)

    @overload
    def runner(self, *, batch: Literal[False] = False, **runner_options: Any) -> Runner: ...

    @overload
    def runner(self, *, batch: Literal[True], **runner_options: Any) -> BatchRunner: ...

    def runner(self, *, batch: bool = False, **runner_options: Any) -> Runner | BatchRunner:
        """``Runner(self, self.resources, ledger=self.ledger, **runner_options)``, e.g.
        ``budget=Budget(usd=5)`` (the preset prices the calls) or ``escalate=[{"model":
        ...}, {"model": ...}]``;
        with ``batch=True``, a ``rate_limited.batch.BatchRunner`` (the provider's Batch
        API: half the price, answers within 24 h; needs ``store=``)."""
        if batch:
            from rate_limited.batch import BatchRunner

            return BatchRunner(self, **runner_options)
        from rate_limited.runner import Runner

        runner_options.setdefault("ledger", self.ledger)
        return Runner(self, self.resources, **runner_options)

    @property
    def limits(self) -> dict[str, float | None]:
        """Limits per minute in force, by resource name (None: not known yet; for a limit
        read from the headers, the one every model used so far reported)."""
        return self.tracker.limits

    def limits_for(self, model: str) -> dict[str, float | None]:
        """Limits per minute in force for ``model`` (None: not known yet)."""
        return self.tracker.limits_for(model)

    def __call__(self, **params: Any) -> Any:
        """Call the API with ``params`` (as the SDK's ``create``); returns the parsed response."""
        return self._send(params)

    def __repr__(self) -> str:
        limits = ", ".join(
            f"{name}={'?' if value is None else format(value, 'g')}"
            for name, value in self.limits.items()
        )
        return f"<{type(self).__name__} {limits}>"


class AsyncPreset(Preset):
    """Base of the presets for an async client: calling one returns a coroutine."""

    is_async = True

    async def __call__(self, **params: Any) -> Any:
        return await self._send_async(params)


def twin_of(preset: type[Preset]) -> Callable[[type[A]], type[A]]:
    """Class decorator of an async preset: ``preset(async_client)`` makes one of these."""

    def register(async_preset: type[A]) -> type[A]:
        preset._async_twin = async_preset
        return async_preset

    return register


def _limit(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number (or None to read it from the provider's "
            f"headers), got {value!r}."
        )
    return value
