"""Fixtures of the batch tests: a fake clock, and a MockProvider whose batches run on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


#: The sync SDK clients a test made (``chat()`` of test_runner, used by every batch test
#: module), closed after it. An SDK client sits in a reference cycle (its resources point
#: back at it): left open, only the collector frees it, and whether its ``__del__`` closes
#: the pooled connection before the socket's own finalizer reports it unclosed is the
#: collector's order (on 3.13 it sometimes is not: an unclosed-socket ResourceWarning at
#: the session's end, which names no test).
CLIENTS: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while CLIENTS:
        CLIENTS.pop().close()
