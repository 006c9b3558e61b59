"""The ledger as pure functions of ``now``: admission, settle rules, partitions, and
agreeing with what the provider reports (headers, 429s), with its rule discovery.

No clock and no event loop: every method takes the time explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import pytest

from rate_limited import Resource
from rate_limited._ledger import Ledger


def ledger_of(*specs: tuple[str, float, float, str], **options: Any) -> Ledger:
    return Ledger([Resource(n, q, w, refill=r, **options) for n, q, w, r in specs])  # type: ignore[arg-type]


def d(
    *needs: tuple[float, float] | tuple[float, float, Hashable],
) -> list[tuple[float, float, Hashable]]:
    """A demand: per resource (arguments usage, estimate[, partition key])."""
    return [(n[0], n[1], n[2] if len(n) > 2 else None) for n in needs]  # type: ignore[misc]


def test_ledger_admits_on_rounding_noise() -> None:
    ledger = ledger_of(("a", 0.3, 10.0, "window"))
    assert ledger.try_reserve(d((0.1, 0.0)), 0.0) is not None
    assert ledger.try_reserve(d((0.2, 0.0)), 1.0) is not None  # 0.1 + 0.2 > 0.3 in floats
    assert ledger.next_free_time(d((1e-6, 0.0)), 1.0) == 10.0


# -- reservations through the ledger -------------------------------------------------------------
def test_try_reserve_bills_arguments_and_holds_the_estimate() -> None:
    ledger = ledger_of(("tokens", 100, 60.0, "window"))
    reservation = ledger.try_reserve(d((10, 30)), 0.0)
    assert reservation is not None
    meter = ledger.meter("tokens")
    assert meter.used(0.0) == 10
    assert meter.reserved == 30
    assert meter.available(0.0) == 60
    assert ledger.snapshot(0.0) == {"tokens": (10, 30, 100)}


def test_settle_replaces_the_estimate_by_the_actual_usage() -> None:
    ledger = ledger_of(("tokens", 100, 60.0, "window"))
    reservation = ledger.try_reserve(d((10, 30)), 0.0)
    assert reservation is not None
    ledger.settle(reservation, [12], 5.0)
    meter = ledger.meter("tokens")
    assert meter.reserved == 0
    assert meter.used(5.0) == 22
    assert meter.used(60.0) == 12  # the arguments usage expires with its own window
    assert meter.used(65.0) == 0  # the results usage was billed at settlement


def test_keep_turns_the_estimate_into_usage() -> None:
    ledger = ledger_of(("tokens", 100, 60.0, "window"))
    reservation = ledger.try_reserve(d((10, 30)), 0.0)
    assert reservation is not None
    ledger.keep(reservation, 5.0)
    meter = ledger.meter("tokens")
    assert meter.reserved == 0
    assert meter.used(5.0) == 40
    assert meter.used(60.0) == 30
    assert meter.used(65.0) == 0


@pytest.mark.parametrize("refill", [pytest.param("window"), pytest.param("bucket")])
def test_release_undoes_billing_and_holding(refill: str) -> None:
    ledger = ledger_of(("requests", 10, 60.0, refill), ("tokens", 100, 60.0, refill))
    before = ledger.try_reserve(d((1, 0), (20, 0)), 0.0)
    reservation = ledger.try_reserve(d((1, 0), (10, 50)), 0.0)
    assert before is not None and reservation is not None
    ledger.release(reservation, 0.0)
    requests, tokens = ledger.meter("requests"), ledger.meter("tokens")
    assert requests.used(0.0) == 1 and tokens.used(0.0) == 20  # only the other call's
    assert tokens.reserved == 0


def test_release_leaves_other_reservations_alone() -> None:
    ledger = ledger_of(("tokens", 100, 60.0, "window"))
    first = ledger.try_reserve(d((0, 40)), 0.0)
    second = ledger.try_reserve(d((0, 30)), 0.0)
    assert first is not None and second is not None
    ledger.release(first, 1.0)
    assert ledger.meter("tokens").reserved == 30


# -- atomic admission ----------------------------------------------------------------------------
def test_admission_is_all_or_nothing_across_resources() -> None:
    ledger = ledger_of(("requests", 10, 60.0, "window"), ("tokens", 5, 60.0, "window"))
    assert ledger.try_reserve(d((0, 0), (4, 0)), 0.0) is not None
    assert ledger.try_reserve(d((3, 0), (2, 0)), 1.0) is None  # requests fit, tokens do not
    requests, tokens = ledger.meter("requests"), ledger.meter("tokens")
    assert requests.used(1.0) == 0  # nothing of the refused call was billed
    assert tokens.used(1.0) == 4
    assert ledger.binding(d((3, 0), (2, 0)), 1.0) == "tokens"
    assert ledger.try_reserve(d((3, 0), (1, 0)), 1.0) is not None
    assert requests.used(1.0) == 3 and tokens.used(1.0) == 5
    assert ledger.binding(d((0, 0), (0, 0)), 1.0) is None


def test_refused_estimate_is_not_held() -> None:
    ledger = ledger_of(("requests", 10, 60.0, "window"), ("tokens", 5, 60.0, "window"))
    assert ledger.try_reserve(d((1, 0), (0, 6)), 0.0) is None
    assert ledger.meter("requests").used(0.0) == 0
    assert ledger.meter("tokens").reserved == 0


def test_next_free_time_is_the_latest_over_resources() -> None:
    ledger = ledger_of(("requests", 2, 10.0, "window"), ("tokens", 10, 10.0, "bucket"))
    assert ledger.try_reserve(d((2, 0), (10, 0)), 0.0) is not None
    # requests free at 10.0 (window); 4 tokens drain by 4.0 (bucket): the later wins.
    assert ledger.next_free_time(d((1, 0), (4, 0)), 1.0) == 10.0
    assert ledger.next_free_time(d((0, 0), (4, 0)), 1.0) == 4.0
    assert ledger.next_free_time(d((0, 0), (0, 0)), 1.0) == 1.0


def test_next_free_time_is_inf_when_only_a_release_helps() -> None:
    ledger = ledger_of(("tokens", 10, 60.0, "window"))
    held = ledger.try_reserve(d((0, 8)), 0.0)
    assert held is not None
    assert ledger.next_free_time(d((0, 5)), 1000.0) == math.inf  # time alone never helps
    ledger.settle(held, [1], 1000.0)
    assert ledger.next_free_time(d((0, 5)), 1000.0) == 1000.0
