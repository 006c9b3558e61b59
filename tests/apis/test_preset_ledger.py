"""A preset made with ``ledger=`` shares that ledger with every Runner that wraps it:
``chat.runner()`` and ``Runner(chat, chat.resources)`` (the README says the two are the
same) alike; a ``ledger=`` given to the Runner wins. Against a real redis-server."""

from __future__ import annotations

import pytest

from rate_limited import Runner
from rate_limited.ledgers.memory import InMemoryLedger
from rate_limited.ledgers.redis import RedisLedger
from tests.ledgers.conftest import ledger_url, redis_url  # noqa: F401 - fixtures

openai = pytest.importorskip("openai")


def test_a_runner_wrapping_a_preset_uses_the_presets_ledger(ledger_url: str) -> None:  # noqa: F811
    from rate_limited.apis.openai import ChatCompletions

    with openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test") as client:
        chat = ChatCompletions(client, ledger=ledger_url)
        runners = [
            chat.runner(progress=False),
            Runner(chat, chat.resources, progress=False),
            Runner(chat, chat.resources, progress=False, ledger=None),
        ]
        mine = ledger_url.replace("?name=", "?name=own-")
        own = Runner(chat, chat.resources, progress=False, ledger=mine)
        try:
            for runner in runners:
                assert isinstance(runner._ledger, RedisLedger)
                assert runner._ledger.name == ledger_url.split("name=")[1].split("&")[0]
            assert isinstance(own._ledger, RedisLedger)
            assert own._ledger.name.startswith("own-")
            plain = Runner(lambda x: x, progress=False)
            assert isinstance(plain._ledger, InMemoryLedger)
            plain.close()
        finally:
            for runner in [*runners, own]:
                runner.close()
            from rate_limited.ledgers.inspect import reset

            reset(mine)
