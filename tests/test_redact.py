"""One redaction step for every string that leaves the process: stored errors, log records,
the package's own exception messages and ``Call.__repr__``.

The end-to-end test greps the SQLite file, its WAL, the Redis values and every captured
log record for the secrets a run's errors carried: there must be no hit at all.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from rate_limited import (
    Call,
    PermanentError,
    QuotaExceededError,
    Resource,
    Runner,
    UsageWarning,
)
from rate_limited._redact import REDACTED, get_logger, redact, secret_values
from tests.stores.conftest import redis_url  # noqa: F401

OPENAI_KEY = "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
ANTHROPIC_KEY = "sk-ant-api03-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0"
GOOGLE_KEY = "AIzaSyA1234567890abcdefghijklmnopqrstu"
BEARER_TOKEN = "tok3nWithoutAnyKnownShape0123456789"
OWN_SECRET = "my-own-secret-value-42"  # no known shape: only its argument's name says so
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, BEARER_TOKEN, OWN_SECRET)


# -- the patterns ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "secret"),
    [
        pytest.param(f"Incorrect API key provided: {OPENAI_KEY}.", OPENAI_KEY, id="openai"),
        pytest.param(f"invalid x-api-key {ANTHROPIC_KEY}", ANTHROPIC_KEY, id="anthropic"),
        pytest.param(f"key {GOOGLE_KEY} is not valid", GOOGLE_KEY, id="google"),
        pytest.param(f"Authorization: Bearer {BEARER_TOKEN}", BEARER_TOKEN, id="bearer"),
        pytest.param(
            f"Client error '403' for url 'https://x.googleapis.com/v1/m?alt=json&key={OWN_SECRET}'",
            OWN_SECRET,
            id="url-key",
        ),
        pytest.param(f"GET /v1/items?token={OWN_SECRET}&page=2", OWN_SECRET, id="url-token"),
        pytest.param(f"GET /v1/items?api_key={OWN_SECRET}", OWN_SECRET, id="url-api_key"),
        pytest.param(f"{{'api_key': '{OWN_SECRET}', 'n': 1}}", OWN_SECRET, id="dict-repr"),
        pytest.param(f'{{"client_secret": "{OWN_SECRET}"}}', OWN_SECRET, id="json"),
        pytest.param(f"connect(password={OWN_SECRET}, host=db)", OWN_SECRET, id="kwarg"),
        pytest.param(f"X-Api-Key: {OWN_SECRET}", OWN_SECRET, id="header"),
    ],
)
def test_secret_shapes_are_redacted(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted and REDACTED in redacted


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("max_tokens=256 exceeds the context (tokens: 500)", id="token-counts"),
        pytest.param("GET https://api.openai.com/v1/chat/completions?limit=5", id="plain-url"),
        pytest.param("KeyError: 'choices'", id="key-error"),
        pytest.param("the task-abcdefghijklmnop failed", id="word-with-sk-inside"),
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def complete(prompt: str, api_key: str = "", extra_headers: Any = None) -> str:
    return prompt


def test_a_calls_secret_arguments_are_redacted_wherever_they_appear() -> None:
    call = Call(
        complete,
        ("hello",),
        {"api_key": OWN_SECRET, "extra_headers": {"Authorization": f"Bearer {BEARER_TOKEN}"}},
    )
    assert set(secret_values(call)) >= {OWN_SECRET, BEARER_TOKEN}
    text = f"upstream said: {OWN_SECRET} is unknown ({BEARER_TOKEN})"
    assert OWN_SECRET not in redact(text, secret_values(call))
    shown = repr(call)
    assert "hello" in shown and "api_key='***'" in shown
    assert OWN_SECRET not in shown and BEARER_TOKEN not in shown


def test_log_records_of_the_package_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="rate_limited"):
        get_logger("rate_limited").warning("provider said %s", f"bad key {OPENAI_KEY}")
        try:
            raise RuntimeError(f"Authorization: Bearer {BEARER_TOKEN}")
        except RuntimeError:
            get_logger("rate_limited.Runner.demo").exception("a call failed")
    assert "provider said bad key ***" in caplog.text
    for secret in (OPENAI_KEY, BEARER_TOKEN):
        assert secret not in caplog.text


# -- end to end: nothing secret reaches a store, a log or a message -----------------------------
class Unauthorized(PermanentError):
    status_code = 401


def failing_api(i: int, api_key: str) -> dict[str, int]:
    """Fails the way real clients do, with the secrets in the error text."""
    if i % 4 == 0:
        raise Unauthorized(f"Error code: 401 - Incorrect API key provided: {api_key}")
    if i % 4 == 1:
        request = httpx.Request(
            "GET", f"https://generativelanguage.googleapis.com/v1?key={GOOGLE_KEY}"
        )
        response = httpx.Response(403, request=request)
        raise httpx.HTTPStatusError(
            f"Client error '403 Forbidden' for url '{request.url}'",
            request=request,
            response=response,
        )
    if i % 4 == 2:
        raise Unauthorized(f"rejected header Authorization: Bearer {BEARER_TOKEN}")
    return {"i": i, "leak": 0}


def leaky_usage(call: Any, result: Any) -> float:
    raise KeyError(f"no usage for key {ANTHROPIC_KEY}")


@pytest.mark.parametrize("kind", [pytest.param("sqlite"), pytest.param("redis")])
def test_no_secret_reaches_the_store_its_wal_redis_or_the_logs(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    if kind == "sqlite":
        db = tmp_path / "runs.db"
        store = str(db)
    else:
        prefix = uuid.uuid4().hex
        store = f"{request.getfixturevalue('redis_url')}?prefix={prefix}"
    tokens = Resource(
        "tokens",
        100,
        60,
        results_usage_extractor=leaky_usage,
        max_results_usage_estimator=lambda c: 1,
    )
    messages: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="rate_limited"):
        runner = Runner(failing_api, [tokens], max_retries=0, progress=False, store=store)
        for i in range(12):
            key = (OPENAI_KEY, OWN_SECRET)[i % 2]
            runner.schedule(i, api_key=key)
        small = Runner(failing_api, [Resource("r", 1, 60, arguments_usage_extractor=lambda c: 2)])
        with pytest.raises(QuotaExceededError) as too_big:
            small.schedule(0, api_key=OWN_SECRET)
        messages.append(str(too_big.value))
        with pytest.warns(UsageWarning) as warned:
            result = runner.run()
        messages += [str(w.message) for w in warned]
        messages += [repr(call) for call in result.calls]
        messages += [str(w) for o in result.outcomes for w in o.warnings]
        assert [o.status.value for o in result.outcomes].count("failed") == 9
        if kind == "sqlite":
            files = [db, Path(f"{db}-wal")]
            assert files[1].stat().st_size > 0  # the records are in the WAL before close
            written = b"".join(file.read_bytes() for file in files)
        else:
            import redis

            client = redis.Redis.from_url(store.split("?")[0])
            names = list(client.scan_iter(match=f"rate_limited:store:{prefix}:*"))
            assert len(names) == 12
            written = b"".join(client.get(name) or b"" for name in names)
            client.delete(*names)
            client.close()
        runner.close()
        if kind == "sqlite":
            written += db.read_bytes()  # checkpointed into the file at close
    assert b"Incorrect API key provided: ***" in written  # the errors are stored, redacted
    logs = caplog.text
    assert "failed for good" in logs and "results_usage_extractor" in logs
    for secret in SECRETS:
        assert secret.encode() not in written, secret
        assert secret not in logs, secret
        for message in messages:
            assert secret not in message, (secret, message)
