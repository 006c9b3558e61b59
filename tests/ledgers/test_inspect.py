"""``rate-limited ledger inspect|reset``: levels, reservations and their holders."""

from __future__ import annotations

import os

import pytest

from rate_limited import Resource
from rate_limited.cli import main
from rate_limited.ledgers.redis import RedisLedger
from tests.stores.conftest import _free_port


def test_inspect_shows_levels_reservations_and_holders(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = Resource(
        "tokens",
        quota=1000,
        time_window_seconds=3600,
        refill="window",
        arguments_usage_extractor=lambda call: 100,
        max_results_usage_estimator=lambda call: 200,
        results_usage_extractor=lambda call, result: 50,
    )
    # A lease longer than the fixture's 1 s: a keeper thread stalled past it on a loaded
    # machine had the reservation reaped (as a dead holder's) before inspect read it.
    ledger = RedisLedger(ledger_url.replace("&lease=1", "&lease=60"), [tokens], owner="nightly-job")
    try:
        assert ledger.try_reserve([(100.0, 200.0, None)], 0.0) is not None
        assert main(["ledger", "inspect", ledger_url]) == 0
        shown = capsys.readouterr().out
    finally:
        ledger.close()
    name = ledger_url.partition("name=")[2].partition("&")[0]
    assert f"Ledger {name!r}" in shown
    assert "tokens" in shown and "100.0" in shown and "200.0" in shown and "30.0%" in shown
    assert f"pid {os.getpid()}" in shown and "runner 'nightly-job'" in shown
    assert "1 reservation(s); tokens 300.0" in shown


def test_reset_deletes_one_ledger(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    RedisLedger(ledger_url, [Resource("requests", quota=1, time_window_seconds=1)]).close()
    assert main(["ledger", "reset", ledger_url]) == 0
    assert "Deleted" in capsys.readouterr().out
    assert main(["ledger", "inspect", ledger_url]) == 0
    assert "(no meters yet)" in capsys.readouterr().out


def test_an_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "inspect", f"redis://127.0.0.1:{_free_port()}/0"]) == 1
    assert "can't reach Redis at redis://127.0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis://127.0.0.1:notaport/0", "not a port number", id="bad-port"),
        pytest.param("redis://127.0.0.1/0?nmae=t1", "Did you mean 'name'", id="misspelt"),
        pytest.param("redis://127.0.0.1/0?name=", "non-empty name", id="empty-name"),
    ],
)
def test_a_bad_url_is_a_clear_error_not_a_traceback(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "inspect", url]) == 1
    assert message in capsys.readouterr().err


def test_partitions_with_colons_are_shown_whole(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenAI fine-tuned models (``ft:gpt-4o-mini-2024-07-18:my-org::9abc``) as partitions:
    the resource and partition columns are read right (keys split at the resource)."""
    model = "ft:gpt-4o-mini-2024-07-18:my-org::9abc"
    per_model = Resource(
        "tokens:out",  # a colon in the resource's name too
        quota=1000,
        time_window_seconds=3600,
        partition=lambda call: call.kwargs["model"],
        arguments_usage_extractor=lambda call: 100,
    )
    ledger = RedisLedger(ledger_url, [per_model])
    try:
        assert ledger.try_reserve([(100.0, 0.0, model)], 0.0) is not None
        assert main(["ledger", "inspect", ledger_url]) == 0
        shown = capsys.readouterr().out
    finally:
        ledger.close()
    (line,) = [line for line in shown.splitlines() if model in line]
    assert line.split()[:2] == ["tokens:out", model]
    assert "; tokens:out " in shown  # what the holder holds, by resource


def test_meter_keys_split_at_the_longest_declared_resource() -> None:
    from rate_limited.ledgers._redis_url import meter_parts as _meter

    assert _meter("a:b:ft:x::y", ["a", "a:b"]) == ("a:b", "ft:x::y")
    assert _meter("requests:", ["requests"]) == ("requests", "")
    assert _meter("tokens:ft:m::1", []) == ("tokens", "ft:m::1")  # no declarations left
