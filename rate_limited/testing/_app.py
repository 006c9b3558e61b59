"""The MockProvider's request pipeline: route, authenticate, parse, admit, fault, answer.

This is the asyncio side of the mock, independent of the thread that hosts it. For every
request it decides, in the order a real provider does: the route (404/405), the API key
(401), the body (400), the rate limits (429, with ``retry-after``), then — for admitted
requests only — a seeded fault or a real answer after the configured latency.

Randomness is per request: a ``random.Random`` seeded by ``(seed, endpoint, body hash,
attempt)`` where ``attempt`` counts earlier admissions of the same body. So the same
seed and the same requests give the same faults, lengths and texts whatever order they
arrive in, while a retry of a faulted request draws afresh (and can succeed). The fault
draw comes first and is always made, so turning faults on changes no other answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _anthropic_wire, _openai_wire
from ._batch_jobs import BatchSettings, JobBook
from ._batch_routes import BatchRoutes, is_batch_path
from ._faults import Faults, draw_fault
from ._http import HttpRequest, HttpResponse
from ._limits import Decision, Family, RateLimiter
from ._outputs import OutputModel
from ._stats import RequestLogEntry, StatsRecorder
from ._stream import anthropic_events, openai_events
from ._wire import ApiCall, ApiError, Endpoint, body_hash, json_object

__all__ = ["MockApp"]

_ROUTES: dict[str, tuple[Family, Endpoint]] = {
    "/v1/chat/completions": ("openai", "chat.completions"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/v1/responses": ("openai", "responses"),
    "/v1/messages": ("anthropic", "messages"),
}
_SERVER_ERROR = {
    "openai": "The server had an error while processing your request. Sorry about that!",
    "anthropic": "Internal server error",
}


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class MockApp:
    """Answers HTTP requests as OpenAI and Anthropic would, within its rate limits."""

    def __init__(
        self,
        *,
        limiter: RateLimiter,
        stats: StatsRecorder,
        outputs: OutputModel,
        faults: Faults,
        seed: int,
        default_max_tokens: int,
        models: Sequence[str],
        api_key: str | None,
        embedding_dimensions: int,
        refund_unused_output: Mapping[Family, bool],
        clock: Callable[[], float] = time.monotonic,
        batch_settings: BatchSettings | None = None,
        batch_clock: Callable[[], float] | None = None,
    ) -> None:
        self.limiter = limiter
        self.stats = stats
        self.outputs = outputs
        #: Replaced whole (never mutated) so another thread may swap it at any time.
        self.faults = faults
        self._seed = seed
        self._default_max_tokens = default_max_tokens
        self._models = tuple(models)
        self._api_key = api_key
        self._dimensions = embedding_dimensions
        self._refund = dict(refund_unused_output)
        self._clock = clock
        self._attempts: dict[str, int] = {}
        #: The batch endpoints' jobs and files (``_batch_jobs``), on their own clock.
        self.batches = JobBook(
            batch_settings or BatchSettings(),
            batch_clock or clock,
            outputs,
            lambda: self.faults,
            seed,
            self._batch_answer,
        )
        self._batch_routes = BatchRoutes(self.batches, default_max_tokens)

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Answer one request (None: close the connection without answering)."""
        arrival = self._clock()
        path = request.path.rstrip("/")
        is_anthropic = "anthropic-version" in request.headers or path == "/v1/messages"
        family: Family = "anthropic" if is_anthropic else "openai"
        if is_batch_path(path):
            return self._batch(family, request, arrival)
        route = _ROUTES.get(path)
        endpoint = route[1] if route else ("models" if path == "/v1/models" else path)
        known = route is not None or path == "/v1/models"
        expected_method = "POST" if route else "GET"
        try:
            if not known:
                hint = " (anthropic clients take MockProvider.anthropic_base_url)"
                hint = hint if path.startswith("/v1/v1/") else ""
                raise ApiError(404, f"Invalid URL ({request.method} {request.path}){hint}")
            if request.method != expected_method:
                raise ApiError(405, f"Method {request.method} not allowed on {request.path}")
            self._authenticate(family, request)
            if route is None:
                models = self._models
                body: Any = (
                    _anthropic_wire.models_body(models)
                    if is_anthropic
                    else _openai_wire.models_body(models, int(time.time()))
                )
                self._log_unmetered(arrival, endpoint, 200, request.body)
                return HttpResponse(200, _dumps(body))
            call = self._parse(route, request.body)
        except ApiError as error:
            self._log_unmetered(arrival, endpoint, error.status, request.body)
            return self._error(family, error, [])
        return await self._serve(family, call, arrival)

    def _batch(self, family: Family, request: HttpRequest, arrival: float) -> HttpResponse:
        """The batch endpoints: not metered by the online rate limits (a Batch API has
        its own), logged like the models endpoint."""
        family = "anthropic" if request.path.startswith("/v1/messages/") else "openai"
        try:
            self._authenticate(family, request)
            answer = self._batch_routes.handle(request, family == "anthropic")
        except ApiError as error:
            self._log_unmetered(arrival, "batches", error.status, b"")
            return self._error(family, error, [])
        self._log_unmetered(arrival, "batches", answer.status, b"")
        return answer

    def _batch_answer(self, call: ApiCall, rng: random.Random, ident: str) -> dict[str, Any]:
        """A batch request's 200 body: what the online endpoint answers (``rng`` drawn
        the same way), billed at the batch tier where the provider says so."""
        outputs = self.outputs.answer(call, rng) if call.endpoint != "embeddings" else []
        if call.endpoint == "messages":
            body = _anthropic_wire.render(call, outputs, ident)
            # Anthropic reports batch results as such: usage.service_tier == "batch".
            body["usage"]["service_tier"] = "batch"
            return body
        return _openai_wire.render(call, outputs, ident, int(time.time()), self._dimensions)

    def _log_unmetered(self, arrival: float, endpoint: str, status: int, raw: bytes) -> None:
        """Log a request that never reached the rate limiter (models, 4xx)."""
        try:
            digest = body_hash(json.loads(raw))
        except ValueError:
            digest = hashlib.sha256(raw).hexdigest()[:32]
        entry = RequestLogEntry(arrival, endpoint, "", status, digest, 0, 0, None)
        self.stats.record(entry, admitted=False)

    def _authenticate(self, family: Family, request: HttpRequest) -> None:
        bearer = request.headers.get("authorization", "")
        key = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        if family == "anthropic":
            key = request.headers.get("x-api-key", "") or key
        if not key:
            where = "an x-api-key header" if family == "anthropic" else "an Authorization header"
            raise ApiError(401, f"You didn't provide an API key; pass it in {where}.")
        if self._api_key is not None and key != self._api_key:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _parse(self, route: tuple[Family, Endpoint], raw: bytes) -> ApiCall:
        body = json_object(raw)
        family, endpoint = route
        if family == "anthropic":
            return _anthropic_wire.parse(body)
        return _openai_wire.parse(endpoint, body, self._default_max_tokens)

    def _error(
        self, family: Family, error: ApiError, headers: list[tuple[str, str]], kind: str = ""
    ) -> HttpResponse:
        if family == "anthropic":
            body = _anthropic_wire.error_body(error)
        else:
            body = _openai_wire.error_body(error, kind=kind or None)
        return HttpResponse(error.status, _dumps(body), headers)

    async def _serve(self, family: Family, call: ApiCall, arrival: float) -> HttpResponse | None:
        digest = body_hash(call.body)
        reserved = call.reserved_output_tokens
        if family == "openai":
            amounts = {"requests": 1.0, "tokens": float(call.prompt_tokens + reserved)}
        else:
            amounts = {
                "requests": 1.0,
                "input_tokens": float(call.prompt_tokens),
                "output_tokens": float(reserved),
            }
        decision = self.limiter.admit(family, call.model, amounts)

        def log(status: int | None, completion: int = 0, fault: str | None = None) -> None:
            entry = RequestLogEntry(
                arrival,
                call.endpoint,
                call.model,
                status,
                digest,
                call.prompt_tokens,
                completion,
                fault,
                reserved if decision.admitted else 0,
            )
            self.stats.record(entry, admitted=decision.admitted)

        if not decision.admitted:
            log(429)
            return self._rate_limited(family, call, decision)
        self.stats.admitted(arrival, decision.usage, reserved)
        key = f"{self._seed}:{call.endpoint}:{digest}"
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        rng = random.Random(f"{key}:{attempt}")
        ident = hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:24]
        faults = self.faults
        try:
            fault = draw_fault(faults, rng)
            if fault == "stream_break" and not call.stream:
                fault = None  # it breaks streams only
            if fault is not None and fault != "stream_break":
                log(
                    None if fault in ("hang", "drop") else 500 if fault == "error_500" else 200,
                    fault=fault,
                )
                await asyncio.sleep(
                    faults.hang_seconds if fault == "hang" else self.outputs.latency
                )
                return self._fault_response(fault, family, ident, decision)
            outputs = self.outputs.answer(call, rng) if call.endpoint != "embeddings" else []
            completion = sum(output.tokens for output in outputs)
            log(200, completion, fault=fault)
            delay = self.outputs.delay(completion, rng)
            if not call.stream:
                await asyncio.sleep(delay)
            if self._refund[family]:
                self.limiter.refund(decision, reserved - completion)
        finally:
            self.stats.finished()
        if family == "anthropic":
            body = _anthropic_wire.render(call, outputs, ident)
            id_header = ("request-id", f"req_{ident}")
        else:
            created = int(time.time())
            body = _openai_wire.render(call, outputs, ident, created, self._dimensions)
            id_header = ("x-request-id", f"req_{ident}")
        headers = [*decision.headers, id_header]
        if call.stream:
            if family == "anthropic":
                events = anthropic_events(body, outputs[0])
            else:
                usage = _openai_wire.usage(call, completion)
                events = openai_events(call, outputs, ident, created, usage)
            return HttpResponse(
                200,
                headers=headers,
                content_type="text/event-stream; charset=utf-8",
                events=events,
                pace=delay / len(events),  # the answer's latency, spread over its events
                break_after=len(events) // 2 if fault == "stream_break" else None,
            )
        return HttpResponse(200, _dumps(body), headers)

    def _rate_limited(self, family: Family, call: ApiCall, decision: Decision) -> HttpResponse:
        wire = _anthropic_wire if family == "anthropic" else _openai_wire
        message = wire.rate_limit_message(
            call.model,
            decision.blocking_kind,
            decision.blocking_limit,
            decision.blocking_used,
            decision.blocking_requested,
        )
        headers = list(decision.headers)
        if math.isinf(decision.wait):  # can never fit: retrying cannot help
            headers.append(("x-should-retry", "false"))
        else:
            headers.append(("retry-after", str(max(1, math.ceil(decision.wait)))))
            if family == "openai":
                headers.append(("retry-after-ms", str(max(1, math.ceil(decision.wait * 1000)))))
        error = ApiError(429, message, code="rate_limit_exceeded")
        return self._error(family, error, headers, kind=decision.blocking_kind)

    def _fault_response(
        self, fault: str, family: Family, ident: str, decision: Decision
    ) -> HttpResponse | None:
        if fault == "error_500":
            error = ApiError(500, _SERVER_ERROR[family])
            return self._error(family, error, decision.headers, kind="server_error")
        if fault == "malformed":
            broken = f'{{"id": "mock-{ident}", "object": "chat.completion", "choices": [{{"ind'
            return HttpResponse(200, broken.encode(), list(decision.headers))
        return None  # hang (after its wait) and drop: close without an answer
