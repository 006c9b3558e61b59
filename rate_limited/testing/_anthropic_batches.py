"""The MockProvider's Message Batches API, in Anthropic's wire format.

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

import json
import random
import re
import time
from typing import Any

from . import _anthropic_wire
from ._batch_jobs import Job, JobBook, RequestResult
from ._http import HttpRequest, HttpResponse, json_response
from ._wire import ApiCall, ApiError, json_object, rfc3339

__all__ = ["AnthropicBatches"]

#: "custom_id ... must be unique ... 1-64 characters, [a-zA-Z0-9_-]".
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class AnthropicBatches:
    """Answers ``/v1/messages/batches`` from a ``JobBook``."""

    def __init__(self, book: JobBook) -> None:
        self.book = book

    def handle(self, method: str, rest: list[str], request: HttpRequest) -> HttpResponse:
        """Answer ``/v1/messages/batches/{rest}``; raises ``ApiError`` for client errors."""
        if not rest:
            if method == "POST":
                return json_response(self._object(self._create(request), request))
            if method == "GET":
                jobs = [j for j in reversed(self.book.jobs.values()) if j.family == "anthropic"]
                data = [self._object(j, request) for j in jobs]
                first = data[0]["id"] if data else None
                last = data[-1]["id"] if data else None
                return json_response(
                    {"data": data, "has_more": False, "first_id": first, "last_id": last}
                )
        job = self.book.find(rest[0], "anthropic") if rest else None
        if job is not None and len(rest) == 1 and method == "GET":
            return json_response(self._object(job, request))
        if job is not None and rest[1:] == ["cancel"] and method == "POST":
            self.book.cancel(job)
            return json_response(self._object(job, request))
        if job is not None and rest[1:] == ["results"] and method == "GET":
            return self._results(job)
        raise ApiError(404, f"Invalid URL ({method} {request.path})")

    def _create(self, request: HttpRequest) -> Job:
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
        job = Job(self.book.new_id("msgbatch_"), "anthropic", [], self.book.now(), time.time())
        seen: set[str] = set()
        for index, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
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

    def _object(self, job: Job, request: HttpRequest) -> dict[str, Any]:
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
            "ended_at": rfc3339(job.created_wall + view.ended_at / scale)
            if ended and view.ended_at is not None
            else None,
            "created_at": rfc3339(job.created_wall),
            "expires_at": rfc3339(job.created_wall + window / scale),
            "archived_at": None,
            "cancel_initiated_at": None if job.cancelled_at is None else rfc3339(time.time()),
            "results_url": f"http://{host}/v1/messages/batches/{job.id}/results" if ended else None,
        }

    def _results(self, job: Job) -> HttpResponse:
        view = self.book.view(job, self.book.now())
        if view.phase != "ended":
            raise ApiError(404, f"Message batch {job.id} has not ended yet; no results.")
        lines = [_line(r) for r in self.book.results(job, view)]
        lines += [{"custom_id": c, "result": {"type": "canceled"}} for c in job.cancelled]
        lines += [{"custom_id": c, "result": {"type": "expired"}} for c in job.expired]
        random.Random(job.id).shuffle(lines)
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return HttpResponse(200, data, content_type="application/binary")


def _line(result: RequestResult) -> dict[str, Any]:
    if result.status == 200:
        succeeded = {"type": "succeeded", "message": result.body}
        return {"custom_id": result.custom_id, "result": succeeded}
    kind = "invalid_request_error" if result.status == 400 else "api_error"
    error = {"type": "error", "error": {"type": kind, "message": result.body.get("message", "")}}
    return {"custom_id": result.custom_id, "result": {"type": "errored", "error": error}}
