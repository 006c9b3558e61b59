"""``rate_limited._format``: how the displays write durations and amounts."""

from __future__ import annotations

import pytest

from rate_limited._format import format_amount, format_seconds, plain_text


@pytest.mark.parametrize(
    ("seconds", "tenths", "text"),
    [
        pytest.param(4.23, True, "4.2 s", id="tenths"),
        pytest.param(4.23, False, "4 s", id="whole"),
        pytest.param(42.4, True, "42 s", id="seconds"),
        pytest.param(192, True, "3 min 12 s", id="minutes"),
        pytest.param(7500, True, "2 h 05 min", id="hours"),
        pytest.param(float("inf"), True, "?", id="unknown"),
    ],
)
def test_format_seconds(seconds: float, tenths: bool, text: str) -> None:
    assert format_seconds(seconds, tenths) == text


@pytest.mark.parametrize(
    ("amount", "quota", "text"),
    [
        pytest.param(160.51, 600, "161", id="requests"),
        pytest.param(90_000, None, "90,000", id="whole"),
        pytest.param(1.25, 5, "1.25", id="dollars"),
        pytest.param(2.0, 5, "2", id="whole-dollars"),
    ],
)
def test_format_amount(amount: float, quota: float | None, text: str) -> None:
    assert format_amount(amount, quota) == text


def test_plain_text_of_a_dashboard_line() -> None:
    assert plain_text("<b>6</b> / 6 calls &amp; <code>x</code> ") == "6 / 6 calls & x"
