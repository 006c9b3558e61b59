"""The async workers: the fast loop (``Workers._work_fast``) against the general one.

``_work_fast`` writes out, for speed, the usual case of steps that ``_work`` takes through
``_admit``, ``_start_attempt``, ``_returned`` and ``_finish``. Each test here runs the same
calls twice on a ``FakeClock``, once with each loop, and compares everything a run leaves
behind: every call's status, value, attempts, start and end instants, usage, errors and
warnings, the run's counters, and the ledger's meters. The workloads mix what the fast
loop hands to the general path (errors, retries, 429s and their cool-down, calls that
wait for the quota) with what it settles itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rate_limited import Resource, Runner, constant_backoff
from rate_limited._workers import Workers
from rate_limited.testing import FakeClock


class HttpError(Exception):
    def __init__(self, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = {} if retry_after is None else {"retry-after": str(retry_after)}


#: What a call does, by its argument: (seconds it takes, tokens it uses, what it raises on
#: its first attempts and how many times).
Plan = tuple[float, int, str, int]

FAILURES = ("none", "transient", "429", "permanent")


def _resources(refill: str) -> list[Resource]:
    return [
        Resource("requests", 5, 1.0, arguments_usage_extractor=lambda call: 1, refill=refill),  # type: ignore[arg-type]
        Resource(
            "tokens",
            400,
            2.0,
            results_usage_extractor=lambda call, result: result["tokens"],
            max_results_usage_estimator=lambda call: 100,
            refill=refill,
        ),  # type: ignore[arg-type]
    ]


def _function() -> Callable[..., Any]:
    attempts: dict[int, int] = {}

    async def call(index: int, plan: Plan) -> dict[str, int]:
        seconds, tokens, failure, times = plan
        attempts[index] = attempts.get(index, 0) + 1
        if seconds:
            await asyncio.sleep(seconds)
        if failure != "none" and attempts[index] <= times:
            if failure == "transient":
                raise ConnectionError("reset")
            if failure == "429":
                raise HttpError(429, retry_after=0.5)
            raise ValueError("a bug: not retried")
        return {"index": index, "tokens": tokens}

    return call


def _run(plans: list[Plan], resources: list[Resource], **options: Any) -> dict[str, Any]:
    """Everything the run leaves behind, comparable across the two loops."""
    runner = Runner(
        _function(),
        resources,
        clock=FakeClock(),
        progress=False,
        backoff=constant_backoff(0.25),
        **options,
    )
    with runner:
        for index, plan in enumerate(plans):
            runner.schedule(index, plan)
        result = runner.run()
        engine = runner._engine
        assert engine is not None
        stats = engine.stats
        end = engine.loop.time()
        meters = {
            name: (meter.used(end), meter.reserved, meter.corrected)
            for name in ("requests", "tokens")
            if resources
            for meter in [engine.ledger.meter(name)]
        }
        return {
            "outcomes": [
                (
                    o.status,
                    o.result,
                    o.attempts,
                    o.started_at,
                    o.finished_at,
                    o.usage,
                    [type(e).__name__ for e in o.exceptions],
                    [type(w).__name__ for w in o.warnings],
                )
                for o in result.outcomes
            ],
            "elapsed": result.elapsed,
            "stats": (stats.succeeded, stats.failed, stats.rate_limited, stats.cooldowns),
            "meters": meters,
        }


def _both(plans: list[Plan], resources: Callable[[], list[Resource]], **options: Any) -> None:
    fast = _run(plans, resources(), **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Workers, "_work_fast", Workers._work)  # every worker takes _work
        general = _run(plans, resources(), **options)
    assert fast == general


def _plans(count: int) -> list[Plan]:
    """A deterministic mix: quick and slow calls, a few of each failure."""
    return [
        (
            0.0 if i % 3 else 0.3,
            40 + (i * 37) % 200,
            FAILURES[i % 7] if i % 7 < len(FAILURES) else "none",
            1 + i % 2,
        )
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("resources", "options"),
    [
        pytest.param(list, {}, id="no-resources"),
        pytest.param(lambda: _resources("window"), {}, id="window"),
        pytest.param(lambda: _resources("bucket"), {}, id="bucket"),
        pytest.param(lambda: _resources("window"), {"max_concurrent": 2}, id="two-at-once"),
        pytest.param(list, {"max_concurrent": 2}, id="no-resources-two-at-once"),
    ],
)
def test_the_fast_loop_leaves_what_the_general_loop_leaves(
    resources: Callable[[], list[Resource]], options: dict[str, Any]
) -> None:
    _both(_plans(60), resources, **options)


def test_the_fast_loop_is_the_one_that_runs() -> None:
    """Without validators, a timeout, a store or a budget, async calls take the fast loop
    (so the comparison above compares two loops); with any of them, the general one."""
    seen: list[str] = []
    real_fast, real_general = Workers._work_fast, Workers._work

    async def fast(self: Workers) -> None:
        seen.append("fast")
        await real_fast(self)

    async def general(self: Workers) -> None:
        seen.append("general")
        await real_general(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Workers, "_work_fast", fast)
        patch.setattr(Workers, "_work", general)
        _run(_plans(3), _resources("window"), max_concurrent=1)
        assert seen == ["fast"]
        seen.clear()
        _run(_plans(3), _resources("window"), max_concurrent=1, timeout=10)
        assert seen == ["general"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.1, 0.7]),
            st.integers(0, 300),
            st.sampled_from(FAILURES),
            st.integers(1, 2),
        ),
        min_size=1,
        max_size=25,
    ),
    refill=st.sampled_from(["window", "bucket", "none"]),
    max_concurrent=st.integers(1, 4),
)
def test_property_both_loops_agree(plans: list[Plan], refill: str, max_concurrent: int) -> None:
    resources: Callable[[], list[Resource]] = (
        list if refill == "none" else lambda: _resources(refill)
    )
    _both(plans, resources, max_concurrent=max_concurrent)
