"""The MockProvider's batch jobs: their limits, their clock and their life cycle.

A job is the part both Batch APIs share: a list of requests, each with its ``custom_id``,
processed one after the other at ``seconds_per_request`` of *provider time* each, after a
validation phase and before a finalizing one. Provider time runs ``time_scale`` times
faster than the mock's clock, so a 24-hour completion window passes in 24 s at
``time_scale=3600`` (or instantly on a ``FakeClock`` advanced by the test). Nothing runs in
the background: a job's state is computed from the clock whenever it is asked for, so
the same clock readings always give the same answers.

Each request is answered exactly as the online endpoint answers the same body on its
first attempt (same seed, same text, same usage), so a batch and an online run can be
compared call by call. A per-request failure is either a body the online endpoint would
refuse (400) or a seeded ``error_500`` fault; requests the window did not reach expire.

The limits, as the providers document them (checked by the routes, ``_batch_routes``):

* OpenAI (platform.openai.com/docs/guides/batch, "Rate limits"): "Per-batch limits: A
  single batch may include up to 50,000 requests, and a batch input file can be up to
  200 MB in size"; "Enqueued prompt tokens per model: Each model has a maximum number of
  enqueued prompt tokens allowed for batch processing" (the "Batch queue limit" column
  of the rate-limit tables, e.g. 90,000 for gpt-4o at tier 1); and "each input file can
  only include requests to a single model".
* Anthropic (docs.anthropic.com/en/docs/build-with-claude/batch-processing, "Batch
  limitations"): "A Message Batch is limited to either 100,000 Message requests or 256 MB
  in size, whichever is reached first", and "Your batch will expire if processing does
  not complete within 24 hours".
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._faults import Faults, draw_fault
from ._outputs import OutputModel
from ._wire import ApiCall, ApiError, body_hash

__all__ = ["BatchSettings", "BatchStats", "Job", "JobBook", "RequestResult"]

Phase = Literal["validating", "in_progress", "finalizing", "ended", "failed"]


@dataclass(frozen=True)
class BatchSettings:
    """The MockProvider's batch limits and timing (provider seconds unless said otherwise)."""

    #: OpenAI: most requests in one batch input file.
    openai_max_requests: int = 50_000
    #: OpenAI: largest batch input file, in bytes ("up to 200 MB").
    openai_max_file_bytes: int = 200 * 1_000_000
    #: OpenAI: most prompt tokens enqueued per model across unfinished batches (None: no
    #: limit; a number applies to every model; a mapping gives it per model name).
    openai_enqueued_tokens: float | Mapping[str, float] | None = None
    #: Anthropic: most requests in one Message Batch.
    anthropic_max_requests: int = 100_000
    #: Anthropic: largest Message Batch request body, in bytes ("256 MB").
    anthropic_max_bytes: int = 256 * 1_000_000
    #: Seconds a batch spends validating before its requests are processed.
    validating_seconds: float = 60.0
    #: Seconds of processing per request (one after the other).
    seconds_per_request: float = 1.0
    #: Seconds a batch spends finalizing (writing its files) after the last request.
    finalizing_seconds: float = 60.0
    #: The completion window: requests not processed by then expire.
    completion_window_seconds: float = 24 * 3600.0
    #: Provider seconds per second of the mock's clock (3600: a day in 24 s).
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("validating_seconds", "seconds_per_request", "finalizing_seconds"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.time_scale > 0 or not self.completion_window_seconds > 0:
            raise ValueError("time_scale and completion_window_seconds must be > 0")

    def enqueued_limit(self, model: str) -> float | None:
        """The enqueued-token limit of ``model`` (None: unlimited)."""
        limit = self.openai_enqueued_tokens
        if isinstance(limit, Mapping):
            value = limit.get(model)
            return None if value is None else float(value)
        return None if limit is None else float(limit)


@dataclass(frozen=True)
class BatchStats:
    """What the batch endpoints saw (since start or ``reset_stats()``)."""

    #: Files uploaded to ``/v1/files`` (every purpose).
    files_uploaded: int = 0
    #: Batches created, by family ("openai", "anthropic"), failed ones included.
    batches_created: Mapping[str, int] = field(default_factory=dict)
    #: Requests in the batches created.
    requests_submitted: int = 0
    #: Batches cancelled by the client.
    batches_cancelled: int = 0
    #: Batches that failed validation (OpenAI), by error code.
    batches_failed: Mapping[str, int] = field(default_factory=dict)


@dataclass
class RequestResult:
    """How one request of a job ended: a 200 body, or an error status and body."""

    custom_id: str
    status: int
    body: dict[str, Any]
    request_id: str


@dataclass
class Job:
    """One batch as the provider holds it."""

    id: str
    family: Literal["openai", "anthropic"]
    #: ``(custom_id, parsed call or the client error its body gets)`` in input order.
    requests: list[tuple[str, ApiCall | ApiError]]
    created: float  # the mock's clock
    created_wall: float  # epoch seconds, for the timestamps the API shows
    endpoint: str = ""
    model: str = ""
    input_file_id: str = ""
    metadata: dict[str, Any] | None = None
    #: Validation errors that fail the whole batch (OpenAI), as ``{"code", "message"}``.
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Prompt tokens the batch holds in its model's queue while unfinished.
    enqueued_tokens: int = 0
    cancelled_at: float | None = None
    #: Filled once the job has ended (computed at most once).
    results: list[RequestResult] | None = None
    #: Custom ids of the requests the window did not reach, or cancelled before.
    expired: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True)
class JobView:
    """A job's state at one instant of provider time."""

    phase: Phase
    #: Requests processed so far (answered or errored).
    done: int
    #: Seconds of provider time since creation.
    elapsed: float
    #: Whether it ended by the completion window (OpenAI "expired").
    expired: bool
    cancelling: bool
    #: Provider seconds since creation at which each phase began (None: not reached).
    in_progress_at: float | None
    finalizing_at: float | None
    ended_at: float | None


class JobBook:
    """Every job and file of one MockProvider; thread-safe (tests read stats from others)."""

    def __init__(
        self,
        settings: BatchSettings,
        clock: Callable[[], float],
        outputs: OutputModel,
        faults: Callable[[], Faults],
        seed: int,
        answer: Callable[[ApiCall, random.Random, str], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._outputs = outputs
        self._faults = faults
        self._seed = seed
        self._answer = answer
        self._lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        #: file id -> (filename, purpose, bytes, created epoch)
        self.files: dict[str, tuple[str, str, bytes, int]] = {}
        self._counter = 0
        self._attempts: dict[str, int] = {}
        self._stats = BatchStats()
        #: ``(model, prompt tokens, completion tokens)`` of every answered batch request
        #: (since ``reset_stats()``), for ``billed_usd``.
        self._billed: list[tuple[str, int, int]] = []

    def find(self, job_id: str, family: str) -> Job:
        """The job ``job_id`` of ``family`` ("openai" or "anthropic"); else the 404 its
        provider answers."""
        job = self.jobs.get(job_id)
        if job is None or job.family != family:
            what = "Batch" if family == "openai" else "message batch"
            raise ApiError(404, f"No {what} found with id '{job_id}'.")
        return job

    # -- ids, files, stats ------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            counter = self._counter
        digest = hashlib.sha256(f"{self._seed}:{prefix}:{counter}".encode()).hexdigest()[:24]
        return f"{prefix}{digest}"

    def add_file(self, filename: str, purpose: str, content: bytes) -> str:
        file_id = self.new_id("file-")
        with self._lock:
            self.files[file_id] = (filename, purpose, content, int(time.time()))
            if purpose in ("batch", "user_data", "assistants", "fine-tune", "vision", "evals"):
                self._bump(files_uploaded=self._stats.files_uploaded + 1)
        return file_id

    def _bump(self, **changes: Any) -> None:
        self._stats = dataclasses.replace(self._stats, **changes)

    def stats(self) -> BatchStats:
        with self._lock:
            return self._stats

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = BatchStats()
            self._billed = []

    def billed_usage(self) -> list[tuple[str, int, int]]:
        """``(model, prompt tokens, completion tokens)`` of every batch request answered
        (HTTP 200) by the jobs that have ended, downloaded or not: the provider bills a
        batch's answers whether or not the client fetches them. A job still running is
        billed once it ends (the mock computes a job's answers at its end)."""
        now = self.now()
        for job in list(self.jobs.values()):
            view = self.view(job, now)
            if view.phase == "ended":
                self.results(job, view)
        with self._lock:
            return list(self._billed)

    # -- jobs --------------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def enqueued(self, model: str) -> int:
        """Prompt tokens held by the unfinished OpenAI batches of ``model``."""
        now = self.now()
        return sum(
            job.enqueued_tokens
            for job in list(self.jobs.values())
            if job.family == "openai"
            and job.model == model
            and not job.errors
            and self.view(job, now).phase != "ended"
        )

    def add(self, job: Job) -> Job:
        with self._lock:
            self.jobs[job.id] = job
            created = dict(self._stats.batches_created)
            created[job.family] = created.get(job.family, 0) + 1
            self._bump(
                batches_created=created,
                requests_submitted=self._stats.requests_submitted + len(job.requests),
            )
            if job.errors:
                failed = dict(self._stats.batches_failed)
                code = str(job.errors[0]["code"])
                failed[code] = failed.get(code, 0) + 1
                self._bump(batches_failed=failed)
        return job

    def cancel(self, job: Job) -> None:
        if job.cancelled_at is None and self.view(job, self.now()).phase in (
            "validating",
            "in_progress",
        ):
            job.cancelled_at = self.now()
            with self._lock:
                self._bump(batches_cancelled=self._stats.batches_cancelled + 1)

    def view(self, job: Job, now: float) -> JobView:
        """Where ``job`` is at clock time ``now``."""
        s = self.settings
        elapsed = max(0.0, (now - job.created) * s.time_scale)
        validating = s.validating_seconds
        if job.errors:
            phase: Phase = "failed" if elapsed >= validating else "validating"
            return JobView(phase, 0, elapsed, False, False, None, None, None)
        total = len(job.requests)
        window = s.completion_window_seconds
        stop = None if job.cancelled_at is None else (job.cancelled_at - job.created) * s.time_scale
        # Processing ends at the last request, the window or the cancellation.
        natural = validating + total * s.seconds_per_request
        end = min(natural, window)
        expired = natural > window
        if stop is not None and stop < end:
            end = max(stop, 0.0)
        processed_at = min(elapsed, end)
        per = s.seconds_per_request
        if per <= 0:
            done = total if processed_at >= validating else 0
        elif processed_at <= validating:
            done = 0
        else:
            done = min(total, int((processed_at - validating) / per + 1e-9))
        if elapsed < min(validating, end) and stop is None:
            return JobView("validating", 0, elapsed, False, False, None, None, None)
        in_progress_at = validating if end >= validating else None
        if elapsed < end:
            return JobView("in_progress", done, elapsed, False, False, in_progress_at, None, None)
        if elapsed < end + s.finalizing_seconds:
            return JobView(
                "finalizing", done, elapsed, False, stop is not None, in_progress_at, end, None
            )
        ended_at = end + s.finalizing_seconds
        cancelling = stop is not None and stop < natural
        return JobView(
            "ended",
            done,
            elapsed,
            expired and not cancelling,
            cancelling,
            in_progress_at,
            end,
            ended_at,
        )

    def results(self, job: Job, view: JobView) -> list[RequestResult]:
        """The results of an ended job: the first ``view.done`` requests answered, the
        rest expired or cancelled (computed once)."""
        if job.results is not None:
            return job.results
        results = []
        for custom_id, call in job.requests[: view.done]:
            results.append(self._result(custom_id, call))
        billed = [_billed(r.body) for r in results if r.status == 200]
        with self._lock:
            self._billed.extend(b for b in billed if b is not None)
        rest = [custom_id for custom_id, _ in job.requests[view.done :]]
        if view.cancelling:
            job.cancelled = rest
        else:
            job.expired = rest
        job.results = results
        return results

    def _result(self, custom_id: str, call: ApiCall | ApiError) -> RequestResult:
        if isinstance(call, ApiError):
            ident = hashlib.sha256(f"{self._seed}:{custom_id}:error".encode()).hexdigest()[:24]
            error = {"message": call.message, "type": "invalid_request_error", "param": call.param}
            return RequestResult(custom_id, call.status, error, f"req_{ident}")
        # A body's first batch is answered as the online endpoint's first attempt of it (the
        # same rng, so the same answer); a later batch of it draws afresh, as a retry does.
        key = f"{self._seed}:{call.endpoint}:{body_hash(call.body)}"
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        rng = random.Random(f"{key}:{attempt}")
        ident = hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:24]
        if draw_fault(self._faults(), rng) is not None:
            error = {
                "message": "The server had an error processing your request.",
                "type": "server_error",
            }
            return RequestResult(custom_id, 500, error, f"req_{ident}")
        return RequestResult(custom_id, 200, self._answer(call, rng, ident), f"req_{ident}")


def _billed(body: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """The model and tokens an answer's usage reports (OpenAI's or Anthropic's names)."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return str(body.get("model", "")), int(prompt or 0), int(completion or 0)
