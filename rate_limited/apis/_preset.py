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

import inspect
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

from rate_limited._feedback import LedgerControl
from rate_limited._price import Price
from rate_limited._token_usage import TokenUsage
from rate_limited.apis._headers import Family, headers_of
from rate_limited.apis._limits import MINUTE, UNKNOWN_QUOTA, LimitTracker
from rate_limited.apis._prompts import HIGH_DETAIL_IMAGE_TOKENS, PromptEstimator
from rate_limited.apis._stream import Assembler, broken, check_on_chunk
from rate_limited.apis._tokens import Calibration, TextCounter, Tokenizer, resolve_counter
from rate_limited.apis.common import PROVIDER_REFILL_DELAY, RequestTooLargeError
from rate_limited.cost import PriceTable
from rate_limited.exceptions import ArgumentTypeError, ConfigurationError
from rate_limited.resources import Resource, Settle

if TYPE_CHECKING:
    from rate_limited.batch import BatchRunner
    from rate_limited.calls import Call
    from rate_limited.ledgers.base import Reservation
    from rate_limited.runner import Runner

__all__ = ["MINUTE", "UNKNOWN_QUOTA", "Preset", "field", "is_async_client", "model_of"]

logger = logging.getLogger("rate_limited")


def _one(call: Call) -> float:
    return 1.0


def model_of(call: Call) -> Hashable:
    """A call's partition key for the presets' resources: its ``model`` argument."""
    return _model(call.kwargs)


def field(obj: Any, *path: str) -> Any:
    """``obj.a.b`` or ``obj["a"]["b"]`` (SDK objects and plain dicts alike); None if absent."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


class Preset:
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
    #: Whether ``stream=True`` is supported (``_assembler`` builds the response).
    streams: ClassVar[bool] = False

    def __init__(
        self,
        client: Any,
        limits: Mapping[str, float | None],
        *,
        model_limits: Mapping[str, Mapping[str, float | None]] | None = None,
        tokenizer: Tokenizer = "auto",
        image_tokens: int | None = None,
        media_tokens: int = HIGH_DETAIL_IMAGE_TOKENS,
        client_max_retries: int | None = 0,
        prices: Mapping[str, Price] | None = None,
        ledger: str | None = None,
    ) -> None:
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
        raise ConfigurationError(f"{type(self).__name__} needs a client.")

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

    # -- money (rate_limited._spend.CostSource) ------------------------------------------------
    def call_tokens(self, call: Call) -> tuple[int, float]:
        """``(prompt tokens, most output tokens)`` of a scheduled call, as estimated."""
        params = self._params(call)
        return self.prompt_tokens(params), self._reserved_output(params)

    def call_max_cost(
        self, call: Call, *, required: bool = False, batch: bool = False
    ) -> float | None:
        """The most the call can cost in USD: its prompt estimate at the highest rate a
        prompt token can be billed at, its most output at the output rate (``batch``: at
        the Batch API's rates). None if the model's price is not known (a
        ``PriceWarning``); with ``required`` (a budget), a ``ConfigurationError`` naming
        the model and how to give its price."""
        model, tier = self._priced_model(call, required)
        if model is None:
            return None
        if required:
            self.prices.require(model, batch=batch, tier=tier)
        prompt, output = self.call_tokens(call)
        return self.prices.max_cost(
            model,
            prompt,
            output,
            batch=batch,
            cache_write=self._may_write_cache(call.kwargs),
            tier=tier,
        )

    def call_min_cost(self, call: Call) -> float | None:
        """The least the call can cost in USD: its prompt estimate at the input rate, no
        output (None if the model's price is not known)."""
        model, tier = self._priced_model(call, False)
        price = None if model is None else self.prices.price(model, tier=tier)
        if price is None:
            return None
        return price.cost(TokenUsage(input_tokens=self.call_tokens(call)[0]))

    def call_cost(self, call: Call, result: Any) -> float | None:
        """USD the response cost, from the usage it reports, at its model's rates (None,
        without a warning, for a model without a price: see ``warn_unpriced``)."""
        model = field(result, "model")
        if not isinstance(model, str) or not model or self.prices.lookup(model) is None:
            model, _ = self._priced_model(call, False)
        if model is None or self.prices.lookup(model) is None:
            return None
        return self.prices.cost(result, model)

    def warn_unpriced(self, models: list[str]) -> None:
        """One ``PriceWarning`` per model without a price (per preset), in the caller's
        thread: the Runner calls this when ``run()`` returns."""
        for model in models:
            self.prices.price(model)

    def _priced_model(self, call: Call, required: bool) -> tuple[str | None, str | None]:
        model = call.kwargs.get("model")
        if not isinstance(model, str) or not model:
            if required:
                raise ConfigurationError(
                    f"A budget prices each call by its model: schedule {type(self).__name__} "
                    f"calls with model=..., got {call!r}."
                )
            return None, None
        tier = call.kwargs.get("service_tier")
        return model, tier if isinstance(tier, str) and tier != "auto" else None

    def _may_write_cache(self, params: Mapping[str, Any]) -> bool:
        """Whether the request may be billed prompt-cache writes (above the input rate).
        OpenAI caches prompts by itself, so by default: yes (where genai-prices has a
        write rate above the input's, it bounds the prompt)."""
        return True

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

    # -- calling ------------------------------------------------------------------------------
    def _before(self) -> Reservation | None:
        """Before sending: the attempt's admission (what the headers are compared with)."""
        if not self.tracker.attached and not self._warned_unattached:
            unknown = self.tracker.unknown()
            if unknown:
                self._warned_unattached = True
                logger.warning(
                    "%s is called outside a Runner that runs it directly, so the limits it "
                    "should discover (%s) are not enforced; use Runner(preset, "
                    "preset.resources) or give the limits.",
                    type(self).__name__,
                    ", ".join(unknown),
                )
        return LedgerControl.admission()

    def _after(self, raw: Any, params: Mapping[str, Any], admission: Reservation | None) -> Any:
        headers = headers_of(raw)
        if headers is not None:
            self._feedback(headers, _model(params), True, False, admission)
        parse = getattr(raw, "parse", None)
        return parse() if callable(parse) else raw

    def _feedback(
        self,
        headers: Mapping[str, str] | None,
        model: Hashable,
        answered: bool,
        refused: bool,
        admission: Reservation | None,
    ) -> None:
        """What the provider said into the tracker; a failure there is logged, never the
        call's (an answered call was paid for)."""
        try:
            self.tracker.feedback(headers, model, answered, refused, admission)
        except Exception:
            logger.exception("%s could not read the rate-limit headers", type(self).__name__)

    def _failed(
        self,
        exc: Exception,
        params: Mapping[str, Any] | None = None,
        admission: Reservation | None = None,
    ) -> Exception | None:
        """Feed back what a failed request said; a replacement exception to raise, if any."""
        headers = headers_of(exc)
        refused = getattr(exc, "status_code", None) == 429
        self._feedback(headers, _model(params or {}), False, refused, admission)
        if refused and headers is not None and _header(headers, "x-should-retry") == "false":
            return RequestTooLargeError(str(exc), response=getattr(exc, "response", None))
        return None

    def _request(self, request: dict[str, Any], params: Mapping[str, Any]) -> Any:
        """Send ``request`` (the SDK's parameters of the call ``params``); returns the
        parsed response (a stream, for ``stream=True``) and the attempt's admission."""
        admission = self._before()
        try:
            raw = self._create(**request)
        except Exception as exc:
            replacement = self._failed(exc, params, admission)
            if replacement is None:
                raise
            raise replacement from exc
        return self._after(raw, params, admission), admission

    async def _request_async(self, request: dict[str, Any], params: Mapping[str, Any]) -> Any:
        """``_request`` for an async client."""
        admission = self._before()
        try:
            raw = await self._create(**request)
        except Exception as exc:
            replacement = self._failed(exc, params, admission)
            if replacement is None:
                raise
            raise replacement from exc
        parsed = self._after(raw, params, admission)
        if inspect.isawaitable(parsed):  # anthropic's async raw responses parse async
            parsed = await parsed
        return parsed, admission

    def _send(self, params: dict[str, Any]) -> Any:
        if params.get("stream") and self.streams:
            return self._send_stream(params)
        return self._request(params, params)[0]

    async def _send_async(self, params: dict[str, Any]) -> Any:
        if params.get("stream") and self.streams:
            return await self._send_stream_async(params)
        return (await self._request_async(params, params))[0]

    def _start_stream(
        self, params: dict[str, Any]
    ) -> tuple[dict[str, Any], Callable[[Any], object] | None, Assembler]:
        on_chunk = check_on_chunk(params)
        request = self._stream_request(params)
        return request, on_chunk, self._assembler(self.prompt_tokens(request))

    def _assembler(self, prompt_estimate: float) -> Assembler:
        """Builds the whole response of a stream (the endpoints that stream say how)."""
        raise NotImplementedError

    def _send_stream(self, params: dict[str, Any]) -> Any:
        request, on_chunk, assembler = self._start_stream(params)
        stream, admission = self._request(request, params)
        try:
            chunks = iter(stream)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:
                    raise broken(assembler, exc) from exc
                assembler.add(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        finally:
            _note_first_token(admission, assembler)
            _close(stream)
        return assembler.result()

    async def _send_stream_async(self, params: dict[str, Any]) -> Any:
        request, on_chunk, assembler = self._start_stream(params)
        stream, admission = await self._request_async(request, params)
        chunks = stream.__aiter__()
        try:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise broken(assembler, exc) from exc
                assembler.add(chunk)
                if on_chunk is not None:
                    result = on_chunk(chunk)
                    if inspect.isawaitable(result):
                        await result
        finally:
            _note_first_token(admission, assembler)
            if hasattr(chunks, "aclose"):  # the SDK's async generator, closed on this loop
                await chunks.aclose()
            closing = _close(stream)
            if inspect.isawaitable(closing):
                await closing
        return assembler.result()

    def __call__(self, **params: Any) -> Any:
        """Call the API with ``params`` (as the SDK's ``create``); returns the parsed response."""
        return self._send(params)

    def __repr__(self) -> str:
        limits = ", ".join(
            f"{name}={'?' if value is None else format(value, 'g')}"
            for name, value in self.limits.items()
        )
        return f"<{type(self).__name__} {limits}>"


def _note_first_token(admission: Reservation | None, assembler: Assembler) -> None:
    if admission is not None and assembler.first_token is not None:
        admission.first_token = assembler.first_token


def _close(stream: Any) -> Any:
    """Close an SDK stream (its connection); an async one returns an awaitable."""
    close = getattr(stream, "close", None)
    return close() if callable(close) else None


def _model(params: Mapping[str, Any]) -> Hashable:
    model = params.get("model")
    return model if isinstance(model, Hashable) else repr(model)


def _limit(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number (or None to read it from the provider's "
            f"headers), got {value!r}."
        )
    return value


def _header(headers: Mapping[str, str], name: str) -> str | None:
    try:
        value = headers.get(name)
    except Exception:
        return None
    return None if value is None else str(value).strip().lower()


def is_async_client(client: Any, endpoint: tuple[str, ...]) -> bool:
    """Whether ``client`` is an async SDK client (its raw ``create`` is a coroutine function)."""
    target: Any = client
    for name in endpoint:
        target = getattr(target, name, None)
    raw = getattr(target, "with_raw_response", None)
    create = getattr(raw if raw is not None else target, "create", None)
    if create is not None and inspect.iscoroutinefunction(create):
        return True
    return type(client).__name__.startswith("Async")
