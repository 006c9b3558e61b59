"""Admission's queues: the head is the lowest schedule index of the ready queue and the
retry heap; among retries the one that failed least goes first; pauses only extend."""

from __future__ import annotations

import asyncio

from rate_limited import Runner
from rate_limited._admission import Admission
from rate_limited.calls import Call
from rate_limited.testing import FakeClock


def calls(n: int) -> list[Call]:
    runner = Runner(lambda x: x, progress=False, clock=FakeClock())
    return [runner.schedule(i) for i in range(n)]


def test_a_retry_goes_back_ahead_of_later_calls_and_the_least_failed_retry_first() -> None:
    loop = asyncio.new_event_loop()
    try:
        admission = Admission(loop)
        c0, c1, c2, c3 = calls(4)
        admission.reset([c2, c3], partitioned=False)
        c1.exceptions.extend([ValueError(), ValueError()])  # failed twice
        c0.exceptions.append(ValueError())  # failed once
        admission.push_retry(c1)
        assert admission.head() is c1  # index 1 < 2
        admission.push_retry(c0)
        assert admission.head() is c0  # failed least
        taken = []
        while (head := admission.head()) is not None:
            admission.pop_head(head)
            taken.append(head)
        assert taken == [c0, c1, c2, c3]
        assert not admission
    finally:
        loop.close()


def test_a_pause_extends_and_never_shortens() -> None:
    loop = asyncio.new_event_loop()
    try:
        admission = Admission(loop)
        assert admission.pause(10.0)
        assert not admission.pause(5.0)
        assert admission.paused_until == 10.0
        assert admission.pause(12.0) and admission.paused_until == 12.0
    finally:
        loop.close()


def test_the_timer_wakes_the_waiters_at_the_earliest_time_asked() -> None:
    loop = FakeClock().new_event_loop()
    try:
        admission = Admission(loop)

        async def main() -> float:
            start = loop.time()
            admission.arm_timer(start + 5.0)
            admission.arm_timer(start + 2.0)  # earlier: replaces it
            admission.arm_timer(start + 9.0)  # later: the earlier one stays
            await admission.wait()
            return loop.time() - start

        assert loop.run_until_complete(main()) == 2.0
    finally:
        loop.close()


def test_a_reset_puts_calls_with_a_priority_apart_in_priority_order() -> None:
    loop = asyncio.new_event_loop()
    try:
        admission = Admission(loop)
        c0, c1, c2, c3 = calls(4)
        c1.priority, c3.priority = 1, 5
        admission.reset([c0, c1, c2, c3], partitioned=False)
        assert list(admission.ready) == [c0, c2]
        taken = []
        while (head := admission.head()) is not None:
            admission.pop_head(head)
            taken.append(head)
        assert taken == [c3, c1, c0, c2]
        admission.reset(iter([c2, c0]), partitioned=False)  # any iterable, in its order
        assert list(admission.ready) == [c2, c0] and not admission.urgent
    finally:
        loop.close()
