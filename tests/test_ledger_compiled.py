"""The in-memory ledger's compiled per-call pair (``rate_limited.ledgers._compiled``) does
exactly what its ``try_reserve`` and ``settle`` methods do.

Two ledgers with the same resources take the same steps, one through ``per_call()``,
the other through the methods; after every step their answers and every meter must be
equal. No clock: every step takes the time explicitly.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rate_limited import Resource
from rate_limited._meters import WindowMeter
from rate_limited.ledgers import InMemoryLedger as Ledger
from rate_limited.ledgers._compiled import compile_per_call
from rate_limited.ledgers.base import PerCall


def meter_state(ledger: Ledger) -> list[tuple[Any, ...]]:
    """Everything a meter of ``ledger`` holds, comparable with ``==``."""
    states = []
    for name in ledger.names:
        meter = ledger.meter(name)
        state: tuple[Any, ...] = (
            type(meter).__name__,
            meter.level,
            meter.stale_at,
            meter.reserved,
            meter.corrected,
            meter.quota,
        )
        if isinstance(meter, WindowMeter):
            state += (list(meter._log),)
        states.append(state)
    return states


def reservation_state(reservation: Any) -> tuple[Any, ...] | None:
    if reservation is None:
        return None
    return (
        reservation.held,
        reservation.billed,
        reservation.at,
        reservation.rules,
        reservation.deferred,
        reservation.marks,
    )


resource_specs = st.lists(
    st.tuples(
        st.sampled_from([0.3, 1.0, 3.0, 10.0, 50.0]),  # quota (0.3: 0.1 + 0.2 > 0.3 in floats)
        st.sampled_from([0.5, 1.0, 60.0]),  # window
        st.sampled_from(["window", "bucket"]),
        st.sampled_from(["actual", "reserved"]),
        st.sampled_from([0.0, 0.25]),  # refill_delay (bucket)
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(specs=resource_specs, data=st.data())
def test_the_compiled_pair_and_the_methods_agree_step_by_step(
    specs: list[tuple[float, float, str, str, float]], data: st.DataObject
) -> None:
    def make() -> Ledger:
        return Ledger(
            [
                Resource(f"r{i}", quota, window, refill=refill, settle=rule, refill_delay=delay)  # type: ignore[arg-type]
                for i, (quota, window, refill, rule, delay) in enumerate(specs)
            ]
        )

    compiled, plain = make(), make()
    fast = compiled.per_call()
    assert fast.try_reserve.__name__ == "try_reserve"  # compiled, not the bound method
    amount = st.sampled_from([0.0, 0.0, 0.1, 0.2, 0.7, 1.0, 2.5, 7.0])
    now = 0.0
    held: list[tuple[Any, Any]] = []  # (compiled's reservation, plain's)
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        steps = ["reserve"] * 4 + ["settle"] * 3 + ["wait", "keep", "release", "reports"]
        step = data.draw(st.sampled_from(steps))
        if step == "wait":
            now += data.draw(st.sampled_from([0.0, 0.001, 0.1, 0.3, 1.0, 61.0]))
        elif step == "reserve":
            demand = [(data.draw(amount), data.draw(amount), None) for _ in specs]
            a = fast.try_reserve(demand, now)
            b = plain.try_reserve(demand, now)
            assert reservation_state(a) == reservation_state(b)
            if a is not None:
                held.append((a, b))
        elif step in ("settle", "keep", "release") and held:
            a, b = held.pop(data.draw(st.integers(0, len(held) - 1)))
            if step == "settle":
                results = [data.draw(amount) for _ in specs]
                assert fast.settle(a, results, now) == plain.settle(b, results, now)
            else:
                getattr(compiled, step)(a, now)
                getattr(plain, step)(b, now)
        elif step == "reports":  # meters tracked from now on: the compiled pair steps aside
            compiled.expect_reports()
            plain.expect_reports()
        assert meter_state(compiled) == meter_state(plain)
        assert compiled.snapshot(now) == plain.snapshot(now)


def test_a_partitioned_ledger_uses_its_methods() -> None:
    ledger = Ledger([Resource("r", 10, 1.0, partition=lambda call: "k")])
    assert ledger.per_call() == PerCall(ledger.try_reserve, ledger.settle)


def test_after_a_rule_switched_the_compiled_pair_calls_the_methods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make() -> Ledger:
        return Ledger([Resource("r", 10, 1.0)])

    compiled, plain = make(), make()
    fast = compiled.per_call()
    a = fast.try_reserve([(1.0, 2.0, None)], 0.0)
    b = plain.try_reserve([(1.0, 2.0, None)], 0.0)
    calls: list[str] = []
    for name in ("try_reserve", "settle"):
        original = getattr(Ledger, name)

        def spy(self: Ledger, *args: Any, _original: Any = original, _name: str = name) -> Any:
            if self is compiled:
                calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(Ledger, name, spy)
    for ledger in (compiled, plain):
        ledger._rules = ("reserved",)  # what a switch does: a new tuple
    assert fast.settle(a, [1.0], 0.5) == plain.settle(b, [1.0], 0.5)
    demand = [(1.0, 3.0, None)]
    assert reservation_state(fast.try_reserve(demand, 0.5)) == reservation_state(
        plain.try_reserve(demand, 0.5)
    )
    assert calls == ["settle", "try_reserve"]
    assert meter_state(compiled) == meter_state(plain)


def test_the_compiled_source_holds_only_what_the_template_makes() -> None:
    bind = compile_per_call.__globals__["_factory"](("actual", "reserved"))
    source = bind.__doc__
    assert "def try_reserve(demand, now)" in source
    assert "m1.bill(c1, now)" in source  # the reserved rule bills the estimate at admission
    with pytest.raises(ValueError, match="unknown settle rule"):
        compile_per_call.__globals__["_factory"](("actual", "__import__('os')"))


@pytest.mark.parametrize("rule", ["actual", "reserved"])
@pytest.mark.parametrize("refill", ["window", "bucket"])
def test_the_compiled_pair_agrees_at_float_rounding_edges(rule: str, refill: str) -> None:
    """Where floats round: 0.1 + 0.2 > 0.3 must still fit a quota of 0.3 (the ledger's
    slack), and estimates held and released in another order must not leave a negative
    reservation behind (0.7 + 0.1 - 0.7 - 0.1 < 0)."""

    def make() -> Ledger:
        return Ledger([Resource("r", 0.3, 1.0, refill=refill, settle=rule)])  # type: ignore[arg-type]

    compiled, plain = make(), make()
    fast = compiled.per_call()
    for demand in ([(0.1, 0.0, None)], [(0.2, 0.0, None)]):
        a, b = fast.try_reserve(demand, 0.0), plain.try_reserve(demand, 0.0)
        assert a is not None
        assert reservation_state(a) == reservation_state(b)
    big = Ledger([Resource("r", 10, 1.0, refill=refill, settle=rule)])  # type: ignore[arg-type]
    twin = Ledger([Resource("r", 10, 1.0, refill=refill, settle=rule)])  # type: ignore[arg-type]
    fast = big.per_call()
    pairs = [
        (fast.try_reserve([(0.0, e, None)], 0.0), twin.try_reserve([(0.0, e, None)], 0.0))
        for e in (0.7, 0.1)
    ]
    for a, b in pairs:
        assert fast.settle(a, [0.0], 0.0) == twin.settle(b, [0.0], 0.0)
        assert meter_state(big) == meter_state(twin)
    assert big.meter("r").reserved == 0.0
