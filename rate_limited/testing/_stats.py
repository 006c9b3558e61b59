"""What the MockProvider saw: counters, bucket peaks and a log of every request.

Tests and benchmarks read these to check a client from the outside: that it never went
over a limit (``peak_usage`` stays at or below 1 and ``rejected`` at 0), how close to the
limit it ran, and — from the request log's body hashes — that it never sent the same
request twice. Recording happens on the server's thread and snapshots are taken from
others, so everything here is guarded by one lock and handed out as copies.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["MockProviderStats", "RequestLogEntry", "StatsRecorder"]


@dataclass(frozen=True)
class RequestLogEntry:
    """One request as the server saw it."""

    #: Arrival time on ``time.monotonic()`` (the same clock as ``loop.time()``).
    time: float
    #: "chat.completions", "embeddings", "responses", "messages", "models", or the path.
    endpoint: str
    model: str
    #: HTTP status sent, or None when no response was sent (hang, drop).
    status: int | None
    #: A stable hash of the request's JSON body (sha256 of its canonical JSON, 32 hex).
    body_hash: str
    prompt_tokens: int
    #: Output tokens generated (0 unless the request got a real answer).
    completion_tokens: int
    #: The injected fault ("error_500", "hang", "malformed", "drop"), or None.
    fault: str | None
    #: Output tokens the request reserved at admission (``max_tokens * n``; 0 if refused).
    reserved_output_tokens: int = 0


@dataclass(frozen=True)
class MockProviderStats:
    """A snapshot of the MockProvider's counters (since start or ``reset_stats()``)."""

    #: Every request received, whatever its outcome.
    requests: int = 0
    #: Requests that passed admission (including those then hit by a fault).
    admitted: int = 0
    #: Requests refused with 429 by the rate limiter.
    rejected: int = 0
    #: HTTP status -> count of responses sent.
    by_status: dict[int, int] = field(default_factory=dict)
    #: Fault kind -> count.
    faults: dict[str, int] = field(default_factory=dict)
    #: Prompt tokens of admitted requests.
    prompt_tokens: int = 0
    #: Output tokens generated for admitted requests that got an answer.
    completion_tokens: int = 0
    #: Output tokens charged at admission (``max_tokens * n``) by admitted requests.
    reserved_output_tokens: int = 0
    #: Bucket name (e.g. "openai.tokens", "anthropic.output_tokens[model]") -> highest
    #: used/limit seen right after an admission. It never exceeds 1, since the server
    #: refuses what does not fit (unless ``set_limits`` lowered a limit below the usage).
    peak_usage: dict[str, float] = field(default_factory=dict)
    #: ``time.monotonic()`` of the first and last admission.
    first_admission: float | None = None
    last_admission: float | None = None
    #: Most admitted requests being worked on at once.
    peak_in_flight: int = 0

    @property
    def admission_span(self) -> float:
        """Seconds between the first and the last admission (0 with fewer than two)."""
        if self.first_admission is None or self.last_admission is None:
            return 0.0
        return self.last_admission - self.first_admission


class StatsRecorder:
    """Thread-safe accumulator behind ``MockProvider.stats()`` and ``request_log``."""

    def __init__(self, *, log_requests: bool = True) -> None:
        self._lock = threading.Lock()
        self._log_requests = log_requests
        self._in_flight = 0
        self._reset()

    def _reset(self) -> None:
        self._requests = 0
        self._admitted = 0
        self._rejected = 0
        self._by_status: Counter[int] = Counter()
        self._faults: Counter[str] = Counter()
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._reserved_output = 0
        self._peak_usage: dict[str, float] = {}
        self._first: float | None = None
        self._last: float | None = None
        self._peak_in_flight = self._in_flight
        self._log: list[RequestLogEntry] = []

    def reset(self) -> None:
        """Forget everything recorded so far (requests in flight stay counted as such)."""
        with self._lock:
            self._reset()

    def admitted(self, when: float, usage: dict[str, float], reserved_output: int) -> None:
        """Count an admission at ``when`` with the buckets' usage fractions after it."""
        with self._lock:
            self._admitted += 1
            self._reserved_output += reserved_output
            if self._first is None:
                self._first = when
            self._last = when if self._last is None else max(self._last, when)
            peaks = self._peak_usage
            for name, fraction in usage.items():
                if fraction > peaks.get(name, 0.0):
                    peaks[name] = fraction
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def finished(self) -> None:
        """An admitted request is no longer being worked on."""
        with self._lock:
            self._in_flight -= 1

    def record(self, entry: RequestLogEntry, *, admitted: bool) -> None:
        """Count one request's outcome and log it."""
        with self._lock:
            self._requests += 1
            if entry.status is not None:
                self._by_status[entry.status] += 1
            if entry.status == 429 and not admitted:
                self._rejected += 1
            if entry.fault is not None:
                self._faults[entry.fault] += 1
            if admitted:
                self._prompt_tokens += entry.prompt_tokens
                self._completion_tokens += entry.completion_tokens
            if self._log_requests:
                self._log.append(entry)

    def snapshot(self) -> MockProviderStats:
        """The counters now, as an immutable copy."""
        with self._lock:
            return MockProviderStats(
                requests=self._requests,
                admitted=self._admitted,
                rejected=self._rejected,
                by_status=dict(sorted(self._by_status.items())),
                faults=dict(self._faults),
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                reserved_output_tokens=self._reserved_output,
                peak_usage=dict(self._peak_usage),
                first_admission=self._first,
                last_admission=self._last,
                peak_in_flight=self._peak_in_flight,
            )

    def log(self) -> list[RequestLogEntry]:
        """A copy of the request log, in the order outcomes were decided."""
        with self._lock:
            return list(self._log)
