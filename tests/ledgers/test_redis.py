"""RedisLedger against a real redis-server: atomic admission, Redis time, settle rules,
partitions, leases, reconciliation, and Redis lost mid-run."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rate_limited import LedgerUnavailableError, LedgerWarning, Resource, Runner
from rate_limited.exceptions import ConfigurationError
from rate_limited.ledgers.redis import RedisLedger, RedisReservation, parse_url
from tests.stores.conftest import _free_port, _ping


def tokens(settle: str = "actual", refill: str = "window", **options: Any) -> Resource:
    """Tokens: 100 for the arguments, an estimate of 200 for the results, 50 actually used
    (a window of an hour by default, so that nothing drains during a test)."""
    return Resource(
        "tokens",
        quota=options.pop("quota", 1000),
        time_window_seconds=options.pop("window", 3600),
        arguments_usage_extractor=lambda call: 100,
        max_results_usage_estimator=lambda call: 200,
        results_usage_extractor=lambda call, result: 50,
        settle=settle,  # type: ignore[arg-type]
        refill=refill,  # type: ignore[arg-type]
        **options,
    )


def requests(quota: float = 10) -> Resource:
    return Resource("requests", quota=quota, time_window_seconds=60, refill="bucket")


@pytest.fixture
def make(ledger_url: str) -> Iterator[Callable[..., RedisLedger]]:
    made: list[RedisLedger] = []

    def make(resources: list[Resource], url: str = ledger_url) -> RedisLedger:
        ledger = RedisLedger(url, resources)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def held(ledger: RedisLedger) -> dict[str, tuple[float, float, float]]:
    return ledger.snapshot(0.0)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` (an event in another process or in Redis) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.02)


# -- construction ------------------------------------------------------------------------------
def test_url_options() -> None:
    assert parse_url("redis://h:1/2?name=team&lease=5") == ("redis://h:1/2", "team", 5.0)
    assert parse_url("redis://h:1/2") == ("redis://h:1/2", "default", 20.0)
    with pytest.raises(ConfigurationError, match="lease="):
        parse_url("redis://h/0?lease=0")
    with pytest.raises(ConfigurationError, match="redis://"):
        parse_url("sqlite:///x.db")
    options = "socket_timeout=3&client_name=job&health_check_interval=5"
    assert parse_url(f"redis://h/0?name=t&{options}") == (f"redis://h/0?{options}", "t", 20.0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis://h/0?nmae=t1", r"parameter 'nmae'.*Did you mean 'name'", id="typo"),
        pytest.param("redis://h/0?name=", "name= .* must be a non-empty name", id="empty-name"),
        pytest.param("redis://h:notaport/0", "not a port number", id="port"),
        pytest.param(123, "got int 123", id="not-a-string"),
    ],
)
def test_a_bad_ledger_url_is_a_configuration_error(url: Any, message: str) -> None:
    """At Runner(...) and at a preset's construction, before anything is sent."""
    import openai

    from rate_limited.apis.openai import ChatCompletions

    with pytest.raises(ConfigurationError, match=message):
        Runner(lambda: None, [requests()], ledger=url)
    client = openai.OpenAI(api_key="sk-test-not-used", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigurationError, match=message):
        ChatCompletions(client, requests_per_minute=10, ledger=url)
    client.close()


def test_unreachable_at_construction_is_a_clear_error() -> None:
    url = f"redis://:secret@127.0.0.1:{_free_port()}/0"
    with pytest.raises(LedgerUnavailableError, match=r"127\.0\.0\.1.*redis-server") as info:
        Runner(lambda: None, [requests()], ledger=url)
    assert "secret" not in str(info.value)


def test_runners_sharing_a_name_must_count_alike(make: Callable[..., RedisLedger]) -> None:
    make([tokens(refill="bucket")])
    with pytest.raises(ConfigurationError, match="must count a resource the same way"):
        make([tokens(refill="window")])


def test_the_redis_ledger_implements_the_ledger_interface(
    make: Callable[..., RedisLedger],
) -> None:
    """The engine holds a ``ledgers.base.Ledger`` and does not know which (mypy checks the
    signatures where ``open_ledger`` returns it)."""
    from rate_limited.ledgers import Ledger

    ledger = make([requests(quota=3)])
    assert isinstance(ledger, Ledger)
    reservation = ledger.try_reserve(((1.0, 0.0, None),), 0.0)
    assert reservation is not None and list(reservation.demand) == [(1.0, 0.0, None)]
    ledger.set_quota("requests", 1.0)
    assert ledger.quota("requests") == 1.0
    assert ledger.try_reserve(((1.0, 0.0, None),), 0.0) is None  # the quota was lowered


# -- admission -------------------------------------------------------------------------------
def test_admission_is_all_or_nothing(make: Callable[..., RedisLedger]) -> None:
    ledger = make([requests(quota=2), tokens()])
    demand = [(1.0, 0.0, None), (100.0, 200.0, None)]
    first = ledger.try_reserve(demand, 0.0)
    second = ledger.try_reserve(demand, 0.0)
    assert first is not None and second is not None
    assert held(ledger)["tokens"][:2] == (200.0, 400.0)
    # requests is full: nothing is taken from tokens either
    assert ledger.try_reserve(demand, 0.0) is None
    assert held(ledger)["tokens"][:2] == (200.0, 400.0)
    assert ledger.binding(demand, 0.0) == "requests"


def test_processes_share_one_quota(ledger_url: str, make: Callable[..., RedisLedger]) -> None:
    """Two ledgers (as two processes would have) on one name see each other's usage,
    whatever their own clocks say: the meters run on Redis's time."""
    one, other = make([requests(quota=3)]), make([requests(quota=3)])
    demand = [(1.0, 0.0, None)]
    assert one.try_reserve(demand, 0.0) is not None
    assert other.try_reserve(demand, 1e9) is not None  # a clock far away: no matter
    assert one.try_reserve(demand, -5.0) is not None
    assert other.try_reserve(demand, 1e9) is None
    # a bucket of 3 per 60 s refills 1 in 20 s, counted from Redis's TIME
    wait = other.next_free_time(demand, 1e9) - 1e9
    assert 0 < wait <= 20.0 + 1e-6
    assert one.next_free_time(demand, 7.0) - 7.0 == pytest.approx(wait, abs=1.0)


@pytest.mark.parametrize(
    ("settle", "used_after", "billed"),
    [
        # billed: the arguments usage (100) and the results by the rule
        pytest.param("actual", 150.0, 150.0, id="actual-replaces-the-estimate"),
        pytest.param("reserved", 300.0, 300.0, id="reserved-keeps-the-estimate"),
    ],
)
def test_settle_rules(
    make: Callable[..., RedisLedger], settle: str, used_after: float, billed: float
) -> None:
    ledger = make([tokens(settle=settle, quota=10_000)])
    reservation = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
    assert reservation is not None
    used, reserved, _ = held(ledger)["tokens"]
    assert (round(used), reserved) == ((100, 200.0) if settle == "actual" else (300, 0.0))
    assert ledger.settle(reservation, [50.0], 0.0) == [billed]
    used, reserved, _ = held(ledger)["tokens"]
    assert (used, reserved) == pytest.approx((used_after, 0.0), abs=1.0)  # drains ~0.17/s


def test_reserved_bills_what_a_result_has_above_its_estimate(
    make: Callable[..., RedisLedger],
) -> None:
    ledger = make([tokens(settle="reserved", quota=10_000)])
    reservation = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
    assert reservation is not None
    assert ledger.settle(reservation, [500.0], 0.0) == [600.0]  # arguments + results
    assert held(ledger)["tokens"][0] == pytest.approx(600.0, abs=1.0)


def test_release_and_keep(make: Callable[..., RedisLedger]) -> None:
    ledger = make([tokens(quota=10_000)])
    one = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
    two = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
    assert one is not None and two is not None
    ledger.release(one, 0.0)  # never billed: everything back
    ledger.keep(two, 0.0)  # may have been billed: the estimate stays used
    used, reserved, _ = held(ledger)["tokens"]
    assert (used, reserved) == pytest.approx((300.0, 0.0), abs=1.0)


def test_window_meter_expires_on_redis_time(make: Callable[..., RedisLedger]) -> None:
    ledger = make([tokens(refill="window", quota=300, window=3600)])
    demand = [(100.0, 200.0, None)]
    reservation = ledger.try_reserve(demand, 0.0)
    assert reservation is not None
    ledger.settle(reservation, [50.0], 0.0)
    assert held(ledger)["tokens"][:2] == (150.0, 0.0)
    # 150 used: the next 300 fits once the first 150 expires, an hour after it was billed
    wait = ledger.next_free_time(demand, 0.0)
    assert 3000 < wait <= 3600


def test_partitions_have_meters_of_their_own(make: Callable[..., RedisLedger]) -> None:
    model = Resource(
        "requests",
        quota=1,
        time_window_seconds=60,
        partition=lambda call: call.get_argument("model"),
        partition_quotas={"big": 2},
    )
    ledger = make([model])
    assert ledger.partitioned
    assert ledger.try_reserve([(1.0, 0.0, "small")], 0.0) is not None
    assert ledger.try_reserve([(1.0, 0.0, "small")], 0.0) is None
    assert ledger.try_reserve([(1.0, 0.0, "big")], 0.0) is not None
    assert ledger.try_reserve([(1.0, 0.0, "big")], 0.0) is not None
    assert ledger.quota("requests", "big") == 2.0
    assert set(ledger.partitions(0.0)) == {("requests", "small"), ("requests", "big")}


def test_deferred_admission_bills_when_the_call_begins(make: Callable[..., RedisLedger]) -> None:
    ledger = make([tokens(settle="reserved", quota=10_000)])
    reservation = ledger.try_reserve([(100.0, 200.0, None)], 0.0, defer=True)
    assert reservation is not None and reservation.deferred
    assert held(ledger)["tokens"][:2] == (0.0, 300.0)  # held, not billed yet
    ledger.begin(reservation, 0.0)
    used, reserved, _ = held(ledger)["tokens"]
    assert (used, reserved) == pytest.approx((300.0, 0.0), abs=1.0)


# -- the provider's view -----------------------------------------------------------------------
def test_a_header_showing_less_room_is_billed(make: Callable[..., RedisLedger]) -> None:
    ledger = make([tokens(settle="reserved", quota=10_000)])
    ledger.expect_reports()  # as a preset's Runner does: admissions record their room
    reservation = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
    assert isinstance(reservation, RedisReservation)
    # the ledger believes 9,700 left; the provider says 9,000: 700 more were used elsewhere
    ledger.reconcile("tokens", 9000.0, 0.0, admission=reservation)
    assert held(ledger)["tokens"][0] == pytest.approx(1000.0, abs=2.0)
    # a header showing more room than believed changes nothing
    ledger.reconcile("tokens", 9999.0, 0.0, admission=reservation)
    assert held(ledger)["tokens"][0] == pytest.approx(1000.0, abs=2.0)


def test_a_429_corrects_the_tightest_meter(make: Callable[..., RedisLedger]) -> None:
    ledger = make([requests(quota=100), tokens(quota=400, settle="reserved", refill="bucket")])
    reservation = ledger.try_reserve([(1.0, 0.0, None), (100.0, 200.0, None)], 0.0)
    assert reservation is not None
    ledger.refused(reservation, 0.0)
    shown = held(ledger)
    assert shown["requests"][0] == pytest.approx(0.0, abs=0.1)  # released, not corrected
    # tokens was the tightest: billed what it believed free (100) plus the charge (300)
    assert shown["tokens"][0] == pytest.approx(400.0, abs=1.0)


# -- leases ------------------------------------------------------------------------------------
def test_a_dead_holders_reservations_come_back(make: Callable[..., RedisLedger]) -> None:
    dead, alive = make([tokens(quota=1000)]), make([tokens(quota=1000)])
    assert dead.try_reserve([(100.0, 200.0, None)], 0.0) is not None
    assert alive.try_reserve([(100.0, 200.0, None)], 0.0) is not None
    dead._link._closed.set()  # as SIGKILL: it stops renewing its lease and never settles
    dead._link.keeper.join()
    assert held(alive)["tokens"][1] == 400.0
    # past its lease (1 s), the next script any process runs bills it as kept: its held
    # estimate becomes used (it may have been sent), and the reservation is gone
    wait_for(
        lambda: (
            alive.try_reserve([(0.0, 0.0, None)], 0.0) is not None
            and (held(alive)["tokens"][1] == 200.0)
        )
    )
    assert held(alive)["tokens"][0] >= 350.0  # both arguments usages and the kept 200, drained


def test_close_gives_up_what_it_holds(make: Callable[..., RedisLedger]) -> None:
    one, other = make([tokens(quota=1000)]), make([tokens(quota=1000)])
    assert one.try_reserve([(100.0, 200.0, None)], 0.0) is not None
    one.close()
    assert held(other)["tokens"][1] == 0.0


# -- Runners -----------------------------------------------------------------------------------
def test_runners_on_one_ledger_share_the_quota(ledger_url: str) -> None:
    """Two Runners admitted against one bucket of 4: the fifth call must wait for refill,
    never be admitted twice over (counted by admissions, not by time)."""
    started: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> int:
        with lock:
            started.append(i)
        return i

    quota = Resource("requests", quota=4, time_window_seconds=3600, refill="bucket")
    one = Runner(call, [quota], ledger=ledger_url, progress=False)
    other = Runner(call, [quota], ledger=ledger_url, progress=False)
    try:
        for i in range(3):
            one.schedule(i)
        assert one.run().results == [0, 1, 2]
        for i in range(3, 6):
            other.schedule(i)
        handle = other.start()
        wait_for(lambda: len(started) == 4)
        assert other._ledger.binding([(1.0, 0.0, None)], 0.0) == "requests"
        handle.stop()
        assert sorted(started) == [0, 1, 2, 3]
    finally:
        one.close()
        other.close()


# -- Redis lost mid-run --------------------------------------------------------------------------
def _redis_server(port: int) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _ping(port))
    return process


def test_redis_lost_mid_run_pauses_admission_and_loses_nothing() -> None:
    port = _free_port()
    server = [_redis_server(port)]
    down = threading.Event()
    started_while_down: list[int] = []

    def restart_when_noticed(ledger: RedisLedger) -> None:
        wait_for(lambda: ledger._link.down_since is not None)
        down.clear()  # no server runs until the new one is started: it can't admit before
        server[0] = _redis_server(port)

    def call(i: int) -> int:
        if down.is_set():
            started_while_down.append(i)
        if i == 0:  # the first call takes the server away, and it comes back later
            down.set()
            server[0].kill()
            server[0].wait()
            threading.Thread(target=restart_when_noticed, args=(runner._ledger,)).start()
        return i

    # the new server has no data: its meters start full (the provider's may be), and this
    # one drains a request in 10 ms
    quota = Resource("requests", quota=6000, time_window_seconds=60, refill="bucket")
    url = f"redis://127.0.0.1:{port}/0?name=outage&lease=5"
    runner = Runner(call, [quota], ledger=url, max_concurrent=1, progress=False)
    try:
        for i in range(10):
            runner.schedule(i)
        with pytest.warns(LedgerWarning) as caught:
            result = runner.run()
        texts = " / ".join(str(warning.message) for warning in caught)
        assert "nothing is admitted until it is back" in texts
        assert "lost the ledger's state" in texts
        assert result.results == list(range(10))  # nothing lost
        assert started_while_down == []  # nothing admitted without the shared view
        # what call 0 used was billed to the new server once it was back
        client = redis.Redis(port=port)
        wait_for(lambda: not runner._ledger._link.outbox)
        assert client.exists("rate_limited:ledger:{outage}:m:requests:")
        client.close()
    finally:
        runner.close()
        server[0].kill()
        server[0].wait()


# -- declared quotas ---------------------------------------------------------------------------
def test_the_quota_a_runner_declares_applies_when_it_joins(
    make: Callable[..., RedisLedger],
) -> None:
    """The first Runner on a ledger does not fix its quotas for ever: a later one declaring
    another quota (the user's latest intent) sets it on the shared meter, silently when no
    Runner of the old declaration still runs."""
    first = make([requests(quota=2)])
    assert first.try_reserve([(1.0, 0.0, None)], 0.0) is not None  # the meter exists
    first.close()
    second = make([requests(quota=1000)])
    assert held(second)["requests"][2] == 1000.0
    assert second.quota("requests") == 1000.0


def test_changing_a_quota_a_running_runner_declared_warns(
    make: Callable[..., RedisLedger],
) -> None:
    first = make([requests(quota=2)])
    assert first.try_reserve([(1.0, 0.0, None)], 0.0) is not None
    with pytest.warns(LedgerWarning, match=r"'requests'.*had quota 2\.0.*declares 1000\.0"):
        second = make([requests(quota=1000)])
    assert held(second)["requests"][2] == 1000.0
    assert held(first)["requests"][2] == 1000.0  # one shared meter: both see it


def test_the_same_declaration_keeps_a_quota_read_from_headers(
    make: Callable[..., RedisLedger],
) -> None:
    first = make([requests(quota=100)])
    assert first.try_reserve([(1.0, 0.0, None)], 0.0) is not None
    first.set_quota("requests", 30)  # e.g. the provider's x-ratelimit-limit header
    wait_for(lambda: not first._link.outbox)  # sent
    second = make([requests(quota=100)])
    assert held(second)["requests"][2] == 30.0


def test_a_changed_declaration_applies_to_each_partition(
    make: Callable[..., RedisLedger],
) -> None:
    def per_model(quotas: dict[str, float]) -> Resource:
        return Resource(
            "requests",
            quota=10,
            time_window_seconds=60,
            partition=lambda call: call.kwargs["model"],
            partition_quotas=quotas,
        )

    first = make([per_model({"ft:gpt-4o:org::x": 5})])
    for model in ("ft:gpt-4o:org::x", "other"):
        assert first.try_reserve([(1.0, 0.0, model)], 0.0) is not None
    first.close()
    second = make([per_model({"ft:gpt-4o:org::x": 50, "other": 7})])
    assert second.quota("requests", "ft:gpt-4o:org::x") == 50.0
    assert second.quota("requests", "other") == 7.0
