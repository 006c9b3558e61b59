"""Checkpointing a run to its store: calls with the same key in one batch are sent once
(one leader, the others follow it), and a key shared by different arguments warns."""

from __future__ import annotations

import logging

import pytest

from rate_limited import Runner


def test_duplicate_calls_in_one_batch_are_sent_once_with_a_store() -> None:
    sent: list[int] = []

    def square(x: int) -> int:
        sent.append(x)
        return x * x

    runner = Runner(square, [], store="memory://", progress=False)
    for x in (1, 2, 1, 1, 3):
        runner.schedule(x)
    result = runner.run()
    assert result.results == [1, 4, 1, 1, 9]
    assert sorted(sent) == [1, 2, 3]
    assert result.counts() == {"succeeded": 5}


def test_a_key_shared_by_different_calls_warns(caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(lambda x: x, [], store="memory://", key=lambda call: "same", progress=False)
    runner.schedule(1)
    runner.schedule(2)
    with caplog.at_level(logging.WARNING, logger="rate_limited"):
        result = runner.run()
    assert result.results == [1, 1]
    assert "same store key but different arguments" in caplog.text
