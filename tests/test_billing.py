"""``Billing``: an attempt's reservation settled on the ledger by what its end proves, and
what each call was billed, recorded on the call. Driven directly, on an InMemoryLedger
with times passed in (no engine, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from rate_limited import Resource
from rate_limited._billing import Billing
from rate_limited.calls import Call
from rate_limited.exceptions import UsageExtractionError
from rate_limited.ledgers.memory import InMemoryLedger

ESTIMATE = 100.0


def resources(settle: str = "actual") -> list[Resource]:
    return [
        Resource("requests", 10, 60, arguments_usage_extractor=lambda call: 1),
        Resource(
            "tokens",
            1000,
            60,
            results_usage_extractor=lambda call, result: result["tokens"],
            max_results_usage_estimator=lambda call: ESTIMATE,
            settle=settle,  # type: ignore[arg-type]
        ),
    ]


def admitted(billing: Billing, now: float = 0.0) -> Call:
    call = Call(lambda: None)
    call.demand = ((1.0, 0.0, None), (0.0, ESTIMATE, None))
    call.reservation = billing.ledger.try_reserve(call.demand, now)
    assert call.reservation is not None
    return call


def held(ledger: InMemoryLedger, name: str, now: float) -> float:
    return ledger.meter(name).held(now)


@pytest.fixture
def billing() -> Billing:
    listed = resources()
    return Billing(InMemoryLedger(listed), listed)


def test_a_result_replaces_the_estimate_with_the_actual_usage(billing: Billing) -> None:
    call = admitted(billing)
    assert held(billing.ledger, "tokens", 0.0) == ESTIMATE  # held while in flight
    billing.results(call, {"tokens": 30}, 1.0)
    assert held(billing.ledger, "tokens", 1.0) == 30
    assert held(billing.ledger, "requests", 1.0) == 1
    assert call.usage == {"requests": 1.0, "tokens": 30.0}
    assert call.reservation is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"tokens": -5}, id="negative"),
        pytest.param({"tokens": float("nan")}, id="nan"),
        pytest.param({}, id="missing"),
    ],
)
def test_a_usage_that_cannot_be_read_bills_the_estimate_and_says_so(
    billing: Billing, value: Any
) -> None:
    call = admitted(billing)
    billing.results(call, value, 1.0)
    assert held(billing.ledger, "tokens", 1.0) == ESTIMATE
    assert call.usage == {"requests": 1.0, "tokens": ESTIMATE}
    assert [type(w) for w in call.warnings] == [UsageExtractionError]
    assert "billed the estimate 100" in str(call.warnings[0])
    assert billing.usage_problems == 1
    text = billing.take_problems()
    assert text is not None and text.startswith("1 call(s) returned a result whose usage")
    assert billing.take_problems() is None  # reported once


def test_keep_bills_the_estimate_release_and_refuse_undo_it(billing: Billing) -> None:
    kept, released, refused = admitted(billing), admitted(billing), admitted(billing)
    assert held(billing.ledger, "tokens", 0.0) == 3 * ESTIMATE
    billing.keep(kept, 1.0)  # a timeout: it may have been billed
    assert kept.usage == {"requests": 1.0, "tokens": ESTIMATE}
    billing.release(released, 1.0)  # never sent
    billing.refuse(refused, 1.0)  # a 429: not billed
    assert released.usage is None and refused.usage is None
    assert held(billing.ledger, "tokens", 1.0) == ESTIMATE  # only the kept call's
    assert [c.reservation for c in (kept, released, refused)] == [None, None, None]


def test_a_late_result_is_billed_anew(billing: Billing) -> None:
    """Its reservation was settled already (kept at a timeout): the result it brings is
    billed on top, what the provider charged for the answer it sent after all."""
    call = admitted(billing)
    billing.keep(call, 1.0)
    billing.results(call, {"tokens": 40}, 2.0)
    assert held(billing.ledger, "tokens", 2.0) == ESTIMATE + 40


def test_the_reserved_rule_bills_the_estimate_at_admission() -> None:
    listed = resources(settle="reserved")
    billing = Billing(InMemoryLedger(listed), listed)
    call = admitted(billing)
    billing.results(call, {"tokens": 30}, 1.0)  # less than the estimate: nothing back
    assert held(billing.ledger, "tokens", 1.0) == ESTIMATE
    assert call.usage == {"requests": 1.0, "tokens": ESTIMATE}
