"""``rate_limited._claim_holders``: the holders of the claims in a worker's way, proven
ended only by their life lock (a real process killed with SIGKILL), and the notice of the
calls waiting on them."""

from __future__ import annotations

import pytest

from rate_limited._claim_holders import ClaimHolders
from rate_limited._holder import new_holder
from rate_limited.stores.base import ClaimState
from rate_limited.stores.memory import MemoryStore
from tests.test_holder import kill, spawn_holder


def test_a_live_holder_has_not_ended_and_an_ended_one_has() -> None:
    holders = ClaimHolders()
    proc, text = spawn_holder()
    try:
        assert not holders.has_ended(text)
    finally:
        kill(proc)
    holders = ClaimHolders()  # a fresh probe (a holder is probed at most every POLL s)
    assert holders.has_ended(text)
    assert text in holders.ended  # remembered: its claims are taken over at once
    assert holders.has_ended(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("worker-7", id="not-a-holder-string"),
        pytest.param("pid 1 on elsewhere", id="other-format"),
    ],
)
def test_a_holder_that_cannot_be_told_never_counts_as_ended(text: str) -> None:
    assert not ClaimHolders().has_ended(text)


def test_the_waiting_notice_counts_the_calls_per_holder() -> None:
    holders = ClaimHolders()
    mine = new_holder()  # another Runner of this process
    held_by = {
        "k1": ClaimState("taken", mine, None),
        "k2": ClaimState("taken", mine, None),
        "k3": ClaimState("taken", "worker-7", None),
    }
    store = MemoryStore()
    try:
        text, what, seconds = holders.describe_waiting(held_by, store)
    finally:
        store.close()
    assert text.startswith("3 calls are waiting for other workers")
    assert "2 held by pid" in text and "another Runner of this process" in text
    assert "1 held by 'worker-7'" in text
    assert what.startswith("3 calls claimed by pid") and what.endswith("and others")
    assert seconds == 0.0  # no expiry known
