"""Spares (rate_limited.ledgers._redis_spares): admissions made ahead for a fast stream of
calls, against a real redis-server. Counted by script calls and by what the shared meters
hold, never by time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rate_limited import Resource
from rate_limited.ledgers.redis import RedisLedger, RedisReservation
from tests.ledgers.test_redis import held, tokens, wait_for

DEMAND = [(1.0, 0.0, None), (100.0, 200.0, None)]


def requests(quota: float) -> Resource:
    """Requests in a window of an hour: nothing drains during a test."""
    return Resource("requests", quota=quota, time_window_seconds=3600)


@pytest.fixture
def make(ledger_url: str) -> Iterator[Callable[..., RedisLedger]]:
    """Ledgers on one shared name whose calls always "follow" each other (a stall of the
    machine between two calls must not decide whether spares are made)."""
    made: list[RedisLedger] = []

    def make(resources: list[Resource], ttl: float = 3600.0) -> RedisLedger:
        ledger = RedisLedger(ledger_url, resources)
        ledger._spares.ttl = ttl
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def count_calls(ledger: RedisLedger) -> list[int]:
    """Counts the script calls with an admission ``ledger`` makes (one per round trip;
    the keeper thread's heartbeats are not counted)."""
    calls = [0]
    execute = ledger._link._execute

    def counted(args: list[str]) -> Any:
        calls[0] += "reserve" in args
        return execute(args)

    ledger._link._execute = counted  # type: ignore[method-assign]
    return calls


def test_a_fast_stream_needs_one_round_trip_in_nine_calls(
    make: Callable[..., RedisLedger],
) -> None:
    ledger = make([requests(quota=1000), tokens(quota=1_000_000, settle="reserved")])
    other = make([requests(quota=1000), tokens(quota=1_000_000, settle="reserved")])
    calls = count_calls(ledger)
    admitted = [ledger.try_reserve(DEMAND, 0.0) for _ in range(15)]
    assert all(r is not None for r in admitted)
    # the first call asks for no spare; the second makes 8, taken by the 8 next calls;
    # the 11th makes 8 more, 4 of which are taken
    assert calls[0] == 3
    # every admission is one on every meter, held in Redis: the other process sees them
    # once the takes went (15 calls, 4 spares still held), this one shows only its calls
    wait_for(lambda: not ledger._link.outbox)
    assert held(other)["tokens"][:2] == pytest.approx((15 * 300.0, 4 * 300.0))
    assert held(ledger)["tokens"][:2] == pytest.approx((15 * 300.0, 0.0))
    for reservation in admitted:
        assert reservation is not None
        ledger.settle(reservation, [0.0, 150.0], 0.0)  # reserved: the estimate stays
    ledger.close()  # gives back the spares: only the calls stay billed
    assert held(other)["tokens"][:2] == pytest.approx((15 * 300.0, 0.0))
    assert held(other)["requests"][:2] == pytest.approx((15.0, 0.0), abs=0.1)


def test_a_spare_admits_a_smaller_call_for_what_it_needs(
    make: Callable[..., RedisLedger],
) -> None:
    ledger = make([tokens(quota=1_000_000)])
    other = make([tokens(quota=1_000_000)])
    calls = count_calls(ledger)
    first = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
    second = ledger.try_reserve([(100.0, 200.0, None)], 0.0)  # makes spares of 100 + 200
    small = ledger.try_reserve([(10.0, 20.0, None)], 0.0)
    assert first and second and small and calls[0] == 2
    assert list(small.demand) == [(10.0, 20.0, None)]
    big = ledger.try_reserve([(500.0, 200.0, None)], 0.0)  # more than a spare: to Redis
    assert big is not None and calls[0] == 3
    # the too small spares were given back; the big call's admission made bigger ones
    assert all(s.demand[0][0] == 500.0 for s in ledger._spares._held[(None,)])
    for reservation in (first, second, small, big):
        ledger.settle(reservation, [50.0], 0.0)
    ledger.close()
    # settle="actual": the arguments usage and the actual 50 of each call, nothing else
    assert held(other)["tokens"][:2] == pytest.approx((710.0 + 4 * 50.0, 0.0))


def test_spares_never_take_more_than_half_a_quota(make: Callable[..., RedisLedger]) -> None:
    """Another process can still admit what the quota has left: spares are made only
    while every meter stays below half of its quota."""
    one, other = make([requests(quota=10)]), make([requests(quota=10)])
    demand = [(1.0, 0.0, None)]
    assert all(one.try_reserve(demand, 0.0) is not None for _ in range(5))
    assert len(one._spares) == 0
    assert all(other.try_reserve(demand, 0.0) is not None for _ in range(5))
    assert other.try_reserve(demand, 0.0) is None and one.try_reserve(demand, 0.0) is None


def test_spares_are_made_while_the_provider_reports(make: Callable[..., RedisLedger]) -> None:
    """The presets' path: with the provider reporting on the calls, a fast stream still
    needs one round trip in nine calls."""
    ledger = make([requests(quota=1000), tokens(quota=1_000_000, settle="reserved")])
    ledger.expect_reports()
    calls = count_calls(ledger)
    assert all(ledger.try_reserve(DEMAND, 0.0) for _ in range(10))
    assert calls[0] == 2 and len(ledger._spares) == 0  # the 2nd made 8, the 8 next took them


def test_a_report_on_a_call_taken_from_a_spare_is_billed(
    make: Callable[..., RedisLedger],
) -> None:
    """A call admitted on a spare is compared with the room the meter believed once its
    spare was held (the mark of the admission that made it): a user of the key outside
    the ledger is billed, a report showing the room believed is not."""
    ledger = make([tokens(quota=100_000, settle="reserved")])
    other = make([tokens(quota=100_000, settle="reserved")])
    ledger.expect_reports()
    demand = [(100.0, 200.0, None)]
    first, second = ledger.try_reserve(demand, 0.0), ledger.try_reserve(demand, 0.0)
    taken = ledger.try_reserve(demand, 0.0)  # a spare: no round trip
    assert first and second and isinstance(taken, RedisReservation) and len(ledger._spares) == 7
    # believed: 2 calls and 8 spares of 300 held, 97,000 left; the provider saw the same
    ledger.reconcile("tokens", 97_000.0, 0.0, admission=taken)
    wait_for(lambda: not ledger._link.outbox)
    assert held(other)["tokens"] == pytest.approx((900.0, 7 * 300.0, 100_000.0))
    # 5,000 used elsewhere on the key: billed, once
    ledger.reconcile("tokens", 92_000.0, 0.0, admission=taken)
    ledger.reconcile("tokens", 92_000.0, 0.0, admission=taken)
    wait_for(lambda: not ledger._link.outbox)
    assert held(other)["tokens"][0] == pytest.approx(5_900.0)


def test_a_429_on_a_call_taken_from_a_spare_counts_the_spares_held(
    make: Callable[..., RedisLedger],
) -> None:
    """A refused call taken from the j-th spare is corrected from what the meter held once
    that spare was made: the admission's level plus j spares, not the admission's alone
    (which would bill the refused call's charge twice)."""
    bucket = tokens(quota=10_000, settle="reserved", refill="bucket")  # drains 2.8 per s
    ledger, other = make([bucket]), make([bucket])
    ledger.expect_reports()
    demand = [(100.0, 200.0, None)]
    first, second = ledger.try_reserve(demand, 0.0), ledger.try_reserve(demand, 0.0)
    taken = ledger.try_reserve(demand, 0.0)  # the first spare: held 600 + 300
    assert first and second and isinstance(taken, RedisReservation)
    assert taken.held_at(0)[0] == pytest.approx(900.0, abs=50.0)
    ledger.refused(taken, 0.0)
    wait_for(lambda: not ledger._link.outbox)
    # its own billing refunded; then billed the room believed free (9,100) and its charge
    assert held(other)["tokens"][0] == pytest.approx(600.0 + 9_100.0 + 300.0, abs=50.0)


def test_unused_spares_are_given_back(make: Callable[..., RedisLedger]) -> None:
    """The link's sender thread gives back spares unused for ``ttl`` seconds."""
    ledger = make([requests(quota=1000)], ttl=0.5)
    other = make([requests(quota=1000)])
    kept: list[RedisReservation] = []

    def made_spares() -> bool:  # two calls within ttl of each other make spares
        for _ in range(2):
            reservation = ledger.try_reserve([(1.0, 0.0, None)], 0.0)
            assert reservation is not None
            kept.append(reservation)
        return len(ledger._spares) > 0

    wait_for(made_spares)
    assert held(other)["requests"][1] > 0
    wait_for(lambda: held(other)["requests"][1] == 0.0)  # given back, no call needed
    assert held(other)["requests"][0] == pytest.approx(len(kept), abs=0.1)
    assert len(ledger._spares) == 0


def test_a_dead_processs_spares_are_billed_as_kept(make: Callable[..., RedisLedger]) -> None:
    """A process that dies holding spares: they are reaped like its calls, billed whole
    (more than the provider bills, never less)."""
    dead, alive = make([requests(quota=1000)]), make([requests(quota=1000)])
    assert dead.try_reserve([(1.0, 0.0, None)], 0.0) is not None
    assert dead.try_reserve([(1.0, 0.0, None)], 0.0) is not None
    spares = len(dead._spares)
    assert spares == 8
    dead._link._closed.set()  # as SIGKILL: it stops renewing its lease and never settles
    dead._link.keeper.join()
    wait_for(
        lambda: (
            alive.try_reserve([(0.0, 0.0, None)], 0.0) is not None
            and held(alive)["requests"][1] == 0.0
        )
    )
    assert held(alive)["requests"][0] >= 2 + spares - 0.1


def test_a_kept_call_never_begun_counts_from_its_keep_not_its_spare(
    make: Callable[..., RedisLedger],
) -> None:
    """A sync call taken from a spare whose start and failure reach the loop in one batch
    is kept without a begin: the in-memory ledger bills it at the keep; Redis billed it
    at the spare's creation, so with the spare older than a window it counted nothing."""
    window = 0.5
    ledger = make([Resource("requests", quota=100, time_window_seconds=window)])
    other = make([Resource("requests", quota=100, time_window_seconds=window)])
    first = ledger.try_reserve([(1.0, 0.0, None)], 0.0)
    second = ledger.try_reserve([(1.0, 0.0, None)], 0.0)  # makes the spares
    assert first is not None and second is not None and len(ledger._spares) == 8
    ledger.settle(first, [0.0], 0.0)
    ledger.settle(second, [0.0], 0.0)
    wait_for(lambda: held(other)["requests"][0] == 0.0)  # both out of their window
    kept = ledger.try_reserve([(1.0, 0.0, None)], 0.0, defer=True)  # a spare, no round trip
    assert kept is not None
    ledger.keep(kept, 0.0)  # it may have been billed by the provider: it counts from now
    ledger._spares.expire(force=True)
    wait_for(lambda: not ledger._link.outbox)
    assert held(other)["requests"][:2] == pytest.approx((1.0, 0.0))


def test_each_groups_spares_are_given_back_on_their_own_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spares of meters that went idle are given back after their time even while other
    meters keep making new ones (one shared deadline kept them all held); the oldest
    spare of a group is taken first."""
    from types import SimpleNamespace

    from rate_limited.ledgers import _redis_spares

    now = [100.0]
    monkeypatch.setattr(_redis_spares, "time", SimpleNamespace(monotonic=lambda: now[0]))
    released: list[Any] = []
    spares = _redis_spares.Spares(released.append, ttl=0.1)

    serial = iter(range(100))

    def made(key: str, n: int) -> list[Any]:
        return [SimpleNamespace(demand=[(1.0, 0.0, key)], n=next(serial)) for _ in range(n)]

    spares.add(made("a", 2))
    for _ in range(5):  # b keeps making spares; a is idle
        now[0] += 0.05
        spares.add(made("b", 1))
        spares.expire()
    assert {spare.demand[0][2] for spare in released} == {"a"} and len(released) == 2
    assert len(spares) == 5
    taken = spares.take([(1.0, 0.0, "b")])
    assert taken is not None and taken.n == 2 and len(spares) == 4  # b's first


def test_reports_sent_together_each_compare_with_their_own_mark(
    make: Callable[..., RedisLedger],
) -> None:
    """Reports queued together run in one script call, which reads the stack of marks once:
    each is still compared with the least room believed since its own admission."""
    ledger = make([tokens(quota=10_000, settle="reserved")], ttl=0.0)  # no spares
    ledger.expect_reports()
    demand = [(100.0, 200.0, None)]
    a, b = ledger.try_reserve(demand, 0.0), ledger.try_reserve(demand, 0.0)  # 9,700, 9,400
    assert a is not None and b is not None
    ledger.release(a, 0.0)
    ledger.release(b, 0.0)
    c = ledger.try_reserve(demand, 0.0)  # marks now: b's 9,400, then c's 9,700
    assert c is not None
    reports: list[tuple[str, list[str]]] = []
    ledger._link.tell = lambda op, args: reports.append((op, args))  # type: ignore[method-assign]
    ledger.reconcile("tokens", 9_000.0, 0.0, admission=b)  # 9,400 believed: 400 billed
    ledger.reconcile("tokens", 9_000.0, 0.0, admission=c)  # 9,700 less the 400: 300 billed
    assert [op for op, _ in reports] == ["reconcile", "reconcile"]
    with ledger._link._lock:  # one script call
        ledger._link.outbox.extend(reports)
        ledger._link._send()
    assert held(ledger)["tokens"][0] == pytest.approx(300.0 + 400.0 + 300.0)
