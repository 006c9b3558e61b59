"""The MockProvider's batch endpoints, in each provider's wire format: OpenAI's here.

OpenAI (platform.openai.com/docs/api-reference/batch, /files):

* ``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``;
* ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window="24h"``,
  ``metadata``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
  ``GET /v1/batches`` (``limit``, ``after``, newest first).

  Status: validating → in_progress → finalizing → completed, or failed (validation),
  expired (the window passed: "Batches that do not complete in time eventually move to
  an expired state; unfinished requests within that batch are cancelled, and any
  responses to completed requests are made available via the batch's output file"),
  cancelling → cancelled. ``request_counts`` is ``{total, completed, failed}``. The
  output file holds the 200 answers and the error file everything else (``response``
  with the status and error body, or ``error`` with ``batch_expired`` /
  ``batch_cancelled``), each line keyed by ``custom_id`` and in no particular order ("the
  output line order may not match the input line order. Instead of relying on order ...
  use the custom_id field").

Anthropic's message batches are ``_anthropic_batches.AnthropicBatches``; the routes of
both share the ``JobBook`` (``_batch_jobs``).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import time
from collections.abc import Callable
from typing import Any

from . import _openai_wire
from ._anthropic_batches import AnthropicBatches
from ._batch_jobs import Job, JobBook, JobView
from ._http import HttpRequest, HttpResponse, json_response
from ._wire import ApiCall, ApiError, Endpoint, json_object

__all__ = ["BatchRoutes", "is_batch_path"]

_OPENAI_ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat.completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
_PREFIXES = ("/v1/files", "/v1/batches", "/v1/messages/batches")


def is_batch_path(path: str) -> bool:
    """Whether ``path`` belongs to the batch endpoints."""
    return any(path == p or path.startswith(p + "/") for p in _PREFIXES)


class BatchRoutes:
    """Answers the batch endpoints from a ``JobBook``."""

    def __init__(self, book: JobBook, default_max_tokens: int) -> None:
        self.book = book
        self._default_max_tokens = default_max_tokens
        self._anthropic = AnthropicBatches(book)

    def handle(self, request: HttpRequest, anthropic: bool) -> HttpResponse:
        """Answer one request to a batch path; raises ``ApiError`` for client errors."""
        path = request.path.rstrip("/")
        parts = path.split("/")[2:]  # after "/v1"
        method = request.method
        if parts[0] == "files":
            return self._files(method, parts[1:], request)
        if parts[0] == "batches":
            return self._openai(method, parts[1:], request)
        return self._anthropic.handle(method, parts[2:], request)

    # -- OpenAI files ------------------------------------------------------------------------
    def _files(self, method: str, rest: list[str], request: HttpRequest) -> HttpResponse:
        if not rest and method == "POST":
            return json_response(self._upload(request))
        if len(rest) in (1, 2) and method == "GET":
            found = self.book.files.get(rest[0])
            if found is None:
                raise ApiError(404, f"No such File object: {rest[0]}", param="id")
            if len(rest) == 2 and rest[1] == "content":
                return HttpResponse(200, found[2], content_type="application/octet-stream")
            if len(rest) == 1:
                return json_response(self._file_object(rest[0]))
        raise ApiError(404, f"Invalid URL ({method} {request.path})")

    def _file_object(self, file_id: str) -> dict[str, Any]:
        filename, purpose, content, created = self.book.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": created,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def _upload(self, request: HttpRequest) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "Files must be uploaded as multipart/form-data.")
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (part.get_filename(), payload)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
        filename, content = fields["file"]
        limit = self.book.settings.openai_max_file_bytes
        if purpose == "batch" and len(content) > limit:
            raise ApiError(
                400,
                f"File is too large: {len(content)} bytes; a batch input file can be up to "
                f"{limit} bytes.",
                param="file",
            )
        return self._file_object(self.book.add_file(filename or "upload", purpose, content))

    # -- OpenAI batches ----------------------------------------------------------------------
    def _openai(self, method: str, rest: list[str], request: HttpRequest) -> HttpResponse:
        if not rest:
            if method == "POST":
                return json_response(self._openai_object(self._openai_create(request.body)))
            if method == "GET":
                return json_response(self._openai_list(request.query))
        job = self.book.find(rest[0], "openai") if rest else None
        if job is not None and len(rest) == 1 and method == "GET":
            return json_response(self._openai_object(job))
        if job is not None and rest[1:] == ["cancel"] and method == "POST":
            self.book.cancel(job)
            return json_response(self._openai_object(job))
        raise ApiError(404, f"Invalid URL ({method} {request.path})")

    def _openai_create(self, raw: bytes) -> Job:
        body = json_object(raw)
        file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        if body.get("completion_window") != "24h":
            raise ApiError(400, "completion_window must be '24h'.", param="completion_window")
        if endpoint not in _OPENAI_ENDPOINTS:
            raise ApiError(400, f"Invalid endpoint {endpoint!r}.", param="endpoint")
        found = self.book.files.get(file_id) if isinstance(file_id, str) else None
        if found is None:
            raise ApiError(400, f"No such File object: {file_id}", param="input_file_id")
        if found[1] != "batch":
            raise ApiError(400, "The input file must have purpose 'batch'.", param="input_file_id")
        job = Job(
            self.book.new_id("batch_"),
            "openai",
            [],
            self.book.now(),
            time.time(),
            endpoint=endpoint,
            input_file_id=file_id,  # type: ignore[arg-type]
            metadata=body.get("metadata"),
        )
        self._openai_validate(job, found[2])
        return self.book.add(job)

    def _openai_validate(self, job: Job, content: bytes) -> None:
        """Parse the input file into the job's requests, or fail it with its error."""
        settings = self.book.settings
        lines = [line for line in content.decode("utf-8", "replace").splitlines() if line.strip()]
        seen: set[str] = set()
        models: set[str] = set()
        tokens = 0
        errors = job.errors

        def fail(code: str, message: str, line: int | None = None) -> None:
            errors.append({"code": code, "message": message, "param": None, "line": line})

        if not lines:
            fail("empty_file", "The batch input file is empty.")
        if len(lines) > settings.openai_max_requests:
            fail(
                "too_many_requests",
                f"The batch input file has {len(lines)} requests; a batch may include up to "
                f"{settings.openai_max_requests}.",
            )
        for number, line in enumerate(lines, 1):
            if errors:
                break
            try:
                item = json.loads(line)
            except ValueError:
                fail("invalid_json_line", "This line is not parseable as valid JSON.", number)
                break
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not custom_id:
                fail("missing_custom_id", "Each request needs a custom_id.", number)
            elif custom_id in seen:
                fail("duplicate_custom_id", f"The custom_id {custom_id!r} is not unique.", number)
            elif item.get("url") != job.endpoint or item.get("method") != "POST":
                fail(
                    "mismatched_endpoint",
                    f"The url and method of each request must be POST {job.endpoint}.",
                    number,
                )
            elif not isinstance(item.get("body"), dict):
                fail("invalid_request", "Each request needs a JSON object body.", number)
            if errors:
                break
            seen.add(custom_id)  # type: ignore[arg-type]
            body = item["body"]
            model = body.get("model")
            if isinstance(model, str):
                models.add(model)
            if len(models) > 1:
                fail(
                    "mismatched_model",
                    "Each input file can only include requests to a single model; found "
                    f"{sorted(models)}.",
                    number,
                )
                break
            call: ApiCall | ApiError
            try:
                call = _openai_wire.parse(
                    _OPENAI_ENDPOINTS[job.endpoint], body, self._default_max_tokens
                )
                tokens += call.prompt_tokens
            except ApiError as error:
                call = error
            job.requests.append((custom_id, call))  # type: ignore[arg-type]
        job.model = next(iter(models), "")
        job.enqueued_tokens = tokens
        limit = settings.enqueued_limit(job.model)
        if not errors and limit is not None:
            held = self.book.enqueued(job.model)
            if held + tokens > limit:
                fail(
                    "token_limit_exceeded",
                    f"Enqueued token limit reached for {job.model}. Limit: {limit:,.0f} "
                    f"enqueued tokens. Please try again once some in_progress batches have "
                    "been completed.",
                )
        if errors:
            job.requests = []

    def _openai_object(self, job: Job) -> dict[str, Any]:
        view = self.book.view(job, self.book.now())
        at = _at(job, self.book.settings.time_scale)
        status = {
            "validating": "validating",
            "in_progress": "in_progress",
            "finalizing": "cancelling" if view.cancelling else "finalizing",
            "failed": "failed",
        }.get(view.phase)
        total = len(job.requests)
        failed = 0
        if view.phase == "ended":
            status = "cancelled" if view.cancelling else "expired" if view.expired else "completed"
            self._openai_files(job, view)
            failed = total - sum(1 for r in job.results or () if r.status == 200)
        completed = total - failed if view.phase == "ended" else view.done
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": job.endpoint,
            "errors": {"object": "list", "data": job.errors} if job.errors else None,
            "input_file_id": job.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
            "created_at": int(job.created_wall),
            "in_progress_at": at(view.in_progress_at),
            "expires_at": at(self.book.settings.completion_window_seconds),
            "finalizing_at": at(view.finalizing_at),
            "completed_at": at(view.ended_at if status == "completed" else None),
            "failed_at": at(self.book.settings.validating_seconds if job.errors else None),
            "expired_at": at(view.ended_at if status == "expired" else None),
            "cancelling_at": None if job.cancelled_at is None else int(time.time()),
            "cancelled_at": at(view.ended_at if status == "cancelled" else None),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "metadata": job.metadata,
        }

    def _openai_files(self, job: Job, view: JobView) -> None:
        """Write the output and error files of an ended batch (once)."""
        if job.results is not None:
            return
        results = self.book.results(job, view)
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for result in results:
            line = {
                "id": f"batch_req_{result.request_id[4:]}",
                "custom_id": result.custom_id,
                "response": {
                    "status_code": result.status,
                    "request_id": result.request_id,
                    "body": result.body if result.status == 200 else {"error": result.body},
                },
                "error": None,
            }
            (output if result.status == 200 else errors).append(line)
        reason = ("batch_cancelled", "This request was cancelled with its batch.")
        if not view.cancelling:
            reason = (
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
        for custom_id in job.cancelled or job.expired:
            errors.append(
                {
                    "id": f"batch_req_{custom_id}",
                    "custom_id": custom_id,
                    "response": None,
                    "error": {"code": reason[0], "message": reason[1]},
                }
            )
        rng = random.Random(job.id)  # any order: clients must map by custom_id
        for lines, attr in ((output, "output_file_id"), (errors, "error_file_id")):
            if lines:
                rng.shuffle(lines)
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                name = f"{job.id}_{attr}.jsonl"
                setattr(job, attr, self.book.add_file(name, "batch_output", data))

    def _openai_list(self, query: str) -> dict[str, Any]:
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        jobs = [j for j in reversed(self.book.jobs.values()) if j.family == "openai"]
        after = params.get("after")
        if after:
            ids = [j.id for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit") or 20)
        page = [self._openai_object(j) for j in jobs[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(jobs) > limit,
        }


def _at(job: Job, scale: float) -> Callable[[float | None], int | None]:
    """Epoch seconds of an offset in ``job``'s provider time, which runs ``scale`` times
    faster than the clock (None stays None)."""

    def at(offset: float | None) -> int | None:
        return None if offset is None else int(job.created_wall + offset / scale)

    return at
