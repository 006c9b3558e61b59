"""The two Batch APIs behind one small interface: what ``BatchRunner`` asks of a provider.

``OpenAIBatches`` uploads a JSONL input file (``purpose="batch"``), then creates the batch
from it (``POST /v1/batches``); its results are two files, output and errors.
``AnthropicBatches`` sends the requests in the create call itself (``POST
/v1/messages/batches``) and streams one JSONL of results. Both are driven with the real
SDK clients (sync: a batch is a handful of requests, and a sync client is what a Ctrl-C
in a notebook interrupts cleanly).

Each provider's documented limits, which ``_plan`` splits by:

* OpenAI (platform.openai.com/docs/guides/batch): "A single batch may include up to
  50,000 requests, and a batch input file can be up to 200 MB in size"; "each input file
  can only include requests to a single model"; "Enqueued prompt tokens per model: Each
  model has a maximum number of enqueued prompt tokens allowed for batch processing"
  (``enqueued_token_limit=``; the account's figure is on its limits page, as the "Batch
  queue limit").
* Anthropic (docs.anthropic.com/en/docs/build-with-claude/batch-processing): "A Message
  Batch is limited to either 100,000 Message requests or 256 MB in size, whichever is
  reached first."
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rate_limited.exceptions import BatchRequestError, ConfigurationError

__all__ = ["AnthropicBatches", "BatchApi", "BatchState", "Item", "OpenAIBatches", "batch_api"]

#: Where a batch is, in the words both providers share.
Phase = Literal["validating", "in_progress", "finalizing", "ended", "failed"]


@dataclass(frozen=True)
class BatchState:
    """One batch as the provider last described it."""

    phase: Phase
    #: The provider's own status word ("in_progress", "finalizing", "canceling", ...).
    status: str
    total: int
    #: Requests processed so far (answered or errored).
    done: int
    failed: int
    #: Validation errors of a batch that failed as a whole: ``(code, message)``.
    error: tuple[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True)
class Item:
    """One request's answer: a parsed SDK object, or the error it got instead."""

    custom_id: str
    value: Any = None
    error: BatchRequestError | None = None


def _attr(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


class BatchApi:
    """What the runner needs from a Batch API."""

    family: ClassVar[str]
    #: Most requests in one batch, and most bytes of one batch's requests.
    max_requests: int
    max_bytes: int
    #: Whether a batch must hold a single model (OpenAI).
    one_model: ClassVar[bool] = False
    #: Whether a batch is made from an uploaded file (OpenAI) or its requests (Anthropic).
    uploads: ClassVar[bool] = False

    #: The clients the requests go out on (see ``_SyncClients``), set by ``_connect``.
    _clients: _SyncClients | None = None
    client: Any
    reads: Any

    def _connect(self, client: Any, module: str) -> None:
        self._clients = _SyncClients(client, module)
        self.client, self.reads = self._clients.writes, self._clients.reads

    def close(self) -> None:
        """Close the connections of a sync client made from the user's async one (at the
        end of each run; used again, it connects again)."""
        if self._clients is not None:
            self._clients.close()
            self.client, self.reads = self._clients.writes, self._clients.reads

    def line(self, custom_id: str, params: Mapping[str, Any]) -> bytes:
        """One request as the provider's batch input (one JSON line), for the size limit."""
        raise NotImplementedError

    def upload(self, lines: Sequence[bytes], name: str) -> str:
        """Upload an input file; its id (OpenAI only)."""
        raise NotImplementedError

    def create(self, lines: Sequence[bytes], file_id: str | None, tag: str) -> str:
        """Create a batch; its id."""
        raise NotImplementedError

    def find(self, file_id: str | None, tag: str, since: float, total: int) -> str | None:
        """The id of a batch created from ``file_id`` (or tagged ``tag``) after ``since``
        (epoch seconds), if the provider has one: the create call of an earlier process
        may have succeeded with no record of its answer."""
        raise NotImplementedError

    def retrieve(self, batch_id: str) -> BatchState:
        raise NotImplementedError

    def results(self, batch_id: str, state: BatchState) -> Iterator[Item]:
        """Every request's answer of an ended batch (any order)."""
        raise NotImplementedError

    def cancel(self, batch_id: str) -> None:
        raise NotImplementedError


#: The SDK's own retries of the requests that change nothing (polls, downloads): a
#: provider hiccup while polling for hours must not end the run.
READ_RETRIES = 5


def _sync_client(client: Any, module: str) -> tuple[Any, bool]:
    """``client`` itself if it is sync, else a sync client with its settings (the batch
    endpoints are a handful of requests, made from the thread that called ``run()``), and
    whether it was made here (then it is ours to close)."""
    if not type(client).__name__.startswith("Async"):
        return client, False
    sdk = __import__(module)
    sync_class = getattr(sdk, type(client).__name__[len("Async") :])
    options: dict[str, Any] = {"api_key": client.api_key, "base_url": str(client.base_url)}
    for name in ("timeout", "organization", "project"):
        if getattr(client, name, None) is not None:
            options[name] = getattr(client, name)
    return sync_class(**options), True


class _SyncClients:
    """The clients a Batch API sends with: ``writes`` for the requests that create
    something (no SDK retries: a create retried after a timeout could make a second batch,
    paid twice; an interrupted create is found again by ``find``) and ``reads``, which
    retries. For an async client they come from a sync client made here, which ``close``
    closes (the user's own client is theirs to close): its connections do not outlive the
    run, and the next use makes a new one."""

    def __init__(self, client: Any, module: str) -> None:
        self._source, self._module = client, module
        self._open()

    def _open(self) -> None:
        client, self._made = _sync_client(self._source, self._module)
        self.writes = client.with_options(max_retries=0)
        self.reads = client.with_options(max_retries=READ_RETRIES)
        self._client = client

    def close(self) -> None:
        if self._made:
            self._client.close()  # the copies share its connection pool
            self._open()  # no connection until it is used


class OpenAIBatches(BatchApi):
    """OpenAI's Batch API: ``/v1/files`` then ``/v1/batches``."""

    family = "openai"
    one_model = True
    uploads = True
    #: The batch endpoint of each preset's SDK resource.
    URLS: ClassVar[Mapping[tuple[str, ...], str]] = {
        ("chat", "completions"): "/v1/chat/completions",
        ("responses",): "/v1/responses",
        ("embeddings",): "/v1/embeddings",
    }

    def __init__(
        self, client: Any, endpoint: tuple[str, ...], *, max_requests: int, max_bytes: int
    ) -> None:
        self._connect(client, "openai")
        self.url = self.URLS[endpoint]
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        import openai.types as types
        import openai.types.chat as chat_types
        import openai.types.responses as response_types

        self._type: Any = {
            "/v1/chat/completions": chat_types.ChatCompletion,
            "/v1/responses": response_types.Response,
            "/v1/embeddings": types.CreateEmbeddingResponse,
        }[self.url]

    def line(self, custom_id: str, params: Mapping[str, Any]) -> bytes:
        request = {"custom_id": custom_id, "method": "POST", "url": self.url, "body": params}
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def upload(self, lines: Sequence[bytes], name: str) -> str:
        file = self.client.files.create(file=(name, b"".join(lines)), purpose="batch")
        return str(file.id)

    def create(self, lines: Sequence[bytes], file_id: str | None, tag: str) -> str:
        batch = self.client.batches.create(
            input_file_id=file_id,
            endpoint=self.url,
            completion_window="24h",
            metadata={"rate_limited": tag},
        )
        return str(batch.id)

    def find(self, file_id: str | None, tag: str, since: float, total: int) -> str | None:
        for batch in self.reads.batches.list(limit=100):
            if batch.created_at < since - 60:
                return None  # newest first: the rest are older than the record
            metadata = batch.metadata or {}
            if batch.input_file_id == file_id or metadata.get("rate_limited") == tag:
                return str(batch.id)
        return None

    def retrieve(self, batch_id: str) -> BatchState:
        batch = self.reads.batches.retrieve(batch_id)
        counts = batch.request_counts
        total = int(counts.total) if counts else 0
        completed = int(counts.completed) if counts else 0
        failed = int(counts.failed) if counts else 0
        status = str(batch.status)
        phase: Phase = {
            "validating": "validating",
            "in_progress": "in_progress",
            "finalizing": "finalizing",
            "cancelling": "finalizing",
            "failed": "failed",
        }.get(status, "ended")  # type: ignore[assignment]
        error = None
        if phase == "failed":
            data = batch.errors.data if batch.errors and batch.errors.data else []
            first = data[0] if data else None
            error = (
                str(_attr(first, "code") or "failed"),
                str(_attr(first, "message") or "the batch failed validation"),
            )
        return BatchState(
            phase,
            status,
            total,
            completed + failed,
            failed,
            error,
            batch.output_file_id,
            batch.error_file_id,
        )

    def results(self, batch_id: str, state: BatchState) -> Iterator[Item]:
        for file_id in (state.output_file_id, state.error_file_id):
            if not file_id:
                continue
            text = self.reads.files.content(file_id).text
            for line in text.splitlines():
                if line.strip():
                    yield self._item(json.loads(line), batch_id)

    def _item(self, line: Mapping[str, Any], batch_id: str) -> Item:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        status = response.get("status_code")
        if status == 200:
            return Item(custom_id, self._type.model_validate(response.get("body")))
        if status is not None:
            body = response.get("body") or {}
            message = str((body.get("error") or {}).get("message") or body)
            retryable = status == 408 or status == 429 or status >= 500
            error = BatchRequestError(
                f"HTTP {status} in batch {batch_id}: {message}",
                code=str(status),
                batch_id=batch_id,
                retryable=retryable,
            )
            return Item(custom_id, error=error)
        failure = line.get("error") or {}
        code = str(failure.get("code") or "batch_error")
        error = BatchRequestError(
            f"{code} in batch {batch_id}: {failure.get('message') or 'no answer'}",
            code=code,
            batch_id=batch_id,
            retryable=code != "batch_cancelled",
        )
        return Item(custom_id, error=error)

    def cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(batch_id)


class AnthropicBatches(BatchApi):
    """Anthropic's Message Batches API: ``/v1/messages/batches``."""

    family = "anthropic"

    def __init__(self, client: Any, *, max_requests: int, max_bytes: int) -> None:
        self._connect(client, "anthropic")
        self.max_requests = max_requests
        self.max_bytes = max_bytes

    def line(self, custom_id: str, params: Mapping[str, Any]) -> bytes:
        request = {"custom_id": custom_id, "params": params}
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode() + b","

    def create(self, lines: Sequence[bytes], file_id: str | None, tag: str) -> str:
        requests = [json.loads(line[:-1]) for line in lines]
        return str(self.client.messages.batches.create(requests=requests).id)

    def find(self, file_id: str | None, tag: str, since: float, total: int) -> str | None:
        # Message batches carry no client tag: one created since the record with as many
        # requests is ours only if it is the only one.
        found = [
            batch
            for batch in self.reads.messages.batches.list(limit=100)
            if batch.created_at.timestamp() >= since - 60
            and sum(dict(batch.request_counts).values()) == total
        ]
        return str(found[0].id) if len(found) == 1 else None

    def retrieve(self, batch_id: str) -> BatchState:
        batch = self.reads.messages.batches.retrieve(batch_id)
        counts = batch.request_counts
        processing = int(counts.processing)
        failed = int(counts.errored) + int(counts.canceled) + int(counts.expired)
        total = processing + int(counts.succeeded) + failed
        status = str(batch.processing_status)
        phase: Phase = "ended" if status == "ended" else "in_progress"
        return BatchState(phase, status, total, total - processing, failed)

    def results(self, batch_id: str, state: BatchState) -> Iterator[Item]:
        for entry in self.reads.messages.batches.results(batch_id):
            result = entry.result
            kind = str(result.type)
            if kind == "succeeded":
                yield Item(entry.custom_id, result.message)
                continue
            if kind == "errored":
                inner = getattr(result.error, "error", None)
                error_type = str(getattr(inner, "type", "api_error"))
                message = str(getattr(inner, "message", "") or error_type)
                error = BatchRequestError(
                    f"{error_type} in batch {batch_id}: {message}",
                    code=error_type,
                    batch_id=batch_id,
                    retryable=error_type not in ("invalid_request_error",),
                )
            else:  # canceled, expired
                error = BatchRequestError(
                    f"{kind} in batch {batch_id}: the request got no answer",
                    code=f"batch_{'cancelled' if kind == 'canceled' else kind}",
                    batch_id=batch_id,
                    retryable=kind == "expired",
                )
            yield Item(entry.custom_id, error=error)

    def cancel(self, batch_id: str) -> None:
        self.client.messages.batches.cancel(batch_id)


def batch_api(preset: Any, max_requests: int | None, max_bytes: int | None) -> BatchApi:
    """The Batch API of a preset's provider and endpoint (with its documented limits,
    or lower ones the caller asks for)."""
    family = getattr(preset, "family", None)
    endpoint = tuple(getattr(preset, "endpoint", ()))
    if family == "openai" and endpoint in OpenAIBatches.URLS:
        return OpenAIBatches(
            preset.client,
            endpoint,
            max_requests=_cap(max_requests, 50_000, "max_requests"),
            max_bytes=_cap(max_bytes, 200 * 1_000_000, "max_bytes"),
        )
    if family == "anthropic" and endpoint == ("messages",):
        return AnthropicBatches(
            preset.client,
            max_requests=_cap(max_requests, 100_000, "max_requests"),
            max_bytes=_cap(max_bytes, 256 * 1_000_000, "max_bytes"),
        )
    raise ConfigurationError(
        f"batch=True works with the presets of a Batch API (OpenAI ChatCompletions, "
        f"Responses, Embeddings; Anthropic Messages), not {type(preset).__name__}."
    )


def _cap(value: int | None, documented: int, name: str) -> int:
    if value is None:
        return documented
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= documented:
        raise ConfigurationError(
            f"{name} must be an int from 1 to the provider's limit {documented:,}, got {value!r}."
        )
    return value
