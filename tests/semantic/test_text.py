"""What is compared and what must match exactly: ``split``, the guards and redaction."""

from __future__ import annotations

from typing import Any

import pytest

from rate_limited._redact import REDACTED
from rate_limited.calls import Call
from rate_limited.exceptions import ConfigurationError
from rate_limited.semantic._text import (
    redact,
    same_negation,
    same_numbers,
    same_word_order,
    split,
)


def chat(**params: Any) -> Any:
    return params


def ask(prompt: str, model: str = "m", temperature: float = 0.0) -> str:
    return prompt


def messages(user: str, system: str | None = "Be brief.") -> list[dict[str, Any]]:
    found = [{"role": "system", "content": system}] if system is not None else []
    return [*found, {"role": "user", "content": user}]


FRANCE = "What is the capital of France?"


def chat_call(user: str = FRANCE, **params: Any) -> Call:
    params.setdefault("model", "gpt-4o-mini")
    params.setdefault("messages", messages(user))
    return Call(chat, (), params)


def test_a_chat_call_compares_its_user_message() -> None:
    found = split(chat_call(), None)
    assert found is not None
    assert found[0] == "What is the capital of France?"


def test_the_same_call_in_other_words_has_the_same_scope() -> None:
    one = split(chat_call("What is the capital of France?"), None)
    two = split(chat_call("Which city is the capital of France?"), None)
    assert one is not None and two is not None
    assert one[1] == two[1]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"model": "gpt-4o"}, id="model"),
        pytest.param({"messages": messages(FRANCE, "Be long.")}, id="system"),
        pytest.param({"messages": messages(FRANCE, None)}, id="no-system"),
        pytest.param({"temperature": 0.7}, id="temperature"),
        pytest.param({"max_tokens": 10}, id="max_tokens"),
        pytest.param({"tools": [{"type": "function", "function": {"name": "f"}}]}, id="tools"),
        pytest.param({"seed": 1}, id="any-other-argument"),
    ],
)
def test_anything_but_the_compared_text_changes_the_scope(change: dict[str, Any]) -> None:
    base = split(chat_call(temperature=0.0), None)
    params = {"temperature": 0.0, **change}
    other = split(chat_call(**params), None)
    assert base is not None and other is not None
    assert base[1] != other[1]


def test_anthropic_system_argument_is_in_the_scope() -> None:
    def create(**params: Any) -> Any:
        return params

    def call(system: str) -> Call:
        user = [{"role": "user", "content": "Hi there"}]
        return Call(create, (), {"model": "claude", "system": system, "messages": user})

    one, two = split(call("Be brief."), None), split(call("Be long."), None)
    assert one is not None and two is not None
    assert one[0] == two[0] == "Hi there"
    assert one[1] != two[1]


def test_a_conversation_is_compared_whole_with_roles() -> None:
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    found = split(Call(chat, (), {"model": "m", "messages": convo}), None)
    assert found is not None
    assert found[0] == "user: Hi\nassistant: Hello!\nuser: Capital of France?"


def test_responses_input_is_compared_and_instructions_are_scope() -> None:
    def create(**params: Any) -> Any:
        return params

    one = split(Call(create, (), {"model": "m", "input": "Hi", "instructions": "A"}), None)
    two = split(Call(create, (), {"model": "m", "input": "Hi", "instructions": "B"}), None)
    assert one is not None and two is not None
    assert one[0] == "Hi" and one[1] != two[1]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param([{"type": "image_url", "image_url": {"url": "data:,"}}], id="image"),
        pytest.param(None, id="tool-call"),
        pytest.param("   ", id="blank"),
    ],
)
def test_calls_without_text_are_not_compared(content: Any) -> None:
    call = Call(chat, (), {"model": "m", "messages": [{"role": "user", "content": content}]})
    assert split(call, None) is None


def test_text_by_argument_name_keeps_the_other_arguments_in_scope() -> None:
    one = split(Call(ask, ("Capital of France?",), {"model": "a"}), "prompt")
    two = split(Call(ask, (), {"prompt": "capital of France", "model": "a"}), "prompt")
    three = split(Call(ask, ("Capital of France?",), {"model": "b"}), "prompt")
    assert one is not None and two is not None and three is not None
    assert one[0] == "Capital of France?"
    assert one[1] == two[1] != three[1]


def test_text_by_callable_takes_the_text_out_of_the_scope() -> None:
    def last_user(call: Call) -> str:
        return str(call.kwargs["messages"][-1]["content"])

    one = split(chat_call("Capital of France?"), last_user)
    two = split(chat_call("capital of france"), last_user)
    assert one is not None and two is not None
    assert one[0] == "Capital of France?" and one[1] == two[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(lambda call: "not in the call", "is not one of", id="absent"),
        pytest.param(lambda call: "Be brief.", None, id="present-once"),
        pytest.param(lambda call: 42, "must return a str", id="not-a-str"),
        pytest.param(lambda call: 1 / 0, "raised ZeroDivisionError", id="raises"),
    ],
)
def test_a_text_callable_that_cant_split_the_call_is_an_error(
    text: Any, message: str | None
) -> None:
    if message is None:
        assert split(chat_call(), text) is not None
        return
    with pytest.raises(ConfigurationError, match=message):
        split(chat_call(), text)


def test_a_text_found_twice_is_ambiguous() -> None:
    call = chat_call(messages=messages("Same", system="Same"))
    with pytest.raises(ConfigurationError, match="occurs 2 times"):
        split(call, lambda call: "Same")


@pytest.mark.parametrize(
    ("guard", "a", "b", "passes"),
    [
        pytest.param(same_numbers, "size 42 shoes", "shoes, size 42", True, id="numbers-same"),
        pytest.param(same_numbers, "size 42 shoes", "size 44 shoes", False, id="numbers-differ"),
        pytest.param(same_numbers, "pay $1,000", "pay $1,000 now", True, id="numbers-grouped"),
        pytest.param(same_negation, "it is cancelled", "it's cancelled", True, id="neg-same"),
        pytest.param(same_negation, "it is cancelled", "it is not cancelled", False, id="neg"),
        pytest.param(same_negation, "I can't log in", "I cannot log in", True, id="neg-forms"),
        pytest.param(same_word_order, "F to C", "C to F", False, id="reordered"),
        pytest.param(same_word_order, "F to C", "f to c", True, id="same-order"),
        pytest.param(same_word_order, "F to C", "F into C", True, id="other-words"),
    ],
)
def test_guards(guard: Any, a: str, b: str, passes: bool) -> None:
    assert guard(a, b) is passes


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("sk-proj-abcdefghijklmnopqrstuvwx", id="openai-key"),
        pytest.param("sk-ant-api03-abcdefghijklmnopqrstu", id="anthropic-key"),
        pytest.param("Bearer abcdefghijkl.mnop", id="bearer"),
        pytest.param("password=hunter2hunter2", id="password"),
        pytest.param("AKIAABCDEFGHIJKLMNOP", id="aws"),
    ],
)
def test_redact_hides_secrets(secret: str) -> None:
    redacted = redact(f"please use {secret} for this")
    assert REDACTED in redacted
    assert secret.split()[-1].split("=")[-1] not in redacted


def test_redact_leaves_prose_alone() -> None:
    text = "Summarize this ticket: my order #4471 arrived damaged, the token of thanks."
    assert redact(text) == text


def test_arguments_that_dont_fit_the_function_are_not_compared() -> None:
    assert split(Call(ask, ("a", "b", 0.0, "extra"), {}), "prompt") is None
