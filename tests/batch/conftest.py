"""Fixtures of the batch tests: a fake clock, and a MockProvider whose batches run on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rate_limited.testing import BatchSettings, FakeClock, MockProvider

#: Batches that validate in 30 s, process a request each 0.5 s and finalize in 30 s.
FAST = BatchSettings(validating_seconds=30, seconds_per_request=0.5, finalizing_seconds=30)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    with MockProvider(batch=FAST, batch_clock=clock.time, output_tokens=8) as mp:
        yield mp
