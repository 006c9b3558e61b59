"""A small HTTP/1.1 server on asyncio streams, just enough for the SDKs' HTTP clients.

It speaks keep-alive, Content-Length and chunked request bodies, and answers each request
with whatever an async handler returns; a handler that returns None makes the server
close the connection without answering (the "dropped connection" fault). It is written
on ``asyncio.start_server`` so the MockProvider needs no web framework, and keeps track
of its connections so ``close()`` leaves no task or socket behind. ``Expect:
100-continue`` is honoured (curl sends it for larger bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from rate_limited._redact import get_logger

__all__ = [
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "json_response",
    "raise_open_files_limit",
]

log = get_logger(__name__)  # redacted: request paths may carry ?key=

_HEAD_LIMIT = 64 * 1024
_REASONS = {status.value: status.phrase for status in HTTPStatus} | {529: "Overloaded"}


@dataclass
class HttpRequest:
    """A parsed request. Header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpResponse:
    """A response to send; ``content-length`` and ``connection`` are added on the way."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    #: A streamed answer instead of ``body``: these pieces, sent chunked, one every
    #: ``pace`` seconds; after ``break_after`` of them the connection is closed.
    events: list[bytes] | None = None
    pace: float = 0.0
    break_after: int | None = None


Handler = Callable[[HttpRequest], Awaitable["HttpResponse | None"]]


def json_response(body: Any, status: int = 200) -> HttpResponse:
    """An answer with a compact JSON body."""
    return HttpResponse(status, json.dumps(body, separators=(",", ":")).encode())


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_response(status: int, message: str) -> HttpResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    return HttpResponse(status, json.dumps(body).encode())


class HttpServer:
    """Serves ``handler`` on a TCP port until ``close()``."""

    def __init__(self, handler: Handler, *, max_body: int = 64 * 1024 * 1024) -> None:
        self._handler = handler
        self._max_body = max_body
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int, *, backlog: int = 2048) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the port."""
        self._server = await asyncio.start_server(
            self._serve, host, port, backlog=backlog, limit=_HEAD_LIMIT
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and end every connection, including requests still in work."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels us; ending normally keeps asyncio's stream callback from
            # reporting the cancellation as an error.
            pass
        except Exception:  # a bug in the mock: say so, but keep serving others
            log.exception("MockProvider connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request, keep_alive = await self._read_request(reader, writer)
            except asyncio.IncompleteReadError:
                return  # the client closed the connection between requests
            except _BadRequest as exc:
                await self._write(writer, _error_response(exc.status, str(exc)), False)
                return
            if request is None:
                return
            try:
                response = await self._handler(request)
            except Exception:
                log.exception("MockProvider handler failed on %s %s", request.method, request.path)
                response = _error_response(500, "the mock provider failed; see its log")
            if response is None or writer.is_closing():
                return
            if response.events is not None:
                if not await self._stream(writer, response, keep_alive):
                    return
            else:
                await self._write(writer, response, keep_alive)
            if not keep_alive:
                return

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[HttpRequest | None, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest(431, "request header fields too large") from exc
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None, False
            raise
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequest(400, f"malformed request line {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, f"malformed header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":  # curl, for larger bodies
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(reader, headers)
        path, _, query = target.partition("?")
        connection = headers.get("connection", "").lower()
        default = "keep-alive" if version == "HTTP/1.1" else "close"
        keep_alive = (connection or default) != "close"
        return HttpRequest(method.upper(), path, query, headers, body), keep_alive

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            size_total = 0
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise _BadRequest(400, "malformed chunk size") from exc
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers, ignored
                    return b"".join(chunks)
                size_total += size
                if size_total > self._max_body:
                    raise _BadRequest(413, "request body too large")
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise _BadRequest(400, "malformed content-length") from exc
        if length < 0 or length > self._max_body:
            raise _BadRequest(413, "request body too large")
        return await reader.readexactly(length) if length else b""

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool
    ) -> None:
        status = response.status
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"content-type: {response.content_type}",
            f"content-length: {len(response.body)}",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{name}: {value}" for name, value in response.headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head + response.body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    @staticmethod
    async def _stream(
        writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool
    ) -> bool:
        """Send ``response.events`` chunked, paced; False if the connection must close
        (a broken stream, or a client that went away)."""
        assert response.events is not None
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"content-type: {response.content_type}",
            "transfer-encoding: chunked",
            "cache-control: no-cache",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{name}: {value}" for name, value in response.headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            for sent, event in enumerate(response.events):
                if response.break_after is not None and sent >= response.break_after:
                    await writer.drain()
                    return False  # the stream breaks: no last chunk, the connection closes
                if response.pace > 0:
                    await asyncio.sleep(response.pace)
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            return False
        return True


def raise_open_files_limit(wanted: int) -> None:
    """Let one process hold both ends of a few hundred connections (POSIX only)."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
