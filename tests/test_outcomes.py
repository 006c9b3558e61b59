"""RunResult.from_calls: a result read from its calls at once, 0.4's shape."""

from __future__ import annotations

from rate_limited import Runner, RunResult, Status
from rate_limited.testing import FakeClock


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd: {x}")
    return x


def test_from_calls_reads_values_and_each_calls_own_exceptions() -> None:
    runner = Runner(fail_odd, max_retries=0, progress=False, clock=FakeClock())
    calls = [runner.schedule(i) for i in range(4)]
    runner.run()
    result = RunResult.from_calls(calls, interrupted=False, elapsed=1.5, store_failures=2)
    assert result.results == [0, None, 2, None]
    assert result.exceptions[1] is calls[1].exceptions  # the call's own list, as in 0.4
    assert result.exceptions[0] == [] and result.exceptions[0] is not calls[0].exceptions
    assert (result.elapsed, result.store_failures, result.interrupted) == (1.5, 2, False)
    assert [o.status for o in result.outcomes] == [Status.SUCCEEDED, Status.FAILED] * 2
    copied = RunResult.from_calls(calls, interrupted=True, copy=True)
    assert copied.exceptions[1] == calls[1].exceptions
    assert copied.exceptions[1] is not calls[1].exceptions  # a snapshot does not change
    runner.close()
