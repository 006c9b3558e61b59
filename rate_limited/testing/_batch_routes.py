"""The MockProvider's batch endpoints, in each provider's wire format.

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

Anthropic (docs.anthropic.com/en/api/creating-message-batches and the pages beside it):

* ``POST /v1/messages/batches`` (``{"requests": [{"custom_id", "params"}]}``),
  ``GET /v1/messages/batches/{id}``, ``GET /v1/messages/batches/{id}/results`` (JSONL),
  ``POST /v1/messages/batches/{id}/cancel``, ``GET /v1/messages/batches``.

  ``processing_status``: in_progress → (canceling →) ended; ``request_counts``
  ``{processing, succeeded, errored, canceled, expired}``; ``results_url`` once ended.
  Each result is ``{"custom_id", "result": {"type": "succeeded", "message"} |
  {"type": "errored", "error"} | {"type": "canceled"} | {"type": "expired"}}``, in no
  particular order ("Results are not guaranteed to be in the same order as requests").
  Params are validated per request, after creation ("validation of params happens
  asynchronously"): a bad one is an errored result, not a failed batch.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import _anthropic_wire, _openai_wire
from ._batch_jobs import Job, JobBook, JobView, RequestResult
from ._http import HttpRequest, HttpResponse
from ._wire import ApiCall, ApiError, Endpoint, json_object

__all__ = ["BatchRoutes", "is_batch_path"]

_OPENAI_ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat.completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
#: Anthropic: "custom_id ... must be unique ... 1-64 characters, [a-zA-Z0-9_-]".
_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PREFIXES = ("/v1/files", "/v1/batches", "/v1/messages/batches")


def is_batch_path(path: str) -> bool:
    """Whether ``path`` belongs to the batch endpoints."""
    return any(path == p or path.startswith(p + "/") for p in _PREFIXES)


def _json(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, separators=(",", ":")).encode())


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


class BatchRoutes:
    """Answers the batch endpoints from a ``JobBook``."""

    def __init__(self, book: JobBook, default_max_tokens: int) -> None:
        self.book = book
        self._default_max_tokens = default_max_tokens

    def handle(self, request: HttpRequest, anthropic: bool) -> HttpResponse:
        """Answer one request to a batch path; raises ``ApiError`` for client errors."""
        path = request.path.rstrip("/")
        parts = path.split("/")[2:]  # after "/v1"
        method = request.method
        if parts[0] == "files":
            return self._files(method, parts[1:], request)
        if parts[0] == "batches":
            return self._openai(method, parts[1:], request)
        return self._anthropic(method, parts[2:], request)

    # -- OpenAI files ------------------------------------------------------------------------
    def _files(self, method: str, rest: list[str], request: HttpRequest) -> HttpResponse:
        if not rest and method == "POST":
            return _json(self._upload(request))
        if len(rest) in (1, 2) and method == "GET":
            found = self.book.files.get(rest[0])
            if found is None:
                raise ApiError(404, f"No such File object: {rest[0]}", param="id")
            if len(rest) == 2 and rest[1] == "content":
                return HttpResponse(200, found[2], content_type="application/octet-stream")
            if len(rest) == 1:
                return _json(self._file_object(rest[0]))
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
                return _json(self._openai_object(self._openai_create(request.body)))
            if method == "GET":
                return _json(self._openai_list(request.query))
        job = self._job(rest[0], "openai") if rest else None
        if job is not None and len(rest) == 1 and method == "GET":
            return _json(self._openai_object(job))
        if job is not None and rest[1:] == ["cancel"] and method == "POST":
            self.book.cancel(job)
            return _json(self._openai_object(job))
        raise ApiError(404, f"Invalid URL ({method} {request.path})")

    def _job(self, job_id: str, family: str) -> Job:
        job = self.book.jobs.get(job_id)
        if job is None or job.family != family:
            what = "Batch" if family == "openai" else "message batch"
            raise ApiError(404, f"No {what} found with id '{job_id}'.")
        return job

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
            _wall(),
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
            "cancelling_at": None if job.cancelled_at is None else int(_wall()),
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

    # -- Anthropic message batches -----------------------------------------------------------
    def _anthropic(self, method: str, rest: list[str], request: HttpRequest) -> HttpResponse:
        if not rest:
            if method == "POST":
                return _json(self._anthropic_object(self._anthropic_create(request), request))
            if method == "GET":
                jobs = [j for j in reversed(self.book.jobs.values()) if j.family == "anthropic"]
                data = [self._anthropic_object(j, request) for j in jobs]
                first = data[0]["id"] if data else None
                last = data[-1]["id"] if data else None
                return _json({"data": data, "has_more": False, "first_id": first, "last_id": last})
        job = self._job(rest[0], "anthropic") if rest else None
        if job is not None and len(rest) == 1 and method == "GET":
            return _json(self._anthropic_object(job, request))
        if job is not None and rest[1:] == ["cancel"] and method == "POST":
            self.book.cancel(job)
            return _json(self._anthropic_object(job, request))
        if job is not None and rest[1:] == ["results"] and method == "GET":
            return self._anthropic_results(job)
        raise ApiError(404, f"Invalid URL ({method} {request.path})")

    def _anthropic_create(self, request: HttpRequest) -> Job:
        settings = self.book.settings
        if len(request.body) > settings.anthropic_max_bytes:
            raise ApiError(
                413,
                f"Request exceeds the maximum allowed size of {settings.anthropic_max_bytes} "
                "bytes for a Message Batch.",
            )
        requests = json_object(request.body).get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "requests: List should have at least 1 item", param="requests")
        if len(requests) > settings.anthropic_max_requests:
            raise ApiError(
                400,
                f"requests: List should have at most {settings.anthropic_max_requests} items, "
                f"not {len(requests)}",
            )
        job = Job(self.book.new_id("msgbatch_"), "anthropic", [], self.book.now(), _wall())
        seen: set[str] = set()
        for index, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _ANTHROPIC_CUSTOM_ID.match(custom_id):
                raise ApiError(
                    400, f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
            if custom_id in seen:
                raise ApiError(400, f"Duplicate custom_id {custom_id!r} in requests.")
            seen.add(custom_id)
            params = item.get("params")
            call: ApiCall | ApiError
            try:
                if not isinstance(params, dict):
                    raise ApiError(400, "params: Input should be a valid dictionary")
                call = _anthropic_wire.parse(params)
            except ApiError as error:
                call = error
            job.requests.append((custom_id, call))
        return self.book.add(job)

    def _anthropic_object(self, job: Job, request: HttpRequest) -> dict[str, Any]:
        view = self.book.view(job, self.book.now())
        ended = view.phase == "ended"
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            results = self.book.results(job, view)
            counts["succeeded"] = sum(1 for r in results if r.status == 200)
            counts["errored"] = len(results) - counts["succeeded"]
            counts["canceled"] = len(job.cancelled)
            counts["expired"] = len(job.expired)
        else:
            counts["processing"] = len(job.requests)
        if ended:
            status = "ended"
        elif job.cancelled_at is not None:
            status = "canceling"
        else:
            status = "in_progress"
        host = request.headers.get("host", "127.0.0.1")
        window = self.book.settings.completion_window_seconds
        scale = self.book.settings.time_scale
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _rfc3339(job.created_wall + view.ended_at / scale)
            if ended and view.ended_at is not None
            else None,
            "created_at": _rfc3339(job.created_wall),
            "expires_at": _rfc3339(job.created_wall + window / scale),
            "archived_at": None,
            "cancel_initiated_at": None if job.cancelled_at is None else _rfc3339(_wall()),
            "results_url": f"http://{host}/v1/messages/batches/{job.id}/results" if ended else None,
        }

    def _anthropic_results(self, job: Job) -> HttpResponse:
        view = self.book.view(job, self.book.now())
        if view.phase != "ended":
            raise ApiError(404, f"Message batch {job.id} has not ended yet; no results.")
        lines = [_anthropic_line(r) for r in self.book.results(job, view)]
        lines += [{"custom_id": c, "result": {"type": "canceled"}} for c in job.cancelled]
        lines += [{"custom_id": c, "result": {"type": "expired"}} for c in job.expired]
        random.Random(job.id).shuffle(lines)
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return HttpResponse(200, data, content_type="application/binary")


def _anthropic_line(result: RequestResult) -> dict[str, Any]:
    if result.status == 200:
        succeeded = {"type": "succeeded", "message": result.body}
        return {"custom_id": result.custom_id, "result": succeeded}
    kind = "invalid_request_error" if result.status == 400 else "api_error"
    error = {"type": "error", "error": {"type": kind, "message": result.body.get("message", "")}}
    return {"custom_id": result.custom_id, "result": {"type": "errored", "error": error}}


def _wall() -> float:
    return time.time()


def _at(job: Job, scale: float) -> Callable[[float | None], int | None]:
    """Epoch seconds of an offset in ``job``'s provider time, which runs ``scale`` times
    faster than the clock (None stays None)."""

    def at(offset: float | None) -> int | None:
        return None if offset is None else int(job.created_wall + offset / scale)

    return at
