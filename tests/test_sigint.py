"""SigintGuard: SIGINT is the run's while a guard is active, and the handler found by the
first guard is back when the last one ends, in whatever order they end."""

from __future__ import annotations

import signal
import threading

import pytest

from rate_limited._sigint import SigintGuard


@pytest.mark.parametrize(
    "order", [pytest.param((1, 0), id="nested"), pytest.param((0, 1), id="crossed")]
)
def test_the_handler_found_first_is_back_when_the_last_guard_ends(order: tuple[int, int]) -> None:
    found = signal.getsignal(signal.SIGINT)
    guards = [SigintGuard(), SigintGuard()]
    for guard in guards:
        guard.__enter__()
    guards[order[0]].__exit__(None, None, None)
    assert signal.getsignal(signal.SIGINT) is not found  # one guard is still active
    guards[order[1]].__exit__(None, None, None)
    assert signal.getsignal(signal.SIGINT) is found


def test_a_sigint_goes_to_the_guard_installed_last() -> None:
    calls: list[str] = []
    with SigintGuard() as outer:
        outer.attach(lambda: calls.append("outer"))
        inner = SigintGuard().__enter__()
        inner.attach(lambda: calls.append("inner"))
        signal.raise_signal(signal.SIGINT)
        outer.__exit__(None, None, None)  # crossed: the inner guard stays in charge
        signal.raise_signal(signal.SIGINT)
        inner.__exit__(None, None, None)
    assert calls == ["inner", "inner"]


def test_sigints_before_attach_are_delivered_at_attach_two_at_most() -> None:
    calls: list[int] = []
    with SigintGuard() as guard:
        for _ in range(3):
            signal.raise_signal(signal.SIGINT)
        guard.attach(lambda: calls.append(1))
    assert calls == [1, 1]


def test_a_guard_ended_off_the_main_thread_hands_the_next_sigint_on() -> None:
    """An iteration collected in another thread cannot put the handler back there: the
    next SIGINT does, and is handled by what the guard had found."""
    found = signal.getsignal(signal.SIGINT)
    guard = SigintGuard().__enter__()
    guard.attach(lambda: pytest.fail("an ended guard took the SIGINT"))
    ended = threading.Thread(target=guard.__exit__, args=(None, None, None))
    ended.start()
    ended.join()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is found
