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

This base does no I/O of its own; the endpoint classes (``rate_limited.apis.openai``,
``rate_limited.apis.anthropic``) say how to estimate, what to call and what usage to read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from rate_limited.apis._headers import Family, headers_of
from rate_limited.apis._limits import MINUTE, UNKNOWN_QUOTA, LimitTracker
from rate_limited.apis._prompts import HIGH_DETAIL_IMAGE_TOKENS, PromptEstimator
from rate_limited.apis._tokens import Calibration, TextCounter, Tokenizer, resolve_counter
from rate_limited.apis.common import PROVIDER_REFILL_DELAY, RequestTooLargeError
from rate_limited.exceptions import ConfigurationError
from rate_limited.resources import Resource

if TYPE_CHECKING:
    from rate_limited._feedback import LedgerControl
    from rate_limited.calls import Call
    from rate_limited.runner import Runner

__all__ = ["MINUTE", "UNKNOWN_QUOTA", "Preset", "field", "is_async_client"]


def _one(call: Call) -> float:
    return 1.0


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
    #: Seconds assumed between sending a request and the provider admitting it, when
    #: crediting refill to the ``remaining`` it reported (see ``LimitTracker``).
    admission_delay: ClassVar[float] = 0.5
    #: What ``tokenizer="auto"`` means for this provider.
    auto_tokenizer: ClassVar[Literal["auto", "conservative"]] = "auto"

    def __init__(
        self,
        client: Any,
        limits: Mapping[str, float | None],
        *,
        tokenizer: Tokenizer = "auto",
        image_tokens: int | None = None,
        media_tokens: int = HIGH_DETAIL_IMAGE_TOKENS,
        client_max_retries: int | None = 0,
    ) -> None:
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
        #: Learned from ``usage``: scales prompt estimates of calls scheduled from then on.
        self.calibration = Calibration()
        given: dict[str, float | None] = {}
        resources = []
        for name, kind in self.limit_kinds:
            value = limits.get(kind)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise ConfigurationError(
                    f"{name} must be a positive number (or None to read it from the "
                    f"provider's headers), got {value!r}."
                )
            given[kind] = value
            resources.append(self._resource(name, kind, UNKNOWN_QUOTA if value is None else value))
        #: What is known of the provider's limits; feeds the Runners' ledgers.
        self.tracker = LimitTracker(
            type(self).__name__, self.family, self.limit_kinds, given, self.admission_delay
        )
        self.tracker.declared = {r.name: r for r in resources}
        #: The quotas to give the Runner: ``Runner(preset, preset.resources)``.
        self.resources: list[Resource] = resources

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
        """The Resource for one limit (the requests one by default)."""
        return Resource(
            name,
            quota,
            MINUTE,
            arguments_usage_extractor=_one,
            refill="bucket",
            refill_delay=PROVIDER_REFILL_DELAY,
        )

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
            raise TypeError(
                f"{type(self).__name__} takes the API's parameters by keyword, as the SDK "
                f"does: schedule(model=..., ...), got positional arguments {call.args!r}."
            )
        if call.kwargs.get("stream"):
            raise TypeError(
                f"{type(self).__name__} does not stream: the usage it bills comes with the "
                "whole response; leave stream unset."
            )
        return call.kwargs

    def _note_demand(self, name: str, demand: float) -> None:
        self.tracker.note_demand(name, demand)

    # -- the Runner ---------------------------------------------------------------------------
    def attach_ledger(self, control: LedgerControl) -> None:
        """Called by the Runner before its first run: feedback goes to its ledger."""
        self.tracker.attach(control)

    def runner(self, **runner_options: Any) -> Runner:
        """``Runner(self, self.resources, **runner_options)``."""
        from rate_limited.runner import Runner

        return Runner(self, self.resources, **runner_options)

    @property
    def limits(self) -> dict[str, float | None]:
        """Limits per minute in force, by resource name (None: not known yet)."""
        return self.tracker.limits

    # -- calling ------------------------------------------------------------------------------
    def _before(self) -> float:
        self.tracker.warn_if_unattached()
        return self.tracker.clock()

    def _after(self, raw: Any, sent_at: float) -> Any:
        headers = headers_of(raw)
        if headers is not None:
            self.tracker.feedback(headers, sent_at, answered=True)
        parse = getattr(raw, "parse", None)
        return parse() if callable(parse) else raw

    def _failed(
        self, exc: Exception, sent_at: float, params: Mapping[str, Any] | None = None
    ) -> Exception | None:
        """Feed back what a failed request said; a replacement exception to raise, if any."""
        headers = headers_of(exc)
        refused = getattr(exc, "status_code", None) == 429
        # A 429's headers describe the buckets without this request, while the ledger
        # still holds its reservation (released right after): report as if it were charged.
        held = self.demand_by_kind(params) if refused and params is not None else None
        self.tracker.feedback(headers, sent_at, answered=False, held=held)
        if refused and headers is not None and _header(headers, "x-should-retry") == "false":
            return RequestTooLargeError(str(exc), response=getattr(exc, "response", None))
        return None

    def demand_by_kind(self, params: Mapping[str, Any]) -> dict[str, float]:
        """What one request holds of each limit while in flight, by header kind."""
        return {"requests": 1.0}

    def _send(self, params: dict[str, Any]) -> Any:
        sent_at = self._before()
        try:
            raw = self._create(**params)
        except Exception as exc:
            replacement = self._failed(exc, sent_at, params)
            if replacement is None:
                raise
            raise replacement from exc
        return self._after(raw, sent_at)

    async def _send_async(self, params: dict[str, Any]) -> Any:
        sent_at = self._before()
        try:
            raw = await self._create(**params)
        except Exception as exc:
            replacement = self._failed(exc, sent_at, params)
            if replacement is None:
                raise
            raise replacement from exc
        parsed = self._after(raw, sent_at)
        if inspect.isawaitable(parsed):  # anthropic's async raw responses parse async
            parsed = await parsed
        return parsed

    def __call__(self, **params: Any) -> Any:
        """Call the API with ``params`` (as the SDK's ``create``); returns the parsed response."""
        return self._send(params)

    def __repr__(self) -> str:
        limits = ", ".join(
            f"{name}={'?' if value is None else format(value, 'g')}"
            for name, value in self.limits.items()
        )
        return f"<{type(self).__name__} {limits}>"


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
