"""The presets as pure code: quotas, estimates, header feedback and limit discovery.

A fake SDK client returns canned raw responses and a fake ``LedgerControl`` records what
the preset tells the ledger, so every rule is checked without a server or a clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from rate_limited import ConfigurationError, Runner
from rate_limited._feedback import CURRENT_ADMISSION
from rate_limited.apis._headers import read_limits
from rate_limited.apis._preset import UNKNOWN_QUOTA
from rate_limited.apis.anthropic import AsyncMessages, Messages
from rate_limited.apis.common import RequestTooLargeError, get_requests_per_minute
from rate_limited.apis.openai import (
    AsyncChatCompletions,
    AsyncEmbeddings,
    AsyncResponses,
    ChatCompletions,
    Embeddings,
    Responses,
    default_max_output_tokens,
)
from rate_limited.apis.openai.chat import (
    estimate_input_tokens,
    estimate_tokens_used,
    get_used_tokens,
    openai_chat_resources,
)
from rate_limited.calls import Call

# Made-up model names ("m", "c"...): their cost is None, and a PriceWarning says so once
# per preset (tests/test_spend.py checks it); here it is not the point.
pytestmark = pytest.mark.filterwarnings("ignore::rate_limited.exceptions.PriceWarning")


class Raw:
    """What ``with_raw_response.create`` returns: headers and a parse()."""

    def __init__(self, value: Any, headers: dict[str, str]) -> None:
        self.value = value
        self.headers = headers

    def parse(self) -> Any:
        return self.value


class StatusError(Exception):
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.response = SimpleNamespace(headers=headers, status_code=status_code)


def chat_result(prompt: int = 10, completion: int = 5) -> Any:
    usage = SimpleNamespace(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    return SimpleNamespace(usage=usage)


class FakeClient:
    """Answers every create() from ``answers`` (a value, a Raw or an exception to raise)."""

    def __init__(self, *answers: Any, is_async: bool = False) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []
        self.max_retries = 2
        create = self._acreate if is_async else self._create
        endpoint = SimpleNamespace(with_raw_response=SimpleNamespace(create=create))
        self.chat = SimpleNamespace(completions=endpoint)
        self.responses = endpoint
        self.embeddings = endpoint
        self.messages = endpoint

    def with_options(self, max_retries: int) -> FakeClient:
        self.max_retries = max_retries
        return self

    def _create(self, **params: Any) -> Any:
        self.sent.append(params)
        answer = self.answers.pop(0) if self.answers else Raw(chat_result(), {})
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, Raw) else Raw(answer, {})

    async def _acreate(self, **params: Any) -> Any:
        return self._create(**params)


class FakeControl:
    """Records what a preset tells the ledger (LedgerControl's public surface)."""

    def __init__(self, names: list[str]) -> None:
        self.resource_names = names
        self.closed = False
        #: (resource, quota, partition)
        self.quotas: list[tuple[str, float, Any]] = []
        #: (resource, remaining, partition, admission, precision, refused)
        self.reports: list[tuple[str, float, Any, Any, float, bool]] = []

    def set_quota(self, resource: str, quota: float, partition: Any = None) -> None:
        self.quotas.append((resource, quota, partition))

    def report_remaining(
        self,
        resource: str,
        remaining: float,
        *,
        partition: Any = None,
        admission: Any = None,
        precision: float = 0.0,
        refused: bool = False,
    ) -> None:
        self.reports.append((resource, remaining, partition, admission, precision, refused))

    def pause(self, seconds: float) -> None:
        pass


def openai_headers(rpm: float, rpm_left: float, tpm: float, tpm_left: float) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(rpm_left),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(tpm_left),
    }


def call_of(preset: Any, **params: Any) -> Call:
    return Call(preset, (), params)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- quotas and estimates ------------------------------------------------------------------
def test_resources_refill_continuously_and_unknown_limits_accept_any_call() -> None:
    chat = ChatCompletions(FakeClient(), requests_per_minute=500)
    assert [(r.name, r.quota, r.time_window_seconds, r.refill) for r in chat.resources] == [
        ("requests_per_minute", 500, 60.0, "bucket"),
        ("tokens_per_minute", UNKNOWN_QUOTA, 60.0, "bucket"),
    ]
    assert chat.limits == {"requests_per_minute": 500.0, "tokens_per_minute": None}
    assert repr(chat) == "<ChatCompletions requests_per_minute=500, tokens_per_minute=?>"


@pytest.mark.parametrize(
    ("params", "output"),
    [
        pytest.param({"max_tokens": 100}, 100, id="max_tokens"),
        pytest.param({"max_tokens": 100, "n": 3}, 300, id="times-n"),
        pytest.param({"max_completion_tokens": 50, "max_tokens": 100}, 50, id="completion-wins"),
        pytest.param({}, 16_384, id="model-default"),
    ],
)
def test_chat_reserves_the_prompt_plus_max_output_times_n(
    params: dict[str, Any], output: int
) -> None:
    chat = ChatCompletions(FakeClient(), tokenizer=lambda text: len(text.split()))
    estimate = chat.resources[1].max_results_usage_estimator
    assert estimate is not None
    call = call_of(chat, model="gpt-4o-mini", messages=user("one two three"), **params)
    assert estimate(call) == 3 + 5 + 3 + output  # reply, message framing, text, output


def test_default_output_by_model_and_by_option() -> None:
    assert default_max_output_tokens("gpt-4.1-mini") == 32_768
    assert default_max_output_tokens("gpt-4-0613") == 8_192
    assert default_max_output_tokens("my-model") == 4_096
    chat = ChatCompletions(FakeClient(), default_max_tokens=256, tokenizer="conservative")
    assert chat._reserved_output({"model": "gpt-5"}) == 256


def test_responses_embeddings_and_anthropic_estimates() -> None:
    count = len
    responses = Responses(FakeClient(), tokenizer=count)
    assert responses._reserved_output({"max_output_tokens": 70}) == 70
    assert responses.raw_prompt_tokens({"input": "abcd", "instructions": "xy"}) == 3 + 5 + 4 + 2
    embeddings = Embeddings(FakeClient(), tokenizer=count)
    assert embeddings._reserved_output({"input": "abc"}) == 0
    assert embeddings.raw_prompt_tokens({"input": ["abc", [1, 2]]}) == 5
    claude = Messages(FakeClient(), tokenizer=count)
    call = call_of(claude, model="c", system="sys", messages=user("hello"), max_tokens=40)
    estimates = [r.max_results_usage_estimator for r in claude.resources]
    assert [e(call) if e is not None else None for e in estimates] == [None, 3 + 3 + 5 + 5, 40]
    assert [r.settle for r in claude.resources] == ["actual"] * 3


def test_positional_arguments_and_streaming_are_refused_at_schedule() -> None:
    chat = ChatCompletions(FakeClient(), requests_per_minute=10, tokens_per_minute=1000)
    runner = Runner(chat, chat.resources, progress=False)
    with pytest.raises(ConfigurationError, match="by keyword"):
        runner.schedule(user("x"))
    runner.schedule(model="m", messages=user("x"), max_tokens=5, stream=True)  # it streams
    responses = Responses(FakeClient(), requests_per_minute=10, tokens_per_minute=1000)
    other = responses.runner(progress=False)
    with pytest.raises(ConfigurationError, match="does not stream"):
        other.schedule(model="m", input="x", max_output_tokens=5, stream=True)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="requests_per_minute must be a positive"):
        ChatCompletions(FakeClient(), requests_per_minute=0)
    with pytest.raises(ConfigurationError, match="tokenizer must be"):
        ChatCompletions(FakeClient(), tokenizer="bpe")  # type: ignore[arg-type]


# -- clients ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sync_class", "async_class"),
    [
        pytest.param(ChatCompletions, AsyncChatCompletions, id="chat"),
        pytest.param(Responses, AsyncResponses, id="responses"),
        pytest.param(Embeddings, AsyncEmbeddings, id="embeddings"),
        pytest.param(Messages, AsyncMessages, id="messages"),
    ],
)
def test_an_async_client_makes_an_async_preset(sync_class: Any, async_class: Any) -> None:
    sync_preset = sync_class(FakeClient())
    async_preset = sync_class(FakeClient(is_async=True))
    assert type(sync_preset) is sync_class
    assert type(async_preset) is async_class
    assert asyncio.iscoroutinefunction(type(async_preset).__call__)
    assert not asyncio.iscoroutinefunction(type(sync_preset).__call__)
    assert asyncio.run(async_preset(model="m", messages=user("x"))).usage.total_tokens == 15


def test_the_sdk_retries_are_turned_off_unless_asked() -> None:
    assert ChatCompletions(FakeClient()).client.max_retries == 0
    assert ChatCompletions(FakeClient(), client_max_retries=None).client.max_retries == 2


@pytest.mark.parametrize(
    ("preset", "twin"),
    [
        pytest.param(ChatCompletions, AsyncChatCompletions, id="chat"),
        pytest.param(Responses, AsyncResponses, id="responses"),
        pytest.param(Embeddings, AsyncEmbeddings, id="embeddings"),
        pytest.param(Messages, AsyncMessages, id="messages"),
    ],
)
def test_an_async_client_makes_the_async_class(preset: Any, twin: Any) -> None:
    """``ChatCompletions(AsyncOpenAI())`` is an AsyncChatCompletions (and so on); a
    user's subclass keeps its own class (it may define its own ``__call__``)."""
    client = FakeClient(is_async=True)
    made = preset(client)
    assert type(made) is twin and asyncio.iscoroutinefunction(made.__call__)
    assert type(preset(FakeClient())) is preset  # a sync client
    assert type(twin(client)) is twin

    class Mine(preset):  # type: ignore[misc]
        pass

    assert type(Mine(client)) is Mine


def test_a_default_client_is_made_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    import openai

    assert isinstance(ChatCompletions().client, openai.OpenAI)
    assert isinstance(AsyncChatCompletions().client, openai.AsyncOpenAI)
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'rate_limited\[openai\]'"):
        ChatCompletions()
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(ImportError, match=r"pip install 'rate_limited\[anthropic\]'"):
        Messages()


# -- feedback from the headers ------------------------------------------------------------------
def attached(preset: Any) -> FakeControl:
    control = FakeControl([r.name for r in preset.resources])
    preset.attach_ledger(control)
    return control


def test_remaining_is_reported_with_the_admission_it_describes() -> None:
    """A header describes the bucket when the provider took that request: the report
    carries the attempt's admission (the ledger compares with what it believed then)."""
    client = FakeClient(Raw(chat_result(), openai_headers(600, 500, 60_000, 30_000)))
    chat = ChatCompletions(client, requests_per_minute=600, tokens_per_minute=60_000)
    control = attached(chat)
    assert control.quotas == []  # known limits: nothing to set
    admission = object()
    token = CURRENT_ADMISSION.set(admission)  # type: ignore[arg-type]
    try:
        chat(model="gpt-4o", messages=user("x"), max_tokens=5)
    finally:
        CURRENT_ADMISSION.reset(token)
    assert control.reports == [
        ("requests_per_minute", 500.0, "gpt-4o", admission, 0.0, False),
        ("tokens_per_minute", 30_000.0, "gpt-4o", admission, 0.0, False),
    ]


def test_unknown_limits_start_with_one_probe_then_are_discovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient(Raw(chat_result(), openai_headers(600, 599, 60_000, 59_000)))
    chat = ChatCompletions(client, tokenizer=len)
    requests, tokens = chat.resources
    estimate = tokens.max_results_usage_estimator
    assert estimate is not None
    estimate(call_of(chat, model="m", messages=user("x"), max_tokens=1000))
    control = attached(chat)
    # Until the model's first answer, its quotas let one call through: a probe.
    assert (requests.quota_for("m"), tokens.quota_for("m")) == (1.0, 1009.0)
    with caplog.at_level(logging.INFO, logger="rate_limited"):
        chat(model="m", messages=user("x"), max_tokens=1000)
    assert chat.limits == {"requests_per_minute": 600.0, "tokens_per_minute": 60_000.0}
    assert control.quotas == [
        ("requests_per_minute", 600.0, "m"),
        ("tokens_per_minute", 60_000, "m"),
    ]
    assert (requests.quota_for("m"), tokens.quota_for("m")) == (600.0, 60_000.0)
    assert "for m: requests_per_minute=600, tokens_per_minute=60000" in caplog.text
    # Known now: a call that can never fit is refused when scheduled.
    with pytest.raises(ValueError, match="limit for m is 60000"):
        estimate(call_of(chat, model="m", messages=user("x"), max_tokens=70_000))
    # Another model is another bucket, to discover on its own.
    assert tokens.quota_for("other") == 1.0
    assert chat.limits_for("other") == {"requests_per_minute": None, "tokens_per_minute": None}


def test_limits_per_model_given_and_overridden() -> None:
    chat = ChatCompletions(
        FakeClient(),
        requests_per_minute=500,
        tokens_per_minute=200_000,
        model_limits={"gpt-4o": {"tokens_per_minute": 30_000}, "o3": {"requests_per_minute": None}},
    )
    requests, tokens = chat.resources
    assert requests.partition is not None and tokens.settle == "reserved"
    assert chat.limits_for("gpt-4o-mini") == {
        "requests_per_minute": 500,
        "tokens_per_minute": 200_000,
    }
    assert chat.limits_for("gpt-4o") == {"requests_per_minute": 500, "tokens_per_minute": 30_000}
    assert chat.limits_for("o3") == {"requests_per_minute": None, "tokens_per_minute": 200_000}
    assert tokens.quota_for("gpt-4o") == 30_000 and requests.quota_for("o3") == 1.0
    runner = Runner(chat, chat.resources, progress=False)
    with pytest.raises(ValueError, match="tokens_per_minute"):
        runner.schedule(model="gpt-4o", messages=user("x"), max_tokens=40_000)
    runner.schedule(model="gpt-4o-mini", messages=user("x"), max_tokens=40_000)


@pytest.mark.parametrize(
    ("model_limits", "message"),
    [
        pytest.param({"m": {"tpm": 5}}, "unknown limits", id="unknown-name"),
        pytest.param({"m": {"tokens_per_minute": -1}}, "positive number", id="negative"),
        pytest.param({"m": 5}, "must map limit names", id="not-a-mapping"),
        pytest.param([("m", {})], "must map a model", id="a-list"),
    ],
)
def test_bad_model_limits_are_refused(model_limits: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ChatCompletions(FakeClient(), model_limits=model_limits)


def test_discovered_limits_become_the_declared_quotas() -> None:
    """``chat.resources`` shows what the headers said, not the placeholder quota; a limit
    the provider does not report keeps it (no limit), and a lower one replaces a given one."""
    headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"}
    chat = ChatCompletions(FakeClient(Raw(chat_result(), headers)))
    assert [r.quota for r in chat.resources] == [UNKNOWN_QUOTA, UNKNOWN_QUOTA]
    attached(chat)
    chat(model="m", messages=user("x"))
    assert [r.quota for r in chat.resources] == [600, UNKNOWN_QUOTA]
    assert "quota=600," in repr(chat.resources[0])
    lower = ChatCompletions(
        FakeClient(Raw(chat_result(), openai_headers(300, 299, 60_000, 59_000))),
        requests_per_minute=600,
        tokens_per_minute=90_000,
    )
    attached(lower)
    lower(model="m", messages=user("x"))
    assert [r.quota for r in lower.resources] == [300, 60_000]


def test_a_probe_failing_without_headers_lets_another_go() -> None:
    client = FakeClient(ConnectionError("refused"))
    chat = ChatCompletions(client, tokens_per_minute=60_000)
    control = attached(chat)
    with pytest.raises(ConnectionError):
        chat(model="m", messages=user("x"))
    assert control.quotas == [("requests_per_minute", 2.0, "m")]
    assert chat.resources[0].quota_for("m") == 2.0


def test_limits_the_provider_does_not_report_are_unlimited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59"}
    chat = ChatCompletions(FakeClient(StatusError(500, headers), Raw(chat_result(), {})))
    control = attached(chat)
    with pytest.raises(StatusError):
        chat(model="m", messages=user("x"))  # a 500 that describes the buckets
    assert chat.limits == {"requests_per_minute": 60.0, "tokens_per_minute": math.inf}
    assert ("tokens_per_minute", UNKNOWN_QUOTA, "m") in control.quotas
    claude = Messages(FakeClient(Raw(chat_result(), {})))
    attached(claude)
    with caplog.at_level(logging.WARNING, logger="rate_limited"):
        claude(model="c", messages=user("x"), max_tokens=5)
    assert set(claude.limits.values()) == {math.inf}
    assert "sent no rate-limit headers" in caplog.text


def test_a_lower_limit_in_the_headers_wins(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient(Raw(chat_result(), openai_headers(300, 299, 60_000, 59_000)))
    chat = ChatCompletions(client, requests_per_minute=600, tokens_per_minute=90_000)
    control = attached(chat)
    with caplog.at_level(logging.WARNING, logger="rate_limited"):
        chat(model="m", messages=user("x"))
    assert chat.limits == {"requests_per_minute": 300.0, "tokens_per_minute": 60_000.0}
    assert control.quotas == [
        ("requests_per_minute", 300.0, "m"),
        ("tokens_per_minute", 60_000, "m"),
    ]
    assert "lower than the 600 given" in caplog.text


def test_a_429_reports_its_headers_as_refused() -> None:
    """Its headers leave the refused request out; the ledger knows what it held."""
    headers = openai_headers(600, 100, 60_000, 500)
    chat = ChatCompletions(
        FakeClient(StatusError(429, headers)),
        requests_per_minute=600,
        tokens_per_minute=60_000,
        tokenizer=len,
    )
    control = attached(chat)
    with pytest.raises(StatusError):
        chat(model="m", messages=user("x"), max_tokens=1000)
    assert [(r[0], r[1], r[5]) for r in control.reports] == [
        ("requests_per_minute", 100.0, True),
        ("tokens_per_minute", 500.0, True),
    ]


def test_too_large_for_the_provider_is_permanent() -> None:
    headers = {**openai_headers(600, 600, 1000, 1000), "x-should-retry": "false"}
    chat = ChatCompletions(FakeClient(StatusError(429, headers)), requests_per_minute=600)
    attached(chat)
    with pytest.raises(RequestTooLargeError) as refused:
        chat(model="m", messages=user("x"), max_tokens=5000)
    assert refused.value.status_code == 429
    assert isinstance(refused.value.__cause__, StatusError)


def test_anthropic_headers_are_read() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-tokens-limit": "8000",
    }
    readings = read_limits(headers, "anthropic")
    assert {k: (r.limit, r.remaining, r.precision) for k, r in readings.items()} == {
        "requests": (50, 49, 0),
        "input_tokens": (40_000, 39_000, 500),  # "rounded to the nearest thousand"
        "output_tokens": (8000, 7000, 500),
    }
    assert read_limits({"x-ratelimit-limit-tokens": "oops"}, "openai") == {}


# -- calibration through the usage reported ----------------------------------------------------
def test_reported_usage_calibrates_later_estimates() -> None:
    chat = ChatCompletions(FakeClient(), tokens_per_minute=10**6, tokenizer=lambda t: 4 * len(t))
    extract = chat.resources[1].results_usage_extractor
    assert extract is not None
    params = {"model": "m", "messages": user("abcd"), "max_tokens": 10}
    raw = chat.raw_prompt_tokens(params)
    assert raw == 3 + 5 + 16
    for _ in range(40):
        assert extract(call_of(chat, **params), chat_result(prompt=12, completion=3)) == 15
    assert chat.prompt_tokens(params) == math.ceil(raw * (12 / raw) * 1.02)


# -- rate_limited 0.4's helpers -------------------------------------------------------------------
def create(messages: Any, max_tokens: int | None = None, n: int = 1, **other: Any) -> Any:
    return None


def test_04_estimate_counts_the_prompt_once_and_output_n_times() -> None:
    call = Call(create, (user("hello world"),), {"max_tokens": 100, "n": 2})
    assert estimate_input_tokens(call) == 3 + 5 + 4
    assert estimate_tokens_used(call, model_max_len=4096) == 12 + 200
    no_max = Call(create, (user("hello world"),), {})
    assert estimate_tokens_used(no_max, model_max_len=4096) == 12 + 4096


def test_04_usage_from_dicts_and_objects() -> None:
    call = Call(create, (user("x"),), {})
    assert get_used_tokens(call, {"usage": {"total_tokens": 7}}) == 7
    assert get_used_tokens(call, chat_result(5, 2)) == 7
    with pytest.raises(ValueError, match="total_tokens"):
        get_used_tokens(call, {"choices": []})


def test_04_resources_and_requests_per_minute() -> None:
    requests, tokens = openai_chat_resources(100, 10_000, 2048)
    assert (requests.name, requests.quota, requests.refill) == (
        "requests_per_minute",
        100,
        "bucket",
    )
    assert (tokens.name, tokens.quota, tokens.refill) == ("tokens_per_minute", 10_000, "bucket")
    assert tokens.settle == "reserved"  # OpenAI's rule
    call = Call(create, (), {"messages": user("x"), "model": "gpt-4o"})
    assert requests.partition is not None and requests.partition(call) == "gpt-4o"
    assert openai_chat_resources(1, 2, 3, settle="actual")[1].settle == "actual"
    assert get_requests_per_minute(5, refill="window").refill == "window"


def test_04_resources_take_limits_per_model() -> None:
    requests, tokens = openai_chat_resources(
        100, 10_000, 2048, model_limits={"gpt-4o": {"tokens_per_minute": 3_000}}
    )
    assert (tokens.quota_for("gpt-4o"), tokens.quota_for("gpt-4o-mini")) == (3_000, 10_000)
    assert requests.quota_for("gpt-4o") == 100
    with pytest.raises(ConfigurationError, match="unknown limit 'tpm'"):
        openai_chat_resources(1, 2, 3, model_limits={"m": {"tpm": 5}})
