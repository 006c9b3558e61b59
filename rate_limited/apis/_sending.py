"""Sending a preset's request: the SDK call, what its answer says fed back, streams.

Each attempt goes through the SDK's ``with_raw_response`` ``create`` (``Sender._create``,
set by ``Preset``), so the headers of the answer, or of the error, reach the preset's
``LimitTracker`` against the attempt's admission (``LedgerControl.admission()``); then
the parsed response is returned as the SDK would. ``stream=True`` hands each chunk to
``on_chunk`` and returns the response the endpoint's ``Assembler`` built. The sync and
async paths are written out side by side: each does its own I/O (as httpx's clients).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from rate_limited._feedback import LedgerControl
from rate_limited.apis._headers import headers_of
from rate_limited.apis._stream import Assembler, broken, check_on_chunk
from rate_limited.apis.common import RequestTooLargeError

if TYPE_CHECKING:
    from rate_limited.apis._limits import LimitTracker
    from rate_limited.ledgers.base import Reservation

__all__ = ["Sender", "is_async_client", "request_model"]

logger = logging.getLogger("rate_limited")


class Sender:
    """How ``Preset`` sends a request (its base; the endpoint classes say how a streamed
    response is assembled)."""

    #: Whether ``stream=True`` is supported (``_assembler`` builds the response).
    streams: ClassVar[bool] = False
    #: What is known of the provider's limits; the answers' headers feed it.
    tracker: LimitTracker
    _create: Callable[..., Any]
    _warned_unattached: bool

    def prompt_tokens(self, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def _stream_request(self, params: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

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
            self._feedback(headers, request_model(params), True, False, admission)
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
        self._feedback(headers, request_model(params or {}), False, refused, admission)
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


def _note_first_token(admission: Reservation | None, assembler: Assembler) -> None:
    if admission is not None and assembler.first_token is not None:
        admission.first_token = assembler.first_token


def _close(stream: Any) -> Any:
    """Close an SDK stream (its connection); an async one returns an awaitable."""
    close = getattr(stream, "close", None)
    return close() if callable(close) else None


def request_model(params: Mapping[str, Any]) -> Hashable:
    """A request's model, as a partition key (``repr`` of one that is not hashable)."""
    model = params.get("model")
    return model if isinstance(model, Hashable) else repr(model)


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
