"""The Redis ledger's link (rate_limited.ledgers._redis_link): its code loaded as a Redis
Function library or, without functions, as a cached script, and loaded again when Redis
lost it; its connections closed when the ledger can't be made. Against a private
redis-server (the tests flush its code and count its clients)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rate_limited.exceptions import ConfigurationError
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
