"""``rate_limited._demand``: a call's demand, computed once at ``schedule()``, and shared
by the calls that need the same."""

from __future__ import annotations

from fractions import Fraction
from functools import partial
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rate_limited import ConfigurationError, QuotaExceededError, Resource, Runner
from rate_limited._demand import DemandMemo, demand_of
from rate_limited.calls import Call


def echo(prompt: str, tokens: int = 10, model: Any = "small") -> str:
    return prompt


def resources(partition: bool = False) -> list[Resource]:
    return [
        Resource("requests", 100, time_window_seconds=60, arguments_usage_extractor=lambda c: 1),
        Resource(
            "tokens",
            10_000,
            time_window_seconds=60,
            max_results_usage_estimator=lambda c: c.get_argument("tokens"),
            results_usage_extractor=lambda c, result: len(result),
            partition=(lambda c: c.get_argument("model")) if partition else None,
        ),
    ]


def tokens(**extractor: Any) -> Resource:
    """A tokens resource with ``extractor`` (an estimator is billed from the result)."""
    return Resource(
        "tokens",
        100,
        time_window_seconds=60,
        results_usage_extractor=lambda c, result: len(result),
        **extractor,
    )


def test_calls_that_need_the_same_share_one_demand() -> None:
    runner = Runner(echo, resources(), progress=False)
    a, b, c = runner.schedule("a"), runner.schedule("b"), runner.schedule("c", tokens=20)
    assert a.demand == ((1.0, 0.0, None), (0.0, 10.0, None))
    assert a.demand is b.demand
    assert c.demand == ((1.0, 0.0, None), (0.0, 20.0, None))
    assert c.demand[0] is a.demand[0]  # the requests entry is shared all the same
    runner.close()


def test_a_partition_key_that_is_not_a_string_is_kept_as_given() -> None:
    """Equal keys of other types (1 and 1.0 and True) are not merged into one object."""
    runner = Runner(echo, resources(partition=True), progress=False)
    one, true = runner.schedule("a", model=1), runner.schedule("b", model=True)
    assert one.demand[1][2] == 1 and type(one.demand[1][2]) is int
    assert type(true.demand[1][2]) is bool
    named = runner.schedule("c", model="large"), runner.schedule("d", model="large")
    assert named[0].demand is named[1].demand
    runner.close()


def test_a_call_larger_than_its_quota_is_refused_at_schedule() -> None:
    runner = Runner(echo, resources(), progress=False)
    with pytest.raises(QuotaExceededError, match="tokens"):
        runner.schedule("a", tokens=20_000)
    runner.close()


def test_a_lowered_quota_applies_to_the_next_schedule() -> None:
    """The quota is read from the resource at each schedule(), never cached."""
    quotas = resources()
    runner = Runner(echo, quotas, progress=False)
    first = runner.schedule("a", tokens=500)
    quotas[1].quota = 100
    with pytest.raises(QuotaExceededError, match="whole quota is 100"):
        runner.schedule("b", tokens=500)
    quotas[1].quota = 1000
    assert runner.schedule("c", tokens=500).demand is first.demand
    runner.close()


@pytest.mark.parametrize(
    ("tokens", "fits"),
    [
        pytest.param(10_000 * (1 + 1e-10), True, id="within-rounding-slack"),
        pytest.param(10_000 * (1 + 1e-8), False, id="past-the-slack"),
    ],
)
def test_the_quota_check_allows_the_ledgers_rounding_slack(tokens: float, fits: bool) -> None:
    runner = Runner(echo, resources(), progress=False)
    if fits:
        assert runner.schedule("a", tokens=tokens).demand[1][1] == tokens
    else:
        with pytest.raises(QuotaExceededError) as caught:
            runner.schedule("a", tokens=tokens)
        assert caught.value.resource == "tokens"
        assert caught.value.needed == tokens
    runner.close()


def test_demands_that_vary_per_call_are_each_right() -> None:
    """More distinct demands than the intern table holds: each call keeps its own."""
    runner = Runner(echo, resources(), progress=False)
    calls = [runner.schedule("a", tokens=n % 9000) for n in range(9000)]
    assert all(
        c.demand == ((1.0, 0.0, None), (0.0, float(n % 9000), None)) for n, c in enumerate(calls)
    )
    assert all(type(c.demand[1][1]) is float for c in calls)
    runner.close()


def test_a_partition_that_returns_none_shares_its_demand() -> None:
    runner = Runner(echo, resources(partition=True), progress=False)
    a, b = runner.schedule("a", model=None), runner.schedule("b", model=None)
    assert a.demand == ((1.0, 0.0, None), (0.0, 10.0, None)) and a.demand is b.demand
    runner.close()


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(-1, id="negative-int"),
        pytest.param(-0.5, id="negative-float"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(True, id="bool"),
        pytest.param("3", id="str"),
        pytest.param(None, id="none"),
    ],
)
@pytest.mark.parametrize("what", ["arguments_usage_extractor", "max_results_usage_estimator"])
def test_a_usage_that_is_not_a_usage_is_refused_naming_the_extractor(usage: Any, what: str) -> None:
    runner = Runner(echo, [tokens(**{what: lambda c: usage})], progress=False)
    message = (
        f"{what} of resource 'tokens' returned {usage!r} for .*usage must be a finite, "
        "non-negative number"
    )
    with pytest.raises(ConfigurationError, match=message):
        runner.schedule("a")
    assert runner.scheduled_calls == []
    runner.close()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(0, 0.0, id="zero"),
        pytest.param(7, 7.0, id="int"),
        pytest.param(2.5, 2.5, id="float"),
        pytest.param(Fraction(3, 2), 1.5, id="other-real"),
    ],
)
def test_a_usage_of_any_real_type_counts_as_a_float(usage: Any, expected: float) -> None:
    runner = Runner(echo, [tokens(arguments_usage_extractor=lambda c: usage)], progress=False)
    demand = runner.schedule("a").demand
    assert demand == ((expected, 0.0, None),) and type(demand[0][0]) is float
    runner.close()


def test_an_extractor_that_raises_is_a_configuration_error_naming_it() -> None:
    def broken(call: Any) -> float:
        raise KeyError("tokens")

    runner = Runner(echo, [tokens(max_results_usage_estimator=broken)], progress=False)
    with pytest.raises(
        ConfigurationError, match="max_results_usage_estimator of resource 'tokens' raised KeyError"
    ) as caught:
        runner.schedule("a")
    assert isinstance(caught.value.__cause__, KeyError)
    runner.close()


def test_a_configuration_error_of_an_extractor_goes_through_as_it_is() -> None:
    error = ConfigurationError("this request is too large for the model")

    def refuses(call: Any) -> float:
        raise error

    runner = Runner(echo, [tokens(arguments_usage_extractor=refuses)], progress=False)
    with pytest.raises(ConfigurationError) as caught:
        runner.schedule("a")
    assert caught.value is error
    runner.close()


# -- the last demand, remembered (DemandMemo) ---------------------------------------------
# Few values each, so that consecutive calls often need the same (the memo's case), and
# keys equal across types (1, 1.0, True), which must not be taken for one another.
_USAGES = st.sampled_from([1, 2.0, True, float("nan")])
_KEYS = st.sampled_from([None, "a", "b", 1, 1.0, True, ("a", 1)])
_QUOTAS = st.sampled_from([2, 3.0, 100, 0.5])
_SCHEDULE = st.tuples(st.just("schedule"), _USAGES, _USAGES, _KEYS)
_STEPS = st.lists(
    st.one_of(
        _SCHEDULE,
        _SCHEDULE,
        st.tuples(st.just("quota"), st.integers(0, 1), _QUOTAS),
        st.tuples(st.just("partition_quota"), _KEYS.filter(lambda k: k is not None), _QUOTAS),
    ),
    max_size=30,
)


def spend(a: Any = 0, t: Any = 0, model: Any = None) -> None:
    return None


def _outcome(compute: Any) -> Any:
    """``compute()``'s demand with each key's type, or its error: type, resource, sizes."""
    try:
        demand = compute()
    except ConfigurationError as exc:  # QuotaExceededError included
        return type(exc), *(getattr(exc, name, None) for name in ("resource", "needed", "quota"))
    return demand, [type(entry[2]) for entry in demand]


@settings(max_examples=300, deadline=None)
@given(_STEPS)
@example([("schedule", 1, 1, 1), ("schedule", 1, 1, True), ("schedule", 1, 1, 1.0)])
@example([("schedule", 1, 1, None), ("schedule", 1, 2.0, None), ("schedule", 2.0, 2.0, None)])
@example([("schedule", 1, 1, None), ("quota", 1, 0.5), ("schedule", 1, 1, None)])
@example([("schedule", 1, 1, "a"), ("partition_quota", "a", 0.5), ("schedule", 1, 1, "a")])
def test_a_remembered_demand_is_the_demand_computed_afresh(steps: list[Any]) -> None:
    """Whatever the sequence of calls and quota changes, schedule() (with its memo) gives
    each call what a fresh computation gives: the same demand, keys of the same types, the
    same error; a changed quota or partition quota applies to the very next call."""
    partition_quotas: dict[Any, float] = {}
    quotas = [
        Resource(
            "requests",
            8,
            time_window_seconds=60,
            arguments_usage_extractor=lambda c: c.get_argument("a"),
        ),
        Resource(
            "tokens",
            8,
            time_window_seconds=60,
            max_results_usage_estimator=lambda c: c.get_argument("t"),
            results_usage_extractor=lambda c, result: 0,
            partition=lambda c: c.get_argument("model"),
            partition_quotas=partition_quotas,
        ),
    ]
    runner = Runner(spend, quotas, progress=False)
    try:
        for step in steps:
            if step[0] == "quota":
                quotas[step[1]].quota = step[2]
            elif step[0] == "partition_quota":
                partition_quotas[step[1]] = step[2]
            else:
                _, a, t, model = step
                kwargs = {"a": a, "t": t, "model": model}
                fresh = _outcome(partial(demand_of, runner._extractors, Call(spend, (), kwargs)))
                got = _outcome(lambda kwargs=kwargs: runner.schedule(**kwargs).demand)
                assert got == fresh
                if type(got[0]) is tuple and type(model) is not str:
                    assert got[0][1][2] is model  # a key that is not a str: kept as given
    finally:
        runner.close()


def test_a_memo_of_other_extractors_is_not_used() -> None:
    """The memo's key includes the extractors: with others, it answers nothing."""
    runner = Runner(echo, resources(), progress=False)
    memo = DemandMemo(runner._extractors)
    first = demand_of(runner._extractors, runner.schedule("a"), memo)
    assert memo.last is first
    requests, tokens = resources()
    others = [(requests, requests.arguments_usage_extractor, None), (tokens, None, lambda c: 99)]
    assert demand_of(others, runner.schedule("b"), memo) == ((1.0, 0.0, None), (0.0, 99.0, None))
    assert memo.last is first  # left as it was
    runner.close()


# -- compiled (compile_demand) ------------------------------------------------------------------
class _Refuses(Exception):
    pass


def _result_of(function: Any, call: Call) -> Any:
    """What ``function(call)`` gives: its value, or the error's type and text."""
    try:
        return ("value", function(call))
    except Exception as exc:  # compared, not handled
        return ("error", type(exc), str(exc), type(exc.__cause__))


_usages = st.one_of(
    st.integers(-2, 5),
    st.sampled_from([0.0, 0.5, 1.5, 2.0, 1e9, -0.0, -1.0, float("inf"), float("nan")]),
    st.sampled_from([True, Fraction(3, 2), "3", None, _Refuses, ConfigurationError]),
)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=3),
    quotas=st.lists(st.sampled_from([1, 2.5, 4, 1e6]), min_size=3, max_size=3),
    data=st.data(),
)
def test_the_compiled_demand_agrees_with_demand_of_call_by_call(
    shape: list[tuple[bool, bool]], quotas: list[float], data: st.DataObject
) -> None:
    """The same calls through ``compile_demand`` and ``demand_of``, each with a memo of
    its own: equal demands or the same error, and the memo's tuple back when a call needs
    what the one before it needed."""
    from rate_limited._demand import compile_demand

    script: list[Any] = []  # what the extractors return, in the order they are called

    def extractor(call: Call) -> Any:
        value = script.pop(0)
        if isinstance(value, type) and issubclass(value, Exception):
            raise value("refused")
        return value

    extractors = [
        (
            Resource(f"r{i}", quotas[i], 60, refill="window"),
            extractor if arguments else None,
            extractor if estimator else None,
        )
        for i, (arguments, estimator) in enumerate(shape)
    ]
    needed = sum(arguments + estimator for arguments, estimator in shape)
    compiled = compile_demand(extractors, DemandMemo(extractors))
    memo = DemandMemo(extractors)
    call = Call(echo, ("p",))
    last: tuple[Any, Any] = (None, None)
    for _ in range(data.draw(st.integers(1, 8), label="calls")):
        values = [data.draw(_usages) for _ in range(needed)]
        script[:] = values
        a = _result_of(compiled, call)
        script[:] = values
        b = _result_of(lambda c: demand_of(extractors, c, memo), call)
        assert a == b or (a[0] == b[0] == "value" and repr(a) == repr(b))  # nan != nan
        if a[0] == "value":
            assert (a[1] is last[0]) == (b[1] is last[1])  # the memo: the same tuple back
            last = (a[1], b[1])


def test_a_compiled_demand_takes_the_general_way_for_a_resource_given_a_partition() -> None:
    from rate_limited._demand import compile_demand

    resource = Resource(
        "tokens",
        100,
        60,
        max_results_usage_estimator=lambda c: 3,
        results_usage_extractor=lambda c, r: 0,
    )
    extractors = [(resource, None, resource.max_results_usage_estimator)]
    compiled = compile_demand(extractors, DemandMemo(extractors))
    assert compiled(Call(echo, ("p",))) == ((0.0, 3.0, None),)
    resource.partition = lambda c: "m"
    assert compiled(Call(echo, ("p",))) == ((0.0, 3.0, "m"),)
