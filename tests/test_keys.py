"""Tests of call keys: what makes two calls the same, and that a key is the same everywhere."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
import uuid
from collections import namedtuple
from typing import Any

import pydantic
import pytest

from rate_limited import ConfigurationError
from rate_limited._keys import call_key, function_identity, is_secret_name


def complete(prompt: str, model: str = "m", *, n: int = 1, **options: Any) -> str:
    return prompt


def other(prompt: str, model: str = "m", *, n: int = 1, **options: Any) -> str:
    return prompt


def variadic(*parts: Any, **options: Any) -> None:
    return None


class Message(pydantic.BaseModel):
    role: str
    content: str


class OtherMessage(pydantic.BaseModel):
    role: str
    content: str


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Client:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def create(self, prompt: str, temperature: float = 1.0) -> str:
        return prompt


class OtherClient(Client):
    pass


class Summarizer:
    def __call__(self, text: str) -> str:
        return text


def make_adder(k: int) -> Any:
    return lambda x: x + k


def make_nested(k: int) -> Any:
    def nested(x: int) -> int:
        return x + k

    return nested


ADD_ONE = lambda x: x + 1  # noqa: E731
ADD_TWO = lambda x: x + 2  # noqa: E731
TIMES_TWO = lambda x: x * 2  # noqa: E731


def sample_keys() -> list[str]:
    """Keys of assorted calls; computed here and in a fresh process, they must agree."""
    return [
        call_key(complete, ("hi",), {"model": "gpt", "n": 2, "temperature": 0.7}),
        call_key(complete, (), {"prompt": "hi", "stop": {"b", "a", "c"}}),
        call_key(complete, ("hi",), {"messages": [Message(role="user", content="x")]}),
        call_key(complete, ("hi",), {"point": Point(0.1, 2.0), "color": Color.RED}),
        call_key(
            complete,
            ("hi",),
            {
                "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
                "price": decimal.Decimal("1.10"),
                "id": uuid.UUID(int=7),
                "path": pathlib.PurePosixPath("/tmp/x"),
                "data": b"\x00\xff",
                "nested": {"z": [1, (2, 3)], "a": {"k": None}},
            },
        ),
        call_key(functools.partial(complete, model="x"), ("hi",)),
        call_key(Client("k").create, ("hi",)),
        call_key(Summarizer(), ("text",)),
        call_key(ADD_ONE, (1,)),
        call_key(make_adder(3), (1,)),
        call_key(variadic, (1, 2, 3), {"x": 1}),
        call_key(len, ("abc",)),
        call_key(complete, ("hi",), namespace="experiment-1"),
    ]


def test_a_key_is_32_hex_characters() -> None:
    key = call_key(complete, ("hi",))
    assert len(key) == 32
    assert int(key, 16) >= 0
    assert key == key.lower()


def test_keys_are_the_same_in_another_process_with_another_hash_seed() -> None:
    module_parts = __name__.split(".")
    root = pathlib.Path(__file__).resolve().parents[len(module_parts) - 1]
    script = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        f"module = importlib.import_module({__name__!r})\n"
        "print(json.dumps(module.sample_keys()))\n"
    )
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sample_keys()


def test_keys_do_not_change_between_calls_or_threads() -> None:
    results: list[list[str]] = []
    thread = threading.Thread(target=lambda: results.append(sample_keys()))
    thread.start()
    thread.join()
    assert results == [sample_keys()]


def test_positional_and_keyword_arguments_bind_to_the_same_names() -> None:
    expected = call_key(complete, ("hi", "gpt"))
    assert call_key(complete, ("hi",), {"model": "gpt"}) == expected
    assert call_key(complete, (), {"model": "gpt", "prompt": "hi"}) == expected


def test_keyword_order_and_dict_order_do_not_matter() -> None:
    first = call_key(complete, ("hi",), {"a": 1, "b": {"x": 1, "y": [1, 2]}, "n": 3})
    second = call_key(complete, ("hi",), {"n": 3, "b": {"y": [1, 2], "x": 1}, "a": 1})
    assert first == second


def test_list_order_matters_and_sets_are_sorted() -> None:
    assert call_key(complete, ([1, 2],)) != call_key(complete, ([2, 1],))
    assert call_key(complete, ({"a", "b", "c"},)) == call_key(complete, ({"c", "a", "b"},))
    assert call_key(complete, (frozenset({3, 1}),)) == call_key(complete, (frozenset({1, 3}),))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(0.1, 0.1000001, id="close-floats"),
        pytest.param(1, 1.0, id="int-float"),
        pytest.param(1, True, id="int-bool"),
        pytest.param("1", 1, id="str-int"),
        pytest.param([1, 2], (1, 2), id="list-tuple"),
        pytest.param(b"a", "a", id="bytes-str"),
        pytest.param(None, "None", id="none-str"),
        pytest.param(["float", "0.1"], 0.1, id="no-tag-collision"),
        pytest.param({"a": 1}, [["a", 1]], id="dict-pairs"),
        pytest.param(Color.RED, "red", id="enum-value"),
        pytest.param(0.0, -0.0, id="signed-zero"),
    ],
)
def test_different_values_give_different_keys(first: Any, second: Any) -> None:
    assert call_key(complete, (first,)) != call_key(complete, (second,))


def test_an_argument_set_to_its_default_differs_from_a_missing_one() -> None:
    assert call_key(complete, ("hi",), {"n": 0}) != call_key(complete, ("hi",))
    assert call_key(complete, ("hi",), {"n": 1}) != call_key(complete, ("hi",))
    assert call_key(complete, ("hi",), {"temperature": None}) != call_key(complete, ("hi",))


def test_partial_shares_keys_with_the_explicit_call() -> None:
    explicit = call_key(complete, ("hi",), {"model": "gpt", "n": 2})
    assert call_key(functools.partial(complete, model="gpt"), ("hi",), {"n": 2}) == explicit
    assert call_key(functools.partial(complete, "hi", "gpt"), (), {"n": 2}) == explicit
    nested = functools.partial(functools.partial(complete, "hi"), n=2)
    assert call_key(nested, ("gpt",)) == explicit
    assert call_key(functools.partial(complete, model="other"), ("hi",), {"n": 2}) != explicit


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "API_KEY",
        "apiKey",
        "XApiKey",
        "openai_api_key",
        "x-api-key",
        "Authorization",
        "proxy-authorization",
        "auth",
        "token",
        "access_token",
        "refreshToken",
        "x-auth-token",
        "secret",
        "client_secret",
        "password",
        "db_password",
        "Cookie",
        "private_key",
        "ocp-apim-subscription-key",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "max_completion_tokens",
        "max_new_tokens",
        "maxTokens",
        "tokens",
        "token_count",
        "prompt",
        "key",
        "cache_key",
        "author",
        "n",
        "top_k",
        "model",
        "messages",
    ],
)
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_secrets_never_change_a_key() -> None:
    base = {"model": "gpt", "extra_headers": {"X-Trace": "1"}}
    expected = call_key(complete, ("hi",), base)
    with_secrets = {
        **base,
        "api_key": "sk-one",
        "extra_headers": {"X-Trace": "1", "Authorization": "Bearer sk-one"},
        "extra_body": {"nested": {"password": "hunter2"}},
    }
    with_other_secrets = {
        **with_secrets,
        "api_key": "sk-two",
        "extra_headers": {"X-Trace": "1", "authorization": "Bearer sk-two"},
    }
    assert call_key(complete, ("hi",), with_secrets) == call_key(
        complete, ("hi",), {**base, "extra_body": {"nested": {}}}
    )
    assert call_key(complete, ("hi",), with_other_secrets) == call_key(
        complete, ("hi",), with_secrets
    )
    assert call_key(complete, ("hi",), {**base, "api_key": "sk"}) == expected


def test_token_counts_are_not_secrets() -> None:
    assert call_key(complete, ("hi",), {"max_tokens": 10}) != call_key(
        complete, ("hi",), {"max_tokens": 20}
    )


def test_excluded_names_are_dropped_at_any_depth() -> None:
    first = call_key(
        complete, ("hi",), {"request_id": 1, "meta": {"request_id": 1}}, exclude=["request_id"]
    )
    second = call_key(complete, ("hi",), {"request_id": 2, "meta": {}}, exclude=["request_id"])
    assert first == second
    assert call_key(complete, ("hi",), {"request_id": 1}, exclude="request_id") == call_key(
        complete, ("hi",)
    )
    assert call_key(complete, ("hi",), {"request_id": 1}) != call_key(complete, ("hi",))


def test_pydantic_models_count_by_value_and_type() -> None:
    one = call_key(complete, ("hi",), {"messages": [Message(role="user", content="x")]})
    same = call_key(complete, ("hi",), {"messages": [Message(role="user", content="x")]})
    changed = call_key(complete, ("hi",), {"messages": [Message(role="user", content="y")]})
    other_type = call_key(complete, ("hi",), {"messages": [OtherMessage(role="user", content="x")]})
    assert one == same
    assert len({one, changed, other_type}) == 3


def test_pydantic_model_classes_count_by_schema() -> None:
    assert call_key(complete, ("hi",), {"response_format": Message}) == call_key(
        complete, ("hi",), {"response_format": Message}
    )
    assert call_key(complete, ("hi",), {"response_format": Message}) != call_key(
        complete, ("hi",), {"response_format": OtherMessage}
    )


def test_dataclasses_count_by_value_and_type() -> None:
    assert call_key(complete, (Point(1.0, 2.0),)) == call_key(complete, (Point(1.0, 2.0),))
    assert call_key(complete, (Point(1.0, 2.0),)) != call_key(complete, (Point(1.0, 2.5),))
    assert call_key(complete, (Point(1.0, 2.0),)) != call_key(complete, ({"x": 1.0, "y": 2.0},))


def test_plain_stdlib_values_count_by_value() -> None:
    day = datetime.date(2024, 1, 2)
    assert call_key(complete, (day,)) == call_key(complete, (datetime.date(2024, 1, 2),))
    assert call_key(complete, (day,)) != call_key(complete, (datetime.date(2024, 1, 3),))
    assert call_key(complete, (decimal.Decimal("1.0"),)) != call_key(
        complete, (decimal.Decimal("1.00"),)
    )
    assert call_key(complete, (uuid.UUID(int=1),)) != call_key(complete, (uuid.UUID(int=2),))
    assert call_key(complete, (pathlib.Path("a"),)) != call_key(complete, (pathlib.Path("b"),))
    assert call_key(complete, (Color.RED,)) != call_key(complete, (Color.BLUE,))
    pair = namedtuple("pair", "a b")
    assert call_key(complete, (pair(1, 2),)) != call_key(complete, ((1, 2),))


def test_context_objects_count_by_type_only() -> None:
    assert call_key(complete, (threading.Lock(),)) == call_key(complete, (threading.Lock(),))
    assert call_key(complete, (Client("a"),)) == call_key(complete, (Client("b"),))
    assert call_key(complete, (Client("a"),)) != call_key(complete, (OtherClient("a"),))


def test_bound_methods_count_by_method_and_instance_type() -> None:
    one, two = Client("sk-1"), Client("sk-2")
    assert call_key(one.create, ("hi",)) == call_key(two.create, ("hi",))
    assert call_key(one.create, ("hi", 0.5)) == call_key(two.create, ("hi",), {"temperature": 0.5})
    assert call_key(one.create, ("hi",)) != call_key(OtherClient("x").create, ("hi",))
    assert call_key(one.create, ("hi",)) != call_key(Client.create, (one, "hi"))


def test_openai_clients_are_context() -> None:
    openai = pytest.importorskip("openai")
    first = openai.OpenAI(api_key="sk-first", base_url="http://127.0.0.1:9/v1")
    second = openai.OpenAI(api_key="sk-second", base_url="http://127.0.0.1:9/v1")
    try:
        kwargs = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert call_key(first.chat.completions.create, (), kwargs) == call_key(
            second.chat.completions.create, (), kwargs
        )
        assert call_key(first.chat.completions.create, (), kwargs) != call_key(
            first.chat.completions.create, (), {**kwargs, "max_tokens": 5}
        )
        assert call_key(complete, (first,)) == call_key(complete, (second,))
        assert function_identity(first.chat.completions.create).endswith("Completions.create")
    finally:
        first.close()
        second.close()


def test_callable_objects_count_by_type() -> None:
    assert call_key(Summarizer(), ("a",)) == call_key(Summarizer(), ("a",))
    assert call_key(Summarizer(), ("a",)) != call_key(Summarizer(), ("b",))
    assert function_identity(Summarizer()).endswith("Summarizer")


def test_different_functions_and_namespaces_give_different_keys() -> None:
    assert call_key(complete, ("hi",)) != call_key(other, ("hi",))
    assert call_key(complete, ("hi",)) != call_key(complete, ("hi",), namespace="a")
    assert call_key(complete, ("hi",), namespace="a") != call_key(complete, ("hi",), namespace="b")


def test_two_lambdas_of_one_module_differ() -> None:
    assert function_identity(ADD_ONE) == function_identity(ADD_TWO)  # both "...<lambda>"
    keys = {call_key(ADD_ONE, (1,)), call_key(ADD_TWO, (1,)), call_key(TIMES_TWO, (1,))}
    assert len(keys) == 3
    assert call_key(ADD_ONE, (1,)) == call_key(ADD_ONE, (1,))
    assert call_key(ADD_ONE, (1,)) != call_key(ADD_ONE, (2,))


def test_lambdas_and_nested_functions_count_by_their_closure() -> None:
    assert call_key(make_adder(1), (5,)) == call_key(make_adder(1), (5,))
    assert call_key(make_adder(1), (5,)) != call_key(make_adder(2), (5,))
    assert call_key(make_nested(1), (5,)) == call_key(make_nested(1), (5,))
    assert call_key(make_nested(1), (5,)) != call_key(make_nested(2), (5,))


def test_functions_as_arguments_count_by_identity() -> None:
    assert call_key(complete, (complete,)) == call_key(complete, (complete,))
    assert call_key(complete, (complete,)) != call_key(complete, (other,))
    assert call_key(complete, (ADD_ONE,)) != call_key(complete, (ADD_TWO,))


def test_variadic_arguments() -> None:
    assert call_key(variadic, (1, 2)) != call_key(variadic, (2, 1))
    assert call_key(variadic, (), {"a": 1, "b": 2}) == call_key(variadic, (), {"b": 2, "a": 1})
    assert call_key(variadic, (), {"api_key": "x"}) == call_key(variadic, ())


def test_calls_that_do_not_fit_the_signature_still_get_a_stable_key() -> None:
    key = call_key(complete, ("a", "b", "c", "d"))
    assert key == call_key(complete, ("a", "b", "c", "d"))
    assert key != call_key(complete, ("a", "b", "c", "e"))
    assert call_key(complete, (), {"api_key": "x", "wrong": 1}) == call_key(
        complete, (), {"wrong": 1}
    )


def test_builtins_and_cycles() -> None:
    assert call_key(len, ("ab",)) != call_key(len, ("abc",))
    assert call_key(print, ("x",)) != call_key(len, ("x",))
    loop: list[Any] = [1]
    loop.append(loop)
    assert call_key(complete, (loop,)) == call_key(complete, (loop,))
    shared = [1, 2]
    assert call_key(complete, ([shared, shared],)) == call_key(complete, ([[1, 2], [1, 2]],))


def test_function_identity_reads_well() -> None:
    assert function_identity(complete) == f"{__name__}.complete"
    assert function_identity(functools.partial(complete, model="x")) == f"{__name__}.complete"
    assert function_identity(Client("k").create) == f"{__name__}.Client.create"
    assert function_identity(len) == "builtins.len"


# -- plain objects and other libraries: by value, or refused (numpy, pandas: test_key_arrays) --
class Item:
    """A plain class holding data: three of them once got one key (one request, three
    copies of the first result)."""

    def __init__(self, name: str, tags: list[str]) -> None:
        self.name = name
        self.tags = tags


class Slotted:
    __slots__ = ("__label", "size")

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.__label = name


class HoldsAClient:
    def __init__(self, client: Any, model: str) -> None:
        self.client = client
        self.model = model


def test_objects_of_plain_classes_count_by_their_state() -> None:
    items = [Item(name, ["fruit"]) for name in ("apple", "banana", "cherry")]
    assert len({call_key(complete, (item,)) for item in items}) == 3
    assert call_key(complete, (Item("apple", ["fruit"]),)) == call_key(complete, (items[0],))
    assert call_key(complete, (Item("apple", ["x"]),)) != call_key(complete, (items[0],))
    assert call_key(complete, (Slotted(1, "a"),)) != call_key(complete, (Slotted(1, "b"),))
    assert call_key(complete, (Slotted(1, "a"),)) != call_key(complete, (Slotted(2, "a"),))
    # A client inside counts by its type; the data beside it by value.
    lock = threading.Lock()
    assert call_key(complete, (HoldsAClient(lock, "m"),)) == call_key(
        complete, (HoldsAClient(threading.Lock(), "m"),)
    )
    assert call_key(complete, (HoldsAClient(lock, "m"),)) != call_key(
        complete, (HoldsAClient(lock, "n"),)
    )


def test_attrs_classes_count_by_value() -> None:
    attrs = pytest.importorskip("attrs")

    @attrs.define
    class Box:
        width: int
        label: str

    assert call_key(complete, (Box(1, "a"),)) == call_key(complete, (Box(1, "a"),))
    assert call_key(complete, (Box(1, "a"),)) != call_key(complete, (Box(2, "a"),))


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(io.StringIO("text"), "_io.StringIO", id="file-like"),
        pytest.param((i for i in range(3)), "builtins.generator", id="generator"),
        pytest.param(Item("x", [io.BytesIO(b"")]), "_io.BytesIO", id="inside-a-plain-object"),
    ],
)
def test_values_that_cannot_be_keyed_by_value_are_refused_asking_for_key(
    value: Any, type_name: str
) -> None:
    with pytest.raises(ConfigurationError, match="key=") as caught:
        call_key(complete, (value,))
    assert "argument 'prompt'" in str(caught.value) and type_name in str(caught.value)
    from rate_limited import Runner

    runner = Runner(complete, [], store="memory://", progress=False)
    with pytest.raises(ConfigurationError, match="key="):
        runner.schedule(value)
    assert runner.scheduled_calls == []
    keyed = Runner(complete, [], store="memory://", progress=False, key=lambda c: "mine")
    assert keyed.schedule(value).key == "mine"
