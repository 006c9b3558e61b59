"""Token estimates: never below what the MockProvider charges, quick without tiktoken.

The conservative counter is checked against the MockProvider's own tokenizer (which is
what the integration tests and benchmarks are billed by) on a corpus of the text that
simple estimators under-count — CJK, JSON, URLs, code, emoji — and on whole request
bodies with multimodal parts, tools and formats, plus a seeded fuzz of random Unicode.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import pytest

from rate_limited.apis import _tokens
from rate_limited.apis._prompts import PromptEstimator
from rate_limited.apis._tokens import Calibration, conservative_tokens, resolve_counter
from rate_limited.testing import count_tokens
from rate_limited.testing._anthropic_wire import parse as parse_anthropic
from rate_limited.testing._openai_wire import parse as parse_openai

CORPUS = {
    "english": "The quick brown fox jumps over the lazy dog, twice; then it rests.",
    "cjk": "速率限制器在配额允许的范围内尽快发送请求。東京の天気は晴れです。안녕하세요 세계",
    "json": json.dumps({"a": 1, "b": [1, 2, {"c": None}], "d": "x"}, separators=(",", ":")),
    "pretty-json": json.dumps({"key": "value", "list": [1, 2, 3]}, indent=2),
    "url": "https://api.example.com/v1/chat/completions?model=gpt-4o-mini&n=2#frag",
    "code": "def f(x: int) -> int:\n    return x ** 2 + 3 * x - 1  # square\n",
    "emoji": "ok 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 ✨✨",
    "digits": "3.14159265358979 and 1234567890123 and 0x1f",
    "base64": "aGVsbG8gd29ybGQgdGhpcyBpcyBhIHRlc3Q=",
    "uuid": "550e8400-e29b-41d4-a716-446655440000",
    "mixed-scripts": "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم café naïve",  # noqa: RUF001
    "combining": "e\u0301 a\u0308 n\u0303 \u200b\u200d zero width",
    "whitespace": "a\n\n\n\tb        c\r\n",
    "long-word": "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "snake_and_camel": "get_user_name getUserName HTTPServerError __init__",
    "empty": "",
}


@pytest.mark.parametrize("text", [pytest.param(t, id=k) for k, t in CORPUS.items()])
def test_conservative_count_is_never_below_the_mock(text: str) -> None:
    assert conservative_tokens(text) >= count_tokens(text)


def test_conservative_count_on_random_unicode_is_never_below_the_mock() -> None:
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(32, 0x3000) if chr(c).isprintable()]
    alphabet += list("速率限制器東京안녕👍🏽\u200d\n\t  ")
    for _ in range(3000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 60)))
        assert conservative_tokens(text) >= count_tokens(text), text


@pytest.mark.parametrize(
    ("text", "at_least"),
    [
        pytest.param("速率限制器在配额允许的范围内", 14, id="cjk-one-per-character"),
        pytest.param('{"a":1,"b":2}', 13, id="json-one-per-symbol"),
        pytest.param("👍", 3, id="emoji-bytes"),
        pytest.param("123456789", 3, id="digits-by-three"),
    ],
)
def test_conservative_count_covers_bpe_worst_cases(text: str, at_least: int) -> None:
    """Where byte-level BPE tokenizers spend many tokens, the estimate does too."""
    assert conservative_tokens(text) >= at_least


def test_conservative_count_stays_close_on_english() -> None:
    text = CORPUS["english"] * 20
    assert conservative_tokens(text) <= 1.5 * count_tokens(text)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Find a city's weather; ville, 天気",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
CHAT_BODIES = {
    "text": {"messages": [{"role": "user", "content": CORPUS["english"]}]},
    "system-and-name": {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "name": "ann", "content": CORPUS["cjk"]},
        ]
    },
    "multimodal": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": CORPUS["url"]},
                    IMAGE,
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                ],
            }
        ]
    },
    "tools-and-calls": {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"city":"東京"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": CORPUS["json"]},
        ],
        "tools": TOOLS,
    },
    "json-schema": {
        "messages": [{"role": "user", "content": CORPUS["code"]}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object", "description": "émoji 👍"}},
        },
    },
    "refusal-part": {
        "messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]
    },
}


@pytest.mark.parametrize("body", [pytest.param(b, id=k) for k, b in CHAT_BODIES.items()])
def test_chat_prompt_estimate_is_never_below_the_mock(body: dict[str, Any]) -> None:
    mock = parse_openai("chat.completions", {"model": "m", **body}, 16).prompt_tokens
    assert PromptEstimator(conservative_tokens).chat(body) >= mock


RESPONSES_BODIES = {
    "string": {"input": CORPUS["emoji"], "instructions": CORPUS["cjk"]},
    "items": {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": CORPUS["url"]}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": CORPUS["json"]},
            {"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "text": {"format": {"type": "json_object"}},
    },
}


@pytest.mark.parametrize("body", [pytest.param(b, id=k) for k, b in RESPONSES_BODIES.items()])
def test_responses_prompt_estimate_is_never_below_the_mock(body: dict[str, Any]) -> None:
    mock = parse_openai("responses", {"model": "m", **body}, 16).prompt_tokens
    assert PromptEstimator(conservative_tokens).responses(body) >= mock


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param(CORPUS["cjk"], id="string"),
        pytest.param(list(CORPUS.values())[:-1], id="strings"),
        pytest.param([[1, 2, 3], [4, 5]], id="token-arrays"),
        pytest.param([1, 2, 3], id="one-token-array"),
    ],
)
def test_embeddings_estimate_is_never_below_the_mock(inputs: Any) -> None:
    body = {"model": "m", "input": inputs}
    mock = parse_openai("embeddings", body, 16).prompt_tokens
    assert PromptEstimator(conservative_tokens).embeddings(body) >= mock


def test_anthropic_prompt_estimate_is_never_below_the_mock() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": CORPUS["mixed-scripts"]}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": CORPUS["code"]}, IMAGE]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "👍"}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "done"}],
            },
        ],
        "tools": [{"name": "f", "description": CORPUS["cjk"], "input_schema": {}}],
    }
    mock = parse_anthropic(body).prompt_tokens
    assert PromptEstimator(conservative_tokens).anthropic(body) >= mock


def test_images_cost_by_detail_unless_configured() -> None:
    high = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    estimator = PromptEstimator(conservative_tokens)
    assert estimator.part(IMAGE) == 85
    assert estimator.part(high) == 1445
    assert PromptEstimator(conservative_tokens, image_tokens=300).part(high) == 300


# -- tiktoken ----------------------------------------------------------------------------
def test_missing_encoding_falls_back_quickly_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: tiktoken cannot download its encoding; that must cost one quick
    failure per process, then the conservative counter."""
    calls: list[str] = []

    class FakeTiktoken:
        @staticmethod
        def encoding_name_for_model(model: str) -> str:
            return "fake_base"

        @staticmethod
        def get_encoding(name: str) -> Any:
            calls.append(name)
            raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "tiktoken", FakeTiktoken)
    monkeypatch.setattr(_tokens, "_encodings", {})
    assert resolve_counter("auto", "gpt-4o") is conservative_tokens
    assert resolve_counter("auto", "gpt-4o-mini") is conservative_tokens
    assert calls == ["fake_base"]  # tried once, the failure cached
    with pytest.raises(RuntimeError, match="could not be loaded"):
        resolve_counter("tiktoken", "gpt-4o")


def test_a_hanging_download_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    release = __import__("threading").Event()
    finished = __import__("threading").Event()

    class SlowTiktoken:
        @staticmethod
        def encoding_name_for_model(model: str) -> str:
            return "slow_base"

        @staticmethod
        def get_encoding(name: str) -> Any:
            release.wait(5)
            finished.set()
            raise ConnectionError("timed out")

    monkeypatch.setitem(sys.modules, "tiktoken", SlowTiktoken)
    monkeypatch.setattr(_tokens, "_encodings", {})
    monkeypatch.setattr(_tokens, "TIKTOKEN_TIMEOUT", 0.2)
    assert resolve_counter("auto", None) is conservative_tokens
    assert not finished.is_set()  # returned while the download was still hanging
    release.set()


def test_an_available_encoding_counts_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    class Encoding:
        @staticmethod
        def encode(text: str, disallowed_special: Any = ()) -> list[int]:
            return [0] * len(text.split())

    class GoodTiktoken:
        @staticmethod
        def encoding_name_for_model(model: str) -> str:
            return "good_base"

        @staticmethod
        def get_encoding(name: str) -> Any:
            return Encoding

    monkeypatch.setitem(sys.modules, "tiktoken", GoodTiktoken)
    monkeypatch.setattr(_tokens, "_encodings", {})
    assert resolve_counter("auto", "gpt-4o")("one two three") == 3


def test_tiktoken_required_but_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    assert resolve_counter("auto", "gpt-4o") is conservative_tokens
    with pytest.raises(ImportError, match=r"rate_limited\[openai\]"):
        resolve_counter("tiktoken", "gpt-4o")


# -- calibration -------------------------------------------------------------------------
def test_calibration_grows_at_once_and_shrinks_only_with_evidence() -> None:
    calibration = Calibration(window=8, min_samples=4, margin=0.0)
    assert calibration.apply(100) == 100
    calibration.observe(100, 50)
    assert calibration.apply(100) == 100  # one sample is not evidence enough to shrink
    for _ in range(3):
        calibration.observe(100, 60)
    assert calibration.apply(100) == 60  # the worst ratio seen, never below it
    calibration.observe(100, 130)
    assert calibration.apply(100) == 130  # an estimate proved low: grow at once
    for _ in range(8):
        calibration.observe(100, 70)
    assert calibration.apply(100) == 70  # the low one left the window


def test_calibration_ignores_nonsense() -> None:
    calibration = Calibration(min_samples=1)
    calibration.observe(0, 10)
    calibration.observe(10, -1)
    assert calibration.factor == 1.0
