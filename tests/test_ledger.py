"""The ledger as pure functions of ``now``: admission, settle rules, partitions, and
agreeing with what the provider reports (headers, 429s), with its rule discovery.

No clock and no event loop: every method takes the time explicitly.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Hashable
from typing import Any

import pytest

from rate_limited import ConfigurationError, Resource
from rate_limited.ledgers import InMemoryLedger as Ledger
from rate_limited.testing._buckets import TokenBucket


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


# -- settle rules --------------------------------------------------------------------------------
def tokens(quota: float = 600, window: float = 60.0, settle: str = "reserved", **kw: Any) -> Ledger:
    """A ledger of one bucket resource with an estimate (10 units a second by default)."""
    resource = Resource(
        "tokens",
        quota,
        window,
        results_usage_extractor=lambda c, r: 0,
        max_results_usage_estimator=lambda c: 0,
        refill="bucket",
        settle=settle,  # type: ignore[arg-type]
        **kw,
    )
    return Ledger([resource])


def test_reserved_rule_bills_the_estimate_at_admission_and_never_less() -> None:
    """OpenAI's TPM: prompt + max_tokens counted on arrival, the unused part kept."""
    ledger = tokens()
    meter = ledger.meter("tokens")
    kept = ledger.try_reserve(d((0, 100)), 0.0)
    assert kept is not None
    assert (meter.used(0.0), meter.reserved) == (100, 0)  # billed, draining from now
    assert ledger.settle(kept, [30], 1.0) == [100]  # never below what was reserved
    assert meter.used(1.0) == pytest.approx(90.0)
    more = ledger.try_reserve(d((0, 100)), 1.0)
    assert more is not None
    assert ledger.settle(more, [150], 2.0) == [150]  # the actual usage above it on top
    assert meter.used(2.0) == pytest.approx(90 + 100 - 10 + 50)
    lost = ledger.try_reserve(d((0, 100)), 2.0)
    assert lost is not None
    ledger.keep(lost, 3.0)  # failed, maybe billed: the estimate stays, nothing more
    assert meter.used(3.0) == pytest.approx(230 + 100 - 10)
    refused = ledger.try_reserve(d((0, 100)), 3.0)
    assert refused is not None
    ledger.release(refused, 3.0)  # proved not billed: taken back
    assert meter.used(3.0) == pytest.approx(320)


@pytest.mark.parametrize(
    ("rule", "billed"),
    [
        pytest.param("actual", [1.0, 40.0], id="actual"),
        pytest.param("reserved", [1.0, 140.0], id="reserved"),
    ],
)
def test_settle_returns_the_arguments_usage_and_the_results_billed(
    rule: str, billed: list[float]
) -> None:
    """What the engine records as the call's usage: both parts, per resource."""
    ledger = Ledger(
        [
            Resource("requests", 10, 60, arguments_usage_extractor=lambda call: 1),
            Resource(
                "tokens",
                1000,
                60,
                arguments_usage_extractor=lambda call: 40,
                results_usage_extractor=lambda call, result: 0,
                max_results_usage_estimator=lambda call: 100,
                settle=rule,  # type: ignore[arg-type]
            ),
        ]
    )
    reservation = ledger.try_reserve(((1.0, 0.0, None), (40.0, 100.0, None)), 0.0)
    assert reservation is not None
    assert ledger.settle(reservation, [0.0, 0.0], 1.0) == billed


def test_actual_rule_holds_the_estimate_and_bills_the_actual() -> None:
    ledger = tokens(settle="actual")
    meter = ledger.meter("tokens")
    reservation = ledger.try_reserve(d((0, 100)), 0.0)
    assert reservation is not None
    assert (meter.used(0.0), meter.reserved) == (0, 100)
    assert ledger.settle(reservation, [30], 1.0) == [30]
    assert (meter.used(1.0), meter.reserved) == (30, 0)
    assert ledger.rule("tokens") == "actual"


def test_settle_must_be_a_known_rule() -> None:
    with pytest.raises(ConfigurationError, match="settle must be 'actual' or 'reserved'"):
        Resource("tokens", 10, 60, settle="refunded")  # type: ignore[arg-type]


# -- partitions ----------------------------------------------------------------------------------
def test_each_partition_key_has_its_own_meter_and_quota() -> None:
    ledger = tokens(
        quota=100,
        settle="actual",
        partition=lambda call: call.get_argument("model"),
        partition_quotas={"big": 300},
    )
    assert ledger.partitioned
    assert ledger.try_reserve(d((100, 0, "a")), 0.0) is not None
    assert ledger.try_reserve(d((1, 0, "a")), 0.0) is None  # "a" is full...
    assert ledger.try_reserve(d((100, 0, "b")), 0.0) is not None  # ... "b" is not
    assert ledger.try_reserve(d((300, 0, "big")), 0.0) is not None
    assert ledger.quota("tokens", "big") == 300 and ledger.quota("tokens", "b") == 100
    assert ledger.binding(d((1, 0, "a")), 0.0) == "tokens"
    assert ledger.next_free_time(d((50, 0, "a")), 0.0) == pytest.approx(30.0)  # 100 / 60 s
    ledger.set_quota("tokens", 200, partition="a")  # e.g. read from that model's headers
    ledger.set_quota("tokens", 500, partition="unseen")  # no meter yet: gets it when made
    assert ledger.try_reserve(d((100, 0, "a")), 0.0) is not None
    assert ledger.quota("tokens", "unseen") == 100
    assert ledger.partitions(0.0) == {
        ("tokens", "a"): (200, 0, 200),
        ("tokens", "b"): (100, 0, 100),
        ("tokens", "big"): (300, 0, 300),
        ("tokens", "unseen"): (0, 0, 100),
    }
    assert ledger.snapshot(0.0) == {"tokens": (200, 0, 200)}  # the key nearest its quota


def test_partition_quotas_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="partition_quotas needs partition="):
        Resource("r", 10, 60, partition_quotas={"a": 5})
    with pytest.raises(ConfigurationError, match=r"partition_quotas\['a'\] must be a positive"):
        Resource("r", 10, 60, partition=str, partition_quotas={"a": 0})
    with pytest.raises(ConfigurationError, match="partition must be a callable"):
        Resource("r", 10, 60, partition="model")  # type: ignore[arg-type]


# -- agreeing with the provider ------------------------------------------------------------------
def reported(settle: str = "reserved", quota: float = 1000) -> Ledger:
    ledger = tokens(quota=quota, settle=settle)
    ledger.expect_reports()
    return ledger


def test_a_stale_header_is_compared_with_the_lowest_room_since_its_admission() -> None:
    """R1 and R2 are admitted together; R2 reaches the provider first, so R1's header
    counts R2 too. Compared with what the ledger believed at R1's admission alone, it
    would look like usage from elsewhere; it is not."""
    ledger = reported()
    r1 = ledger.try_reserve(d((0, 100)), 0.0)
    r2 = ledger.try_reserve(d((0, 100)), 0.0)
    assert r1 is not None and r2 is not None
    assert ledger.reconcile("tokens", 800, 0.1, admission=r1) == 0.0
    assert ledger.reconcile("tokens", 800, 0.1, admission=r2) == 0.0
    assert ledger.meter("tokens").corrected == 0


def test_usage_from_elsewhere_is_billed_once() -> None:
    """Another process on the key used 300: the first header says so, and the headers of
    requests admitted before that correction do not bill it again."""
    ledger = reported()
    r1 = ledger.try_reserve(d((0, 100)), 0.0)
    r2 = ledger.try_reserve(d((0, 100)), 0.0)
    assert r1 is not None and r2 is not None
    assert ledger.reconcile("tokens", 600, 0.0, admission=r1) == pytest.approx(200)
    assert ledger.reconcile("tokens", 500, 0.0, admission=r2) == pytest.approx(100)
    assert ledger.meter("tokens").corrected == pytest.approx(300)
    assert ledger.reconcile("tokens", 500, 0.0, admission=r2) == 0.0  # told twice: once
    r3 = ledger.try_reserve(d((0, 100)), 0.0)
    assert r3 is not None
    assert ledger.reconcile("tokens", 400, 0.0, admission=r3) == 0.0  # agrees now
    # A more generous provider leaves the ledger as careful as it is.
    assert ledger.reconcile("tokens", 900, 0.0, admission=r3) == 0.0


def test_a_report_with_no_known_admission_tells_nothing() -> None:
    ledger = reported()
    assert ledger.reconcile("tokens", 0, 0.0) == 0.0
    before = ledger.try_reserve(d((0, 100)), 0.0)  # admitted by another ledger, say
    other = reported()
    assert before is not None
    assert other.reconcile("tokens", 0, 0.0, admission=before) == 0.0


def test_rounded_headers_are_read_at_their_low_end() -> None:
    """Anthropic rounds token counts to the thousand: 6000 may be 5500."""
    ledger = reported(quota=10_000)
    admitted = ledger.try_reserve(d((0, 4000)), 0.0)
    assert admitted is not None
    assert ledger.reconcile("tokens", 6000, 0.0, admission=admitted, precision=500) == 500


def test_a_refusal_with_headers_corrects_the_ledger_exactly() -> None:
    """A 429's headers leave the refused request out: with it counted, the ledger is billed
    what it believed above the provider, and not the refusal's rough correction on top."""
    ledger = reported()
    meter = ledger.meter("tokens")
    refused = ledger.try_reserve(d((0, 300)), 0.0)
    assert refused is not None
    # The provider had 200 left (another process used 800): the 300 did not fit.
    assert ledger.reconcile("tokens", 200, 0.0, admission=refused, refused=True) == 800
    ledger.refused(refused, 0.0)
    assert meter.used(0.0) == pytest.approx(800)  # as at the provider
    assert meter.corrected == pytest.approx(800)


@pytest.mark.parametrize("refill", [pytest.param("bucket"), pytest.param("window")])
def test_a_refusal_without_headers_corrects_the_tightest_resource(refill: str) -> None:
    requests = Resource("requests", 100, 60, refill=refill)  # type: ignore[arg-type]
    tpm = Resource("tokens", 1000, 60, refill=refill)  # type: ignore[arg-type]
    ledger = Ledger([requests, tpm])
    first = ledger.try_reserve(d((1, 0), (700, 0)), 0.0)  # tokens 30% free after
    second = ledger.try_reserve(d((1, 0), (100, 0)), 0.0)  # the same moment
    assert first is not None and second is not None
    ledger.refused(first, 0.0)
    ledger.refused(second, 0.0)
    assert ledger.meter("requests").corrected == 0  # 98% free: not what refused them
    tokens_meter = ledger.meter("tokens")
    if refill == "bucket":
        # A bucket is billed the room it believed free plus the call (300 + 700), as a level
        # that drains at the refill rate.
        assert tokens_meter.corrected == pytest.approx(1000)
    else:
        # A window only the call itself (its free room would block a whole window).
        assert tokens_meter.corrected == pytest.approx(700)
    # The second refusal adds nothing: a correction since its admission covers it.


# -- discovering the settle rule, against the MockProvider's own bucket arithmetic ---------------
def simulate(
    ledger: Ledger, refunds: bool, seconds: float, reverse: bool
) -> tuple[list[float], float]:
    """Calls reserving 1000 and using 200, as many as the ledger admits every 0.1 s, sent to
    a provider bucket of 60,000 a minute (``TokenBucket``, the MockProvider's code) that
    arrive 50 ms later
    (in reverse admission order within a batch, if ``reverse``) and are answered 400 ms
    after that; the answer's header says what was left at the arrival. Returns when the
    provider refused calls, and the tokens it charged."""
    now = 0.0
    bucket = TokenBucket(60_000, window=60.0, now=lambda: now, name="tokens")
    events: list[tuple[float, int, str, Any]] = []
    seq = 0
    refused: list[float] = []
    charged = 0.0
    step = 0.0
    while step < seconds or events:
        if step < seconds and (not events or step <= events[0][0]):
            now = step
            batch = []
            while (reservation := ledger.try_reserve(d((0, 1000)), now)) is not None:
                batch.append(reservation)
            for k, reservation in enumerate(reversed(batch) if reverse else batch):
                seq += 1
                heapq.heappush(events, (now + 0.05 + 1e-4 * k, seq, "arrive", reservation))
            step = round(step + 0.1, 10)
            continue
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            if bucket.try_consume(1000):
                seq += 1
                left = bucket.available()
                heapq.heappush(events, (now + 0.4, seq, "answer", (payload, left)))
            else:
                refused.append(now)
                ledger.reconcile("tokens", bucket.available(), now, admission=payload, refused=True)
                ledger.refused(payload, now)
        else:
            reservation, left = payload
            if refunds:
                bucket.refund(800)
            charged += 200 if refunds else 1000
            ledger.settle(reservation, [200], now)
            ledger.reconcile("tokens", math.floor(left), now, admission=reservation)
    return refused, charged


@pytest.mark.parametrize(
    "reverse", [pytest.param(False, id="in-order"), pytest.param(True, id="reordered")]
)
def test_a_provider_that_refunds_is_discovered_and_its_capacity_used(
    caplog: pytest.LogCaptureFixture, reverse: bool
) -> None:
    ledger = reported(quota=60_000)  # OpenAI's documented rule first
    with caplog.at_level(logging.INFO, logger="rate_limited"):
        refused, charged = simulate(ledger, refunds=True, seconds=60.0, reverse=reverse)
    assert ledger.rule("tokens") == "actual"
    assert "hands back the unused part" in caplog.text
    assert refused == []
    # Calls charged 200 each, as many as the bucket and its refill allow (not 1000 each).
    assert charged >= 0.95 * (60_000 + 1000 * 60)


@pytest.mark.parametrize(
    "reverse", [pytest.param(False, id="in-order"), pytest.param(True, id="reordered")]
)
def test_a_provider_that_keeps_what_it_reserves_is_never_taken_for_one_that_refunds(
    reverse: bool,
) -> None:
    ledger = reported(quota=60_000)
    refused, charged = simulate(ledger, refunds=False, seconds=60.0, reverse=reverse)
    assert ledger.rule("tokens") == "reserved"
    assert refused == []
    assert charged >= 0.95 * (60_000 + 1000 * 60)


def test_a_provider_that_keeps_what_it_reserves_is_discovered_by_an_actual_view() -> None:
    """The "actual" rule against a provider that keeps max_tokens: the first calls to settle
    free room the provider never gives back, and the calls sent into it are refused; each
    refusal corrects the ledger, the headers then switch it to the provider's rule, and
    the refusals stop for good."""
    ledger = reported(quota=60_000, settle="actual")
    refused, charged = simulate(ledger, refunds=False, seconds=60.0, reverse=False)
    assert ledger.rule("tokens") == "reserved"
    assert refused and max(refused) < 15.0
    assert charged >= 0.9 * (60_000 + 1000 * 60)


def test_the_in_memory_ledger_implements_the_ledger_interface() -> None:
    """The engine holds a ``ledgers.base.Ledger``; every method of the interface is the
    in-memory ledger's (mypy checks the signatures where the Runner hands it over)."""
    from rate_limited.ledgers import InMemoryLedger
    from rate_limited.ledgers import Ledger as LedgerInterface

    ledger = InMemoryLedger([Resource("requests", quota=3, time_window_seconds=60)])
    assert isinstance(ledger, LedgerInterface)
    reservation = ledger.try_reserve(((1.0, 0.0, None),), 0.0)
    assert reservation is not None and list(reservation.demand) == [(1.0, 0.0, None)]
    ledger.set_quota("requests", 1.0)
    assert ledger.quota("requests") == 1.0
    assert ledger.try_reserve(((1.0, 0.0, None),), 0.0) is None  # the quota was lowered


# -- a resumed run: usage an earlier process was billed ------------------------------------------
def test_charge_earlier_charges_each_resource_on_its_partitions_meter() -> None:
    ledger = ledger_of(
        ("requests", 10, 60.0, "window"),
        ("tokens", 600, 60.0, "bucket"),
        partition=lambda call: call.get_argument("model"),
    )
    earlier = [
        (d((1, 0, "a"), (0, 0, "a")), {"requests": 1.0, "tokens": 300.0}, -10.0),
        (d((1, 0, "a"), (0, 0, "a")), {"requests": 1.0, "tokens": 300.0, "gone": 5.0}, -2.0),
        (d((1, 0, "b"), (0, 0, "b")), {"tokens": 100.0}, -100.0),  # drained long ago
    ]
    ledger.charge_earlier(earlier, 0.0)
    # 10 per second: 300 at -10 s drained to 220 by -2 s, 300 more then: 500 now.
    assert ledger.partitions(0.0)[("tokens", "a")][0] == pytest.approx(500.0)
    assert ledger.partitions(0.0)[("requests", "a")][0] == 2.0
    assert ledger.partitions(0.0)[("tokens", "b")][0] == 0.0
    assert ledger.try_reserve(d((1, 0, "a"), (200, 0, "a")), 0.0) is None  # 500 + 200 > 600
    assert ledger.try_reserve(d((1, 0, "b"), (600, 0, "b")), 0.0) is not None


# -- window meters in bounded memory: never more than the quota in any window ----------------------
@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed-{s}") for s in range(6)])
def test_a_window_never_admits_more_than_its_quota_in_any_window(seed: int) -> None:
    """An adversary drives a window ledger on a FakeClock with steps chosen around the
    buckets' grain and the window's length, deferred calls begun in the past, refunds,
    estimates kept and settled lower. After every admission, the usage an exact log would
    hold in the last window plus the estimates held must be within the quota: coalescing
    usages into buckets may make them count longer, never shorter."""
    from rate_limited._meters import WINDOW_SLOTS
    from rate_limited.testing import FakeClock

    rng = random.Random(seed)
    quota, window = 10.0, 1.0
    grain = window / WINDOW_SLOTS
    ledger = ledger_of(("requests", quota, window, "window"))
    clock = FakeClock(start=rng.uniform(0, 5))
    steps = [0.0, grain / 3, grain * 0.999, grain, grain * 1.001, window - grain, window]
    steps += [window * 0.999, window + grain / 2]
    #: What was really billed, each [time, amount] (an amount zeroed when refunded).
    billed: list[list[float]] = []
    #: Calls in flight: (reservation, its admission record or None if deferred, demand).
    flight: list[tuple[Any, list[float] | None, tuple[float, float]]] = []
    admitted = 0
    for _ in range(1500):
        now = clock.time()
        action = rng.random()
        if action < 0.2:
            clock.advance(rng.choice(steps) if rng.random() < 0.7 else rng.uniform(0, 3 * grain))
        elif action < 0.7:
            need = (rng.choice([0.5, 1.0, 2.5]), rng.choice([0.0, 0.0, 1.5, 3.0]))
            defer = rng.random() < 0.3
            reservation = ledger.try_reserve(d(need), now, defer=defer)
            if reservation is None:
                continue
            admitted += 1
            record = None if defer else [now, need[0]]
            if record is not None:
                billed.append(record)
            flight.append((reservation, record, need))
            held = sum(n[0] + n[1] if r is None else n[1] for _, r, n in flight)
            in_window = sum(a for t, a in billed if now - window < t <= now)
            assert in_window + held <= quota * (1 + 1e-9), (now, in_window, held)
        elif flight:
            reservation, record, need = flight.pop(rng.randrange(len(flight)))
            if record is None and rng.random() < 0.7:  # its thread started it a bit ago
                started = rng.uniform(reservation.at, now)
                ledger.begin(reservation, started)
                record = [started, need[0]]
                billed.append(record)
            ending = rng.random()
            if ending < 0.6:
                actual = rng.uniform(0, need[1])
                ledger.settle(reservation, [actual], now)
                billed.append([now, actual])
            elif ending < 0.8:
                ledger.keep(reservation, now)
                if record is None:
                    billed.append([now, need[0]])
                billed.append([now, need[1]])
            else:
                ledger.release(reservation, now)
                if record is not None:
                    record[1] = 0.0
    assert admitted > 200  # the adversary did push on the quota


def test_a_saturated_window_keeps_its_throughput_with_buckets() -> None:
    """Calls every 0.1 ms at a 1,000-per-second quota for 20 s: coalescing loses at most
    the grain's share of the throughput, and the log stays within its bound of buckets."""
    from rate_limited._meters import WINDOW_SLOTS

    ledger = ledger_of(("requests", 1000, 1.0, "window"))
    admitted, step = 0, 1e-4
    for i in range(200_000):
        if ledger.try_reserve(d((1.0, 0.0)), i * step) is not None:
            admitted += 1
    assert admitted >= 1000 * 20 / (1 + 1 / WINDOW_SLOTS) - 1000
    assert admitted <= 1000 * 21
    assert len(ledger.meter("requests")._log) <= WINDOW_SLOTS + 2  # type: ignore[attr-defined]
