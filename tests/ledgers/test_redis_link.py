"""The Redis ledger's link (rate_limited.ledgers._redis_link): its code loaded as a Redis
Function library or, without functions, as a cached script, and loaded again when Redis
lost it; its connections closed when the ledger can't be made. Against a private
redis-server (the tests flush its code and count its clients)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rate_limited import Resource
from rate_limited.exceptions import ConfigurationError, LedgerWarning
from rate_limited.ledgers import _lua
from rate_limited.ledgers.redis import RedisLedger
from tests.ledgers.test_redis import _redis_server, held, requests, tokens, wait_for
from tests.stores.conftest import _free_port


@pytest.fixture
def server() -> Iterator[str]:
    port = _free_port()
    process = _redis_server(port)
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


def test_the_code_is_a_function_library_and_comes_back_after_a_flush(server: str) -> None:
    ledger = RedisLedger(f"{server}?name=lib", [requests(quota=100)])
    client = redis.Redis.from_url(server, decode_responses=True)
    try:
        assert ledger._link._call[0] == "FCALL"
        libraries = client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", _lua.FUNCTION)
        assert libraries, "the library is loaded under its digest's name"
        assert ledger.try_reserve([(1.0, 0.0, None)], 0.0) is not None
        client.execute_command("FUNCTION", "FLUSH")  # e.g. a restart without persistence
        assert ledger.try_reserve([(1.0, 0.0, None)], 0.0) is not None  # loaded again
        assert held(ledger)["requests"][0] == pytest.approx(2.0, abs=0.1)  # a bucket: drains
    finally:
        ledger.close()
        client.close()


def test_without_functions_the_code_is_a_cached_script(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis older than 7 (no FUNCTION): EVALSHA with the script's digest, loaded
    again after SCRIPT FLUSH."""
    execute = redis.Redis.execute_command

    def without_functions(self: redis.Redis, *args: Any, **options: Any) -> Any:
        if args[0] == "FUNCTION":
            raise redis.ResponseError("ERR unknown command 'FUNCTION'")
        return execute(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", without_functions)
    ledger = RedisLedger(f"{server}?name=script", [tokens(quota=1000)])
    client = redis.Redis.from_url(server, decode_responses=True)
    try:
        assert ledger._link._call[0] == "EVALSHA"
        assert ledger.try_reserve([(100.0, 200.0, None)], 0.0) is not None
        client.script_flush()
        assert ledger.try_reserve([(100.0, 200.0, None)], 0.0) is not None
        assert held(ledger)["tokens"][:2] == (200.0, 400.0)
    finally:
        ledger.close()
        client.close()


def test_a_ledger_that_cannot_be_made_closes_its_connections(server: str) -> None:
    """Runners sharing a name count differently: the error, and no connection left."""
    client = redis.Redis.from_url(server, decode_responses=True)

    def connected() -> int:
        return int(client.info("clients")["connected_clients"])

    first = RedisLedger(f"{server}?name=decl", [tokens(refill="bucket")])
    try:
        before = connected()
        for _ in range(3):
            with pytest.raises(ConfigurationError, match="must count a resource the same way"):
                RedisLedger(f"{server}?name=decl", [tokens(refill="window")])
        wait_for(lambda: connected() == before)  # the server sees the sockets close
    finally:
        first.close()
        client.close()


def test_redis_lost_while_joining_closes_the_connections_and_says_so(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis answered the ping, then was lost before the lease was taken: the ledger is not
    made, the error is the package's (naming the server) and no socket is left open."""
    from rate_limited.exceptions import LedgerUnavailableError
    from rate_limited.ledgers._redis_link import RedisLink

    client = redis.Redis.from_url(server, decode_responses=True)

    def connected() -> int:
        return int(client.info("clients")["connected_clients"])

    def lost(self: RedisLink) -> None:
        self._conn.connect()  # the link's own connection was open when Redis went away
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(RedisLink, "_heartbeat", lost)
    try:
        before = connected()
        for _ in range(3):
            with pytest.raises(LedgerUnavailableError, match="while joining it") as caught:
                RedisLedger(f"{server}?name=joining", [requests(quota=100)])
            assert server.split("//")[1].split("/")[0] in str(caught.value)
        wait_for(lambda: connected() == before)  # the server sees the sockets close
    finally:
        client.close()


# -- secrets -----------------------------------------------------------------------------------
PASSWORD = "pw-Z9secret"


def test_a_password_in_the_url_never_shows(server: str) -> None:
    """redis-py takes the password from ``user:pw@`` or from ``?password=``: neither shows in
    the ledger's repr, its errors, its mid-run warning, ``ledger inspect``'s error, nor the
    Redis store's repr and errors (one redaction step, ``rate_limited._redact``)."""
    from rate_limited.exceptions import LedgerUnavailableError, StoreUnavailableError
    from rate_limited.ledgers.inspect import inspect
    from rate_limited.stores import RedisStore

    admin = redis.Redis.from_url(server, decode_responses=True)
    admin.config_set("requirepass", PASSWORD)
    admin.close()
    admin = redis.Redis.from_url(server, password=PASSWORD, decode_responses=True)
    url = f"{server}?password={PASSWORD}&name=pw&lease=1"
    down = f"redis://127.0.0.1:{_free_port()}/0"
    surfaces: list[str] = []
    ledger = RedisLedger(url, [requests(quota=100)])
    try:
        surfaces.append(repr(ledger))
        assert ledger.try_reserve([(1.0, 0.0, None)], 0.0) is not None
        admin.client_kill_filter(_type="normal", skipme=True)  # the ledger's link is lost
        assert ledger.try_reserve([(1.0, 0.0, None)], 0.0) is None
        notices = ledger.take_notices()
        assert notices, "a lost Redis is a LedgerWarning"
        surfaces += [text for _, text in notices]
    finally:
        ledger.close()
    store = RedisStore(f"{server}?password={PASSWORD}", secret=b"s")
    surfaces.append(repr(store))
    store.close()
    for make in (
        lambda: RedisLedger(f"{down}?password={PASSWORD}", [requests()]),
        lambda: RedisLedger(f"redis://user:{PASSWORD}@{down[8:]}", [requests()]),
        lambda: inspect(f"{down}?password={PASSWORD}&name=x"),
        lambda: RedisStore(f"{down}?password={PASSWORD}", secret=b"s"),
    ):
        with pytest.raises((LedgerUnavailableError, StoreUnavailableError)) as caught:
            make()
        surfaces.append(str(caught.value))
    admin.close()
    assert len(surfaces) >= 7
    for text in surfaces:
        assert PASSWORD not in text
        assert "127.0.0.1" in text  # the URL is still shown, its password hidden


# -- a Redis that refuses the calls ------------------------------------------------------------
def _refuse(kind: str, admin: redis.Redis) -> Callable[[], None]:
    """Make the server refuse the ledger's calls as ``kind`` says; returns the undoing."""
    if kind == "oom":
        admin.config_set("maxmemory", "1")
        return lambda: admin.config_set("maxmemory", "0")
    if kind == "readonly":  # a failover made it a replica (of a master that is not there)
        admin.replicaof("127.0.0.1", str(_free_port()))
        return lambda: admin.replicaof("NO", "ONE")
    assert kind == "noperm"  # an ACL change took the ledger's user's rights away
    admin.execute_command("ACL", "SETUSER", "ledger", "-@all")
    return lambda: admin.execute_command("ACL", "SETUSER", "ledger", "+@all")


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        pytest.param("oom", "OOM", id="out-of-memory"),
        pytest.param("readonly", "READONLY", id="read-only-after-failover"),
        pytest.param("noperm", "NOPERM", id="acl-change"),
    ],
)
def test_a_redis_refusing_the_calls_pauses_admission_and_loses_nothing(
    server: str, kind: str, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis answers but refuses the calls (OOM, READONLY, NOPERM): as if it were away.
    Nothing is admitted, a LedgerWarning names the error, the settlements wait in order,
    ``close`` never raises, and once Redis takes writes again all is billed there."""
    admin = redis.Redis.from_url(server, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "ledger", "on", ">pw", "~*", "&*", "+@all")
    url = f"redis://ledger:pw@{server[len('redis://') :]}?name=refuse&lease=5"
    hourly = Resource("requests", quota=100, time_window_seconds=3600)  # nothing expires
    ledger = RedisLedger(url, [hourly])
    ledger._spares.ttl = 0.0  # no call follows another: no spares, every admission asks Redis
    undo = None
    try:
        first = ledger.try_reserve([(0.0, 1.0, None)], 0.0)
        assert first is not None
        undo = _refuse(kind, admin)
        assert ledger.try_reserve([(0.0, 1.0, None)], 0.0) is None  # never over-admit
        notices = ledger.take_notices()  # the keeper thread may have found it first
        assert notices and {category for category, _ in notices} == {LedgerWarning}
        assert all("refuses its calls" in text and code in text for _, text in notices)
        ledger.settle(first, [1.0], 0.0)
        assert ledger._link.outbox  # kept while refused
        assert ledger.try_reserve([(0.0, 1.0, None)], 0.0) is None  # paused: no new call
        undo()
        undo = None

        def admitted() -> bool:  # once its retry delay is past
            return ledger.try_reserve([(0.0, 1.0, None)], 0.0) is not None

        wait_for(admitted)
        wait_for(lambda: not ledger._link.outbox)
        assert held(ledger)["requests"] == (1.0, 1.0, 100.0)  # billed, held: once each
    finally:
        if undo is not None:
            undo()
        ledger.close()
        admin.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_close_never_raises_on_a_redis_refusing_the_calls(server: str) -> None:
    admin = redis.Redis.from_url(server, decode_responses=True)
    ledger = RedisLedger(f"{server}?name=refuse-close&lease=5", [requests(quota=100)])
    try:
        assert ledger.try_reserve([(1.0, 0.0, None)], 0.0) is not None
        admin.config_set("maxmemory", "1")
        ledger.close()  # the lease gives its reservations back later
        assert ledger.closed
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()


def test_an_error_of_our_own_call_is_raised_not_taken_for_redis_away(server: str) -> None:
    """A ResponseError that is no server state (a bug in an operation) is not retried for
    ever in silence: it is raised."""
    ledger = RedisLedger(f"{server}?name=bug", [requests(quota=100)])
    try:
        with pytest.raises(redis.ResponseError):
            ledger._link.run("no_such_operation", [])
        assert ledger._link.down_since is None
    finally:
        ledger.close()


# -- a Redis restarted without its data --------------------------------------------------------
def test_a_redis_restarted_without_its_data_counts_the_meters_as_full() -> None:
    """Redis restarted without persistence: the ledger's meters are gone while the
    provider's may still be full. The ledger finds its generation key missing, says so (a
    LedgerWarning), and the meters start full at that time: nothing is admitted until they
    drain (bucket) or expire (window) as the provider's would."""
    port = _free_port()
    process = _redis_server(port)
    bucket = Resource("requests", quota=10, time_window_seconds=60, refill="bucket")
    window = Resource("tokens", quota=1000, time_window_seconds=3600, refill="window")
    ledger = RedisLedger(f"redis://127.0.0.1:{port}/0?name=gen&lease=5", [bucket, window])
    ledger._spares.ttl = 0.0  # no call follows another: no spares, every admission asks Redis
    try:
        assert ledger.try_reserve([(1.0, 0.0, None), (10.0, 0.0, None)], 0.0) is not None
        assert ledger.take_notices() == []  # joining is no loss
        process.kill()
        process.wait()
        process = _redis_server(port)  # empty

        def answered() -> bool:  # once its retry delay is past
            ledger.try_reserve([(1.0, 0.0, None), (10.0, 0.0, None)], 0.0)
            return ledger._link.down_since is None

        wait_for(answered)
        texts = [text for _, text in ledger.take_notices()]
        assert any("lost the ledger's state" in text for text in texts), texts
        assert ledger.try_reserve([(1.0, 0.0, None), (10.0, 0.0, None)], 0.0) is None
        levels = held(ledger)
        assert levels["requests"][0] == pytest.approx(10.0, abs=1.0)  # drains from full
        assert levels["tokens"][0] == 1000.0  # expires a window after the loss
    finally:
        ledger.close()
        process.kill()
        process.wait()


def test_a_new_ledger_starts_empty_and_a_second_runner_sees_no_loss(server: str) -> None:
    first = RedisLedger(f"{server}?name=fresh", [requests(quota=10)])
    second = RedisLedger(f"{server}?name=fresh", [requests(quota=10)])
    try:
        assert first._link.generation == second._link.generation is not None
        assert held(second)["requests"][0] == 0.0
        assert first.take_notices() == second.take_notices() == []
    finally:
        first.close()
        second.close()


def _lose_the_reply_of_the_call_carrying(ledger: RedisLedger, op: str) -> list[str]:
    """Redis runs the ledger's next call carrying ``op``, and answers, but the answer is
    lost (the connection drops before it arrives). Returns a list that gets an item when
    that happened."""
    execute = ledger._link._execute
    lost: list[str] = []

    def lose(args: list[str]) -> Any:
        result = execute(args)
        if op in args and not lost:
            lost.append("lost")
            raise redis.ConnectionError("the connection dropped before the reply")
        return result

    ledger._link._execute = lose  # type: ignore[method-assign]
    return lost


def test_a_call_whose_reply_was_lost_is_never_run_twice(ledger_url: str) -> None:
    """Redis ran a settlement and an admission, and the reply was lost: the call sent
    again is answered from what Redis ran (the settlement billed once), and the admission
    nobody waits for any more is given back (not held until the process ends)."""
    reserved = tokens(settle="reserved")  # holds 100 + 200 at admission
    ledger, other = RedisLedger(ledger_url, [reserved]), RedisLedger(ledger_url, [reserved])
    try:
        ledger._spares.ttl = 0.0  # no spares: every admission is a call
        first = ledger.try_reserve([(100.0, 200.0, None)], 0.0)
        assert first is not None
        lost = _lose_the_reply_of_the_call_carrying(ledger, "settle")
        with ledger._link._lock:
            ledger._link._armed = True  # the sender thread is not woken: it goes with the next
        ledger.settle(first, [500.0], 0.0)  # 300 more than held: billed once
        assert ledger.try_reserve([(100.0, 200.0, None)], 0.0) is None  # ran, but unanswered
        assert lost
        # the keeper's next heartbeat sends the lost call again, then the admission's release
        wait_for(lambda: ledger._link._unanswered is None and not ledger._link.outbox)
        assert held(other)["tokens"][:2] == pytest.approx((600.0, 0.0))
        notices = ledger.take_notices()
        assert notices and {category for category, _ in notices} == {LedgerWarning}
    finally:
        ledger.close()
        other.close()
