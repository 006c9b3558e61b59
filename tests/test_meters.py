"""Meters as pure functions of ``now``: windows and buckets, reservations, rounding.

No clock and no event loop: every method takes the time explicitly, so a one-day window
is one number and the assertions compare exact floats.
"""

from __future__ import annotations

import math
import random

import pytest

from rate_limited import ConfigurationError, Resource
from rate_limited._meters import WINDOW_SLOTS, BucketMeter, WindowMeter, make_meter


# -- window meter ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("window", "logged_at"),
    [
        pytest.param(0.5, 0.0, id="half-second"),
        pytest.param(0.5, 1234.25, id="half-second-later"),
        pytest.param(86400.0, 10.0, id="one-day"),
        pytest.param(1.0, 0.1, id="one-second-unround-start"),
    ],
)
def test_window_usage_expires_exactly_at_t_plus_window(window: float, logged_at: float) -> None:
    meter = WindowMeter(10, window)
    meter.bill(3, logged_at)
    expiry = logged_at + window
    assert meter.used(math.nextafter(expiry, -math.inf)) == 3
    assert meter.used(expiry) == 0
    assert meter.next_expiry(expiry) is None


def test_window_free_at_is_the_expiry_of_the_usage_that_makes_room() -> None:
    meter = WindowMeter(10, 10.0)
    meter.bill(4, 0.0)
    meter.bill(4, 1.0)
    now = 1.5
    assert meter.free_at(2, now) == now  # 8 + 2 fits
    assert meter.free_at(5, now) == 10.0  # needs the first usage gone
    assert meter.free_at(9, now) == 11.0  # needs both gone
    assert meter.free_at(10, now) == 11.0
    assert meter.free_at(10.5, now) == math.inf  # more than the quota: never
    assert meter.next_expiry(now) == 10.0


def test_window_free_at_agrees_with_fits_on_unround_floats() -> None:
    """0.1 + 0.2 is 0.30000000000000004: free_at must say that, not 0.3."""
    meter = WindowMeter(1, 0.2)
    meter.bill(1, 0.1)
    when = meter.free_at(1, 0.1)
    assert when == 0.1 + 0.2
    assert not meter.fits(1, math.nextafter(when, -math.inf))
    assert meter.fits(1, when)


def test_window_free_at_with_reservations() -> None:
    meter = WindowMeter(10, 60.0)
    meter.bill(5, 0.0)
    meter.reserve(4)
    assert meter.free_at(1, 1.0) == 1.0
    assert meter.free_at(2, 1.0) == 60.0  # the usage expiring makes room next to the hold
    assert meter.free_at(7, 1.0) == math.inf  # 4 held + 7 > 10: only a release helps
    meter.unreserve(4)
    assert meter.free_at(7, 1.0) == 60.0


def test_same_instant_usages_merge_but_refund_separately() -> None:
    meter = WindowMeter(10, 1.0)
    first = meter.bill(2, 0.0)
    second = meter.bill(3, 0.0)
    meter.bill(1, 0.5)
    assert len(meter._log) == 2  # one entry for t=0, one for t=0.5
    assert meter.used(0.5) == 6
    meter.refund(first, 0.5)
    assert meter.used(0.5) == 4  # only the first call's 2 came back
    meter.refund(second, 0.5)
    assert meter.used(0.5) == 1
    assert meter.used(1.0) == 1  # the merged entry expired whole
    assert meter.used(1.5) == 0


def test_window_buckets_bound_the_log_and_never_expire_a_usage_early() -> None:
    """Usages closer than a grain share a bucket stamped with the latest of them: the log
    stays within WINDOW_SLOTS + 2 buckets, and each usage counts a full window."""
    window = 1.0
    grain = window / WINDOW_SLOTS
    meter = WindowMeter(10**9, window)
    times = [i * grain / 4 for i in range(8 * WINDOW_SLOTS)]  # two windows, 4 per grain
    for at in times:
        meter.bill(1, at)
        assert len(meter._log) <= WINDOW_SLOTS + 2
    last = times[-1]
    counted = meter.used(last)
    exact = sum(1 for at in times if at + window > last)
    assert exact <= counted <= exact + 4  # at most one grain's worth more
    # The last usage still counts just before its own expiry.
    assert meter.used(math.nextafter(last + window, -math.inf)) >= 1


def test_a_window_usage_logged_in_the_past_joins_a_bucket_that_expires_no_earlier() -> None:
    window = 1.0
    grain = window / WINDOW_SLOTS
    meter = WindowMeter(100, window)
    meter.bill(1, 0.0)
    meter.bill(1, 10 * grain)
    meter.bill(1, 20 * grain)
    token = meter.bill(5, 10 * grain - grain / 2)  # a sync call started a little earlier
    assert len(meter._log) == 3  # joined the bucket opened after it, not a new one
    assert meter.used(math.nextafter(10 * grain - grain / 2 + window, -math.inf)) == 7
    assert meter.used(10 * grain + window) == 1  # that bucket expired whole, later
    meter.refund(token, 10 * grain + window)  # expired already: takes nothing newer
    assert meter.used(10 * grain + window) == 1


def test_refund_after_expiry_does_not_eat_newer_usage() -> None:
    meter = WindowMeter(10, 1.0)
    old = meter.bill(5, 0.0)
    meter.bill(2, 1.0)  # the 5 expired at 1.0
    meter.refund(old, 1.0)
    assert meter.used(1.0) == 2


def test_zero_usage_is_not_logged() -> None:
    meter = WindowMeter(10, 1.0)
    assert meter.bill(0, 0.0) is None
    meter.refund(None, 0.0)
    assert meter.used(0.0) == 0 and meter.next_expiry(0.0) is None


# -- bucket meter ------------------------------------------------------------------------------
def test_bucket_drains_at_quota_per_window() -> None:
    meter = BucketMeter(10, 10.0)  # 1 unit per second
    meter.bill(10, 0.0)
    assert meter.used(0.0) == 10
    assert meter.used(2.5) == 7.5
    assert meter.used(20.0) == 0


def test_bucket_free_at_is_exact() -> None:
    meter = BucketMeter(10, 10.0)
    meter.bill(10, 0.0)
    assert meter.free_at(4, 0.0) == 4.0
    assert meter.free_at(4, 1.0) == 4.0  # level 9 at 1.0, 3 more to drain
    assert meter.free_at(1, 9.0) == 9.0  # level 1: fits now
    assert meter.free_at(11, 9.0) == math.inf
    meter.reserve(7)
    assert meter.free_at(4, 9.0) == math.inf  # 7 held + 4 > 10


def test_bucket_free_at_on_a_fast_bucket() -> None:
    meter = BucketMeter(90_000, 60.0)  # 1500 tokens a second
    meter.bill(90_000, 100.0)
    when = meter.free_at(3000, 100.0)
    assert when == pytest.approx(102.0, abs=1e-9)
    assert meter.fits(3000, when)


def test_bucket_refund_of_a_drained_usage_is_not_over_released() -> None:
    meter = BucketMeter(10, 10.0)  # 1 unit per second
    token = meter.bill(10, 0.0)  # e.g. a request that later gets a 429
    meter.bill(5, 5.0)  # level 5 (drained) + 5 = 10
    meter.refund(token, 5.0)
    # Without the refunded usage the bucket would hold just the 5 billed at 5.0.
    assert meter.used(5.0) >= 5 - 1e-9


# -- float slack -------------------------------------------------------------------------------
@pytest.mark.parametrize("refill", [pytest.param("window"), pytest.param("bucket")])
def test_rounding_of_many_small_usages_does_not_block_a_call_that_fits(refill: str) -> None:
    meter = make_meter(refill, 2.0, 3600.0)
    for _ in range(19):
        meter.bill(0.1, 0.0)
    used = meter.used(0.0)
    assert 2.0 - used < 0.1  # the sum rounded above 1.9: a naive comparison would refuse
    assert meter.fits(0.1, 0.0)
    assert meter.free_at(0.1, 0.0) == 0.0
    assert not meter.fits(0.1 + 1e-6, 0.0)  # the slack is rounding noise, not capacity


# -- free_at is consistent with fits -------------------------------------------------------------
@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed-{s}") for s in range(5)])
@pytest.mark.parametrize("refill", [pytest.param("window"), pytest.param("bucket")])
def test_free_at_is_the_first_instant_that_fits(seed: int, refill: str) -> None:
    rng = random.Random(seed)
    quota, window = rng.choice([(10, 1.0), (7.5, 0.3), (90_000, 60.0), (3, 86400.0)])
    bills = sorted((rng.uniform(0, window), rng.uniform(0, quota / 3)) for _ in range(6))

    def fresh() -> WindowMeter | BucketMeter:
        meter = make_meter(refill, quota, window)
        for at, amount in bills:
            meter.bill(amount, at)
        return meter  # type: ignore[return-value]

    now = bills[-1][0]
    for needed in (0.0, quota / 4, quota / 2, quota):
        when = fresh().free_at(needed, now)
        assert now <= when < math.inf
        assert fresh().fits(needed, when), (needed, when)
        if when > now and refill == "window":
            assert not fresh().fits(needed, math.nextafter(when, -math.inf))


def test_a_bucket_with_a_refill_delay_starts_draining_that_much_later() -> None:
    """The provider's idle bucket only starts when the request arrives: a ledger that
    drained from the admission would credit refill the provider never had."""
    meter = BucketMeter(10, 1.0, start_delay=0.5)  # 10 per second
    meter.bill(10, now=0.0)  # idle -> busy at 0: no refill before 0.5
    assert meter.free_at(1, now=0.0) == pytest.approx(0.6)
    assert meter.used(0.4) == pytest.approx(10.0)
    assert meter.used(0.6) == pytest.approx(9.0)
    meter.bill(1, now=0.6)  # busy: the delay applies only when leaving idle
    assert meter.used(0.7) == pytest.approx(9.0)


def test_refill_delay_must_be_a_non_negative_number() -> None:
    Resource("rpm", 10, 60, refill="bucket", refill_delay=0.5)
    with pytest.raises(ConfigurationError, match="refill_delay"):
        Resource("rpm", 10, 60, refill="bucket", refill_delay=-1)


def test_a_bucket_takes_its_quota_and_a_copy_is_independent() -> None:
    meter = BucketMeter(10, 10.0)
    meter.bill(8, 0.0)
    meter.set_quota(20)  # 2 per second now
    assert meter.used(1.0) == pytest.approx(6.0)
    twin = meter.copy()
    twin.bill(4, 1.0)
    assert meter.used(1.0) == pytest.approx(6.0) and twin.used(1.0) == pytest.approx(10.0)
    twin.reserve(3)
    meter.take_state(twin, 2.0)
    assert (meter.used(2.0), meter.reserved) == (pytest.approx(8.0), 3)


# -- usage billed before the meter existed (a resumed run) --------------------------------------
def test_window_charges_earlier_usage_until_each_expires() -> None:
    meter = WindowMeter(100, 60.0)
    live = meter.charge_earlier([(-70.0, 50.0), (-30.0, 40.0), (-10.0, 20.0)], 0.0)
    assert live == 60.0  # the usage at -70 s has expired already
    assert meter.used(0.0) == 60.0
    assert meter.used(30.0) == 20.0  # the one of -30 s expires at 30 s
    assert meter.used(50.0) == 0.0


def test_bucket_charges_the_level_earlier_usage_leaves_now() -> None:
    # 60 per minute: 1 per second. 40 at -30 s drained to 15 by -5 s; 40 more then: 50 now.
    meter = BucketMeter(60, 60.0)
    assert meter.charge_earlier([(-5.0, 40.0), (-30.0, 40.0)], 0.0) == pytest.approx(50.0)
    assert meter.used(0.0) == pytest.approx(50.0)
    # A burst long gone (drained to empty) counts for nothing, whatever its size.
    gone = BucketMeter(60, 60.0)
    assert gone.charge_earlier([(-100.0, 60.0)], 0.0) == 0.0
    assert gone.used(0.0) == 0.0


def test_bucket_charge_matches_billing_the_same_usage_as_it_happened() -> None:
    rng = random.Random(5)
    entries = [(rng.uniform(-120.0, 0.0), rng.uniform(0.0, 30.0)) for _ in range(200)]
    replayed = BucketMeter(600, 60.0)
    for at, amount in sorted(entries):
        replayed.bill(amount, at)
    charged = BucketMeter(600, 60.0)
    assert charged.charge_earlier(entries, 0.0) == pytest.approx(replayed.used(0.0))
