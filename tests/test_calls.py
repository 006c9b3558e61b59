"""``Call``: reading arguments the way the function sees them, and the per-call state."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import pytest

from rate_limited import Call, Status, UsageExtractionError, ValidationError


def complete(
    prompt: str, max_tokens: int = 256, *extra: Any, temperature: float = 1.0, **options: Any
) -> None:
    """A client-like function with every kind of parameter."""


def with_n(prompt: str, n: int = 1, temperature: float = 1.0, stop: Any = "END") -> None:
    pass


# -- 0.4's get_argument cases --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs", "name", "expected"),
    [
        pytest.param(("hi", 10), {}, "max_tokens", 10, id="positional"),
        pytest.param(("hi",), {"max_tokens": 10}, "max_tokens", 10, id="keyword"),
        pytest.param(("hi",), {}, "max_tokens", 256, id="default"),
        pytest.param(("hi",), {}, "temperature", 1.0, id="keyword-only-default"),
        pytest.param(("hi",), {"temperature": 0.5}, "temperature", 0.5, id="keyword-only"),
        pytest.param(("hi",), {}, "missing", None, id="missing"),
        pytest.param(("hi",), {"top_p": 0.9}, "top_p", 0.9, id="kwargs-extra"),
        pytest.param(("hi", 10, "a", "b"), {}, "extra", ("a", "b"), id="var-positional"),
        pytest.param((), {"prompt": "hi"}, "prompt", "hi", id="first-by-keyword"),
    ],
)
def test_get_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], name: str, expected: Any
) -> None:
    assert Call(complete, args, kwargs).get_argument(name) == expected


def test_kwargs_extras_are_flattened_and_the_catch_all_is_not_an_argument() -> None:
    call = Call(complete, ("hi",), {"top_p": 0.9, "user": "u1"})
    assert call.all_arguments_dict == {"prompt": "hi", "top_p": 0.9, "user": "u1"}
    assert call.get_argument("options") is None


# -- falsy values: 0.4 read them as missing --------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name", "expected"),
    [
        pytest.param({"n": 0}, "n", 0, id="n=0"),
        pytest.param({"temperature": 0.0}, "temperature", 0.0, id="temperature=0.0"),
        pytest.param({"temperature": 0}, "temperature", 0, id="temperature=0"),
        pytest.param({"stop": None}, "stop", None, id="explicit-None-beats-default"),
        pytest.param({"stop": ""}, "stop", "", id="empty-str"),
        pytest.param({"stop": []}, "stop", [], id="empty-list"),
        pytest.param({"stop": False}, "stop", False, id="False"),
        pytest.param({}, "stop", "END", id="default-when-absent"),
    ],
)
def test_falsy_values_are_returned_as_given(
    kwargs: dict[str, Any], name: str, expected: Any
) -> None:
    value = Call(with_n, ("hi",), kwargs).get_argument(name)
    assert value == expected and type(value) is type(expected)


def test_falsy_values_passed_positionally() -> None:
    call = Call(with_n, ("hi", 0, 0.0, None))
    assert call.get_argument("n") == 0
    assert call.get_argument("temperature") == 0.0
    assert call.get_argument("stop") is None


# -- what the function is --------------------------------------------------------------------------
def test_partial_bound_keywords_read_as_defaults_and_can_be_overridden() -> None:
    bound = partial(with_n, temperature=0)
    assert Call(bound, ("hi",)).get_argument("temperature") == 0
    assert Call(bound, ("hi",), {"temperature": 0.7}).get_argument("temperature") == 0.7


def test_partial_bound_positionals_shift_the_rest() -> None:
    bound = partial(with_n, "hi")
    call = Call(bound, (3,))
    assert call.get_argument("n") == 3
    assert call.get_argument("stop") == "END"


def test_partial_bound_positionals_are_readable() -> None:
    assert Call(partial(with_n, "hi"), (3,)).get_argument("prompt") == "hi"


class Client:
    def create(self, model: str, max_tokens: int = 16) -> None:
        pass

    async def acreate(self, model: str, max_tokens: int = 16) -> None:
        pass


@pytest.mark.parametrize("method", [pytest.param("create"), pytest.param("acreate")])
def test_bound_methods_have_no_self(method: str) -> None:
    call = Call(getattr(Client(), method), ("gpt",), {})
    assert call.get_argument("model") == "gpt"
    assert call.get_argument("max_tokens") == 16
    assert call.get_argument("self") is None


def test_a_builtin_without_signature_reads_keywords_only() -> None:
    call = Call(max, (3, 1), {"key": abs})
    assert call.get_argument("key") is abs
    assert call.get_argument("default") is None
    assert call.all_arguments_dict == {"key": abs}


def test_lambda() -> None:
    call = Call(lambda prompt, n=2: None, ("hi",))
    assert call.get_argument("prompt") == "hi" and call.get_argument("n") == 2


def test_arguments_that_do_not_fit_raise_type_error() -> None:
    with pytest.raises(TypeError):
        Call(with_n, (), {"nope": 1}).get_argument("n")


def test_reading_two_calls_alternately_gives_each_its_own() -> None:
    first, second = Call(with_n, ("a", 1)), Call(with_n, ("b", 2))
    assert [first.get_argument("n"), second.get_argument("n"), first.get_argument("n")] == [1, 2, 1]


def test_calls_without_kwargs_do_not_share_a_mutable_dict() -> None:
    first, second = Call(with_n, ("a",)), Call(with_n, ("b",))
    try:
        with contextlib.suppress(TypeError):  # a read-only mapping is fine too
            first.kwargs["n"] = 5
        assert second.kwargs == {}
        assert second.get_argument("n") == 1
    finally:
        if isinstance(first.kwargs, dict):
            first.kwargs.pop("n", None)  # do not leak into every later call of the process


# -- per-call state ----------------------------------------------------------------------------
def test_a_new_call_is_pending_with_nothing_recorded() -> None:
    call = Call(with_n, ("hi",), None, index=4)
    assert call.index == 4 and call.status is Status.PENDING
    assert call.attempts == 0 and call.result is None and call.kwargs == {}
    assert call.failures == 0 and call.num_retries == 0 and call.latency is None


def test_exceptions_is_one_list_kept_on_the_call() -> None:
    call = Call(with_n, ("hi",))
    errors = call.exceptions
    assert errors == []
    errors.append(ConnectionError("reset"))
    assert call.exceptions is errors and len(call.exceptions) == 1
    call.exceptions = [KeyError("x")]
    assert [type(e) for e in call.exceptions] == [KeyError]


def test_failures_do_not_count_usage_extraction_errors() -> None:
    call = Call(with_n, ("hi",))
    call.exceptions.extend(
        [
            ConnectionError("reset"),
            UsageExtractionError("no usage in the response"),
            ValidationError("invalid", call, 3),
        ]
    )
    assert call.failures == 2
    assert call.num_retries == 2  # 0.4's name


def test_latency_is_the_last_attempt_start_to_the_end() -> None:
    call = Call(with_n, ("hi",))
    call.started_at = 10.25
    assert call.latency is None
    call.finished_at = 12.0
    assert call.latency == 1.75


def test_repr_shows_index_function_arguments_and_status() -> None:
    call = Call(with_n, ("hi",), {"n": 0}, index=3)
    assert repr(call) == "<Call #3 with_n('hi', n=0) pending>"
    call.status = Status.SUCCEEDED
    assert repr(call).endswith(" succeeded>")


def test_repr_truncates_long_arguments() -> None:
    call = Call(with_n, ("x" * 10_000,))
    text = repr(call)
    assert len(text) < 300
    assert "..." in text and text.startswith("<Call #0 with_n('xxx")


def test_repr_of_a_partial() -> None:
    assert repr(Call(partial(with_n, "hi"), (1,))).startswith("<Call #0 partial(1)")


def client_call(prompt: str, api_key: str = "", **options: Any) -> None:
    pass


def test_repr_redacts_secret_arguments_and_key_shaped_values() -> None:
    """Reprs reach logs and error messages (QuotaExceededError, usage warnings): the call's
    ``api_key='sk-...'`` used to be printed as given."""
    key = "sk-proj-abcdefghijklmnopqrstuvwx"
    token = "plain-token-value-123"
    by_keyword = Call(client_call, ("hi",), {"api_key": key, "auth_token": token})
    assert (
        repr(by_keyword) == "<Call #0 client_call('hi', api_key='***', auth_token='***') pending>"
    )
    by_position = repr(Call(client_call, ("hi", token)))
    assert token not in by_position and "'hi'" in by_position
    in_text = repr(Call(client_call, (f"use {key} please",)))
    assert key not in in_text and "use *** please" in in_text


# -- usage: compact until read ------------------------------------------------------------------
def test_usage_added_reads_as_a_dict_by_resource_name() -> None:
    call = Call(with_n, ("hi",))
    names = ("requests", "tokens")
    assert call.usage is None
    assert call.usage_copy() == {}
    call.add_usage(names, [1.0, 120.0])
    assert call.usage_copy() == {"requests": 1.0, "tokens": 120.0}
    call.add_usage(names, [1.0, 30.0])  # a second attempt adds to the first
    assert call.usage == {"requests": 2.0, "tokens": 150.0}


def test_usage_read_once_stays_the_dict_given_out() -> None:
    call = Call(with_n, ("hi",))
    call.add_usage(("requests",), [1.0])
    usage = call.usage
    assert usage is not None
    usage["cost_usd"] = 0.5  # written by a reader (e.g. a batch's cost)
    call.add_usage(("requests",), [1.0])
    assert call.usage is usage
    assert usage == {"requests": 2.0, "cost_usd": 0.5}
    copy = call.usage_copy()
    copy["requests"] = 0.0
    assert call.usage == {"requests": 2.0, "cost_usd": 0.5}


def test_usage_assigned_then_added_keeps_both() -> None:
    call = Call(with_n, ("hi",))
    call.usage = {"tokens": 10.0}  # from the store
    call.add_usage(("requests", "tokens"), [1.0, 5.0])
    assert call.usage == {"tokens": 15.0, "requests": 1.0}


# -- passes over a run's calls -----------------------------------------------------------------
def test_final_lists_give_results_and_each_call_its_own_exceptions_or_a_new_list() -> None:
    failed, fine, emptied = Call(with_n, ("a",)), Call(with_n, ("b",)), Call(with_n, ("c",))
    failed.exceptions.append(KeyError("x"))
    failed.status, fine.status, emptied.status = Status.FAILED, Status.SUCCEEDED, Status.PENDING
    failed.result, fine.result, emptied.result = "partial", "ok", "not final"
    assert emptied.exceptions == []  # an empty list of its own: reads as no exceptions
    results, lists = Call.final_lists([failed, fine, emptied, fine])
    assert results == [None, "ok", None, "ok"]  # a result only where the call succeeded
    assert lists[0] is failed.exceptions  # the call's own list, as 0.4's run() gave it
    assert lists[1:] == [[], [], []] and lists[2] is not emptied.exceptions
    assert len({id(one) for one in lists}) == 4  # no list shared between two calls
    results, copies = Call.final_lists([failed, fine], copy=True)
    assert results == [None, "ok"]
    assert copies == [failed.exceptions, []] and copies[0] is not failed.exceptions


def test_release_owners_hands_each_call_its_own_owners_function() -> None:
    """Calls of two Runners (and one made by hand) in one list: each gets its own."""
    from rate_limited import Runner

    first, second = Runner(with_n, progress=False), Runner(repr, progress=False)
    try:
        calls = [first.schedule("a"), second.schedule(1), first.schedule("b"), Call(str)]
        calls.append(second.schedule(2))
        Call.release_owners(calls)
        assert [call.function for call in calls] == [with_n, repr, with_n, str, repr]
        assert all(not isinstance(call._source, Runner) for call in calls)
    finally:
        first.close()
        second.close()
