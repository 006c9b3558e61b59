"""Test helpers for users and for this package's own tests.

* ``FakeClock``: virtual time for a Runner (``Runner(..., clock=FakeClock())``), so that
  quota windows of minutes or days cost no real time in a test.
* ``MockProvider``: a real HTTP server on 127.0.0.1 speaking the OpenAI and Anthropic wire
  formats, enforcing RPM/TPM limits with its own accounting (never the package's ledger),
  with configurable latency, output lengths and seeded faults. The real ``openai`` and
  ``anthropic`` clients work against it via ``base_url``; ``rate-limited demo`` uses it.
"""

from __future__ import annotations

from rate_limited.testing.clock import FakeClock
from rate_limited.testing.mock_provider import (
    BatchSettings,
    BatchStats,
    Faults,
    Limits,
    MockProvider,
    MockProviderStats,
    RequestLogEntry,
    count_tokens,
    prompt_digest,
)

__all__ = [
    "BatchSettings",
    "BatchStats",
    "FakeClock",
    "Faults",
    "Limits",
    "MockProvider",
    "MockProviderStats",
    "RequestLogEntry",
    "count_tokens",
    "prompt_digest",
]
