"""Fixtures of the shared-ledger tests: a real redis-server (see tests/stores/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.stores.conftest import redis_url  # noqa: F401 - the session's redis-server


@pytest.fixture
def ledger_url(redis_url: str) -> Iterator[str]:  # noqa: F811
    """A URL naming a fresh shared ledger (its keys are deleted afterwards)."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield f"{redis_url}?name={name}&lease=1"
    from rate_limited.ledgers.inspect import reset

    reset(f"{redis_url}?name={name}")
