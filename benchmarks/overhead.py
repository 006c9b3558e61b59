"""Overhead of the Runner itself, side by side with rate_limited 0.4.

What: the cost of pushing trivial calls (``def f(x): return x`` and its async twin)
through ``Runner`` with no quota to wait for, so all that is measured is the library:
scheduling, dispatching, collecting results, and the memory each scheduled call takes.
Why: the rewrite promises to be cheaper than 0.4 at 0.4's best setting
(``progress_interval=0.01``): sync calls at least 3x faster, async calls at least 2x
faster, ``run()`` of one trivial call under 5 ms, and no more memory per scheduled call.

How: both packages import as ``rate_limited``, so each runs in its own interpreter: the new
one with this interpreter (the project's virtualenv), 0.4 in ``benchmarks/.venv04``
(created on first use). Every measurement runs this same file as a worker
(``--worker MEASURE``) in a fresh ``python -I`` process, alternating the two sides repeat
after repeat so that the noise of a shared machine hits both alike; the ratios compare the
two sides measured in the same run.

    python benchmarks/overhead.py [--calls 100000] [--repeat 5] [--write]

``--write`` replaces the lead of the "## Overhead" section of ``benchmarks/RESULTS.md`` (its
text before the first ``### `` subsection) and nothing else: ``ledger.py``'s subsection and
the notes under a ``<!-- notes below: kept by --write -->`` line stay as they are.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEASURES = ("sync", "async", "sync_realistic", "async_realistic", "one_call", "memory")
#: The realistic configuration: what an LLM workload declares. Quotas far above what N calls
#: use, so nothing waits and all that is measured is the ledger's work per call: a request
#: billed at admission, tokens estimated before the call (held) and billed from its result.
REQUESTS_PER_MINUTE = 10**12
TOKENS_PER_MINUTE = 10**15
ESTIMATED_TOKENS = 1000
USED_TOKENS = 120
ONE_CALL_SAMPLES = 20
PROGRESS_INTERVAL = 0.01  # 0.4's best setting (its run loop polls at this interval)


# -- the worker: runs in a fresh interpreter, with either package ------------------------------
def _trivial(x: Any) -> Any:
    return x


async def _trivial_async(x: Any) -> Any:
    return x


def _answer(x: Any) -> dict[str, Any]:
    return {"x": x, "usage": USED_TOKENS}


async def _answer_async(x: Any) -> dict[str, Any]:
    return {"x": x, "usage": USED_TOKENS}


def _realistic_resources() -> list[Any]:
    """Requests per minute and tokens per minute (an estimator and a results extractor),
    declared with 0.4's API, which both packages take."""
    from rate_limited.resources import Resource

    return [
        Resource(
            "requests_per_minute",
            REQUESTS_PER_MINUTE,
            time_window_seconds=60,
            arguments_usage_extractor=lambda call: 1,
        ),
        Resource(
            "tokens_per_minute",
            TOKENS_PER_MINUTE,
            time_window_seconds=60,
            results_usage_extractor=lambda call, result: result["usage"],
            max_results_usage_estimator=lambda call: ESTIMATED_TOKENS,
        ),
    ]


def _make_runner(function: Callable[..., Any], resources: list[Any] | None = None) -> Any:
    """A Runner (no resources unless given); the new package (it has ``__version__``)
    without a bar."""
    import rate_limited
    from rate_limited.runner import Runner

    kwargs: dict[str, Any] = {"progress_interval": PROGRESS_INTERVAL}
    if hasattr(rate_limited, "__version__"):  # the rewrite; 0.4 has no __version__
        kwargs["progress"] = False
    return Runner(function, resources or [], **kwargs)


def _dispose(runner: Any) -> None:
    """Free a runner's threads (outside any timed region)."""
    close = getattr(runner, "close", None)
    if close is not None:
        close()
        return
    pool = getattr(runner, "requests_executor_pool", None)  # 0.4
    if pool is not None:
        pool.shutdown(wait=False)


def _check(results: Sequence[Any], exceptions: Sequence[Any], calls: int) -> None:
    results = [r["x"] if isinstance(r, dict) else r for r in results]
    if len(results) != calls or list(results) != list(range(calls)) or any(exceptions):
        raise AssertionError(f"wrong results for {calls} calls: {list(results)[:5]}...")


def _max_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def _measure_batch(
    function: Callable[..., Any], calls: int, resources: list[Any] | None = None
) -> dict[str, Any]:
    """Schedule ``calls`` calls, then run(): seconds for each, and the peak RSS growth."""
    runner = _make_runner(function, resources)
    gc.collect()
    rss_before = _max_rss_bytes()
    started = time.perf_counter()
    for i in range(calls):
        runner.schedule(i)
    scheduled = time.perf_counter()
    results, exceptions = runner.run()
    finished = time.perf_counter()
    rss_after = _max_rss_bytes()
    _check(results, exceptions, calls)
    _dispose(runner)
    rss = None if rss_before is None or rss_after is None else rss_after - rss_before
    return {
        "schedule": scheduled - started,
        "run": finished - scheduled,
        "total": finished - started,
        "rss_per_call": None if rss is None else rss / calls,
    }


def _measure_one_call() -> dict[str, Any]:
    """A fresh Runner, one trivial sync call, run(): seconds of run(), median of 20."""
    times = []
    for i in range(ONE_CALL_SAMPLES):
        runner = _make_runner(_trivial)
        runner.schedule(i)
        gc.collect()
        started = time.perf_counter()
        results, exceptions = runner.run()
        times.append(time.perf_counter() - started)
        if i == 0:
            _check(results, exceptions, 1)
        _dispose(runner)
    times.sort()
    return {"median": times[len(times) // 2], "min": times[0], "max": times[-1]}


def _measure_memory(calls: int) -> dict[str, Any]:
    """Peak traced bytes while scheduling and running ``calls`` async calls, per call."""
    import tracemalloc

    runner = _make_runner(_trivial_async)
    gc.collect()
    tracemalloc.start()
    for i in range(calls):
        runner.schedule(i)
    results, exceptions = runner.run()
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _check(results, exceptions, calls)
    _dispose(runner)
    return {"peak_per_call": peak / calls}


def worker(measure: str, calls: int) -> dict[str, Any]:
    """One measurement in this interpreter, with whichever rate_limited it imports."""
    import rate_limited

    info: dict[str, Any] = {
        "measure": measure,
        "file": rate_limited.__file__,
        "version": getattr(rate_limited, "__version__", None),
        "python": sys.version.split()[0],
    }
    if measure == "sync":
        info.update(_measure_batch(_trivial, calls))
    elif measure == "async":
        info.update(_measure_batch(_trivial_async, calls))
    elif measure == "sync_realistic":
        info.update(_measure_batch(_answer, calls, _realistic_resources()))
    elif measure == "async_realistic":
        info.update(_measure_batch(_answer_async, calls, _realistic_resources()))
    elif measure == "one_call":
        info.update(_measure_one_call())
    elif measure == "memory":
        info.update(_measure_memory(calls))
    elif measure == "check":
        info.update(_measure_batch(_trivial, min(calls, 100)))
    else:
        raise ValueError(f"unknown measure {measure!r}")
    return info


# -- the driver: runs both sides, compares, reports ------------------------------------------
@dataclass(frozen=True)
class Row:
    """One line of the table: a value taken from the workers of one measure."""

    label: str
    measure: str
    key: str
    unit: str  # "s" or "B"
    lower_ratio_is_better: bool = False  # memory: new / 0.4; times: 0.4 / new
    target: str = "-"
    check: Callable[[float, float, float], bool] | None = None  # (new median, ratio best, med)


def _faster(times: float) -> Callable[[float, float, float], bool]:
    """The check of a time row: both the best and the median ratio ``times`` or more."""
    return lambda _new, ratio_best, ratio_median: min(ratio_best, ratio_median) >= times


def _time_rows(label: str, measure: str, times: float) -> tuple[Row, ...]:
    """The rows of one batch measure: schedule + run (its target: ``times`` faster than
    0.4), then each part alone."""
    return (
        Row(
            f"{label}: schedule + run, N calls",
            measure,
            "total",
            "s",
            target=f">= {times:g}x faster",
            check=_faster(times),
        ),
        Row(f"{label}: schedule only", measure, "schedule", "s"),
        Row(f"{label}: run only", measure, "run", "s"),
    )


ROWS = (
    *_time_rows("sync", "sync", 3),
    *_time_rows("async", "async", 2),
    *_time_rows("realistic sync", "sync_realistic", 3),
    *_time_rows("realistic async", "async_realistic", 2),
    Row(
        "one call: run() (median of 20)",
        "one_call",
        "median",
        "s",
        target="< 5 ms",
        check=lambda new, _rb, _rm: new < 0.005,
    ),
    Row(
        "memory: peak traced bytes / call",
        "memory",
        "peak_per_call",
        "B",
        lower_ratio_is_better=True,
        target="<= 0.4's",
        check=lambda _new, rb, rm: rb <= 1 and rm <= 1,
    ),
    Row(
        "memory: peak RSS growth / call (async runs)",
        "async",
        "rss_per_call",
        "B",
        lower_ratio_is_better=True,
    ),
)


def _format(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value:,.0f} B"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.3f} s"


def _summarize(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> list[list[str]]:
    from _common import best, median

    rows = []
    for row in ROWS:
        new = [s[row.key] for s in samples["new"][row.measure] if s.get(row.key) is not None]
        old = [s[row.key] for s in samples["0.4"][row.measure] if s.get(row.key) is not None]
        if not new or not old:
            continue
        new_best, new_med, old_best, old_med = best(new), median(new), best(old), median(old)
        if row.lower_ratio_is_better:
            ratio_best, ratio_med = new_best / old_best, new_med / old_med
        else:
            ratio_best, ratio_med = old_best / new_best, old_med / new_med
        met = (
            "-"
            if row.check is None
            else ("yes" if row.check(new_med, ratio_best, ratio_med) else "**no**")
        )
        rows.append(
            [
                row.label,
                f"{_format(new_best, row.unit)} / {_format(new_med, row.unit)}",
                f"{_format(old_best, row.unit)} / {_format(old_med, row.unit)}",
                f"{ratio_best:.2f}x / {ratio_med:.2f}x",
                row.target,
                met,
            ]
        )
    return rows


HEADER = (
    "measure",
    "new: best / median",
    "0.4: best / median",
    "ratio: best / median",
    "target",
    "met?",
)


def _report(rows: list[list[str]], args: argparse.Namespace, argv: Sequence[str]) -> str:
    from _common import markdown_table, preamble

    return "\n".join(
        [
            *preamble(__file__, argv),
            f"N = {args.calls:,} trivial calls (`def f(x): return x`, or `async def`), no "
            "resources; the *realistic* rows declare what an LLM workload does, the same "
            "`Resource`s on both sides: requests per minute (1 per call, billed at "
            "admission) and tokens per minute (an estimator of "
            f"{ESTIMATED_TOKENS:,} before the call, a results extractor reading "
            f"{USED_TOKENS} from the result), quotas far above what N calls use so that "
            "nothing waits and only the ledger's work is measured. "
            f"`progress_interval={PROGRESS_INTERVAL}` on both sides (0.4's best "
            "setting; the new package also with `progress=False`); each measure repeated "
            f"{args.repeat} times in fresh processes. Ratios: 0.4 time / new time (higher is "
            "better); for memory, new bytes / 0.4 bytes (lower is better).",
            "",
            markdown_table(HEADER, rows),
            "",
            "The two sides were measured side by side in this one run, alternating process by "
            "process (new, 0.4, 0.4, new, ...), so the ratios compare like with like even on a "
            "noisy machine; absolute times vary from run to run and machine to machine. A "
            "target is met when both the best and the median ratio meet it (for one call: the "
            "new package's median). Peak traced bytes come from `tracemalloc` (started before "
            "scheduling, read after `run()`); the RSS growth is `ru_maxrss` after `run()` "
            "minus before scheduling, in the async timing runs (no tracemalloc).",
        ]
    )


def _verify_sides(python_new: str, python_04: Path, timeout: float) -> None:
    """Each interpreter imports the package it should (and runs it correctly)."""
    from _common import BENCH_DIR, REPO_ROOT, run_worker

    script = str(Path(__file__).resolve())
    new = run_worker(python_new, script, ["--worker", "check"], timeout=timeout)
    old = run_worker(str(python_04), script, ["--worker", "check"], timeout=timeout)
    new_file, old_file = Path(new["file"]).resolve(), Path(old["file"]).resolve()
    print(f"new: rate_limited {new['version']} from {new_file} (Python {new['python']})")
    print(f"0.4: rate_limited from {old_file} (Python {old['python']})")
    if not new_file.is_relative_to(REPO_ROOT / "rate_limited"):
        raise SystemExit(f"the project's interpreter imports {new_file}, not this checkout")
    if old["version"] is not None or not old_file.is_relative_to(BENCH_DIR / ".venv04"):
        raise SystemExit(f"the 0.4 interpreter imports {old_file}, not rate_limited 0.4")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="N (default 100000)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats per side (default 5)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one worker process may take (default 300)",
    )
    parser.add_argument("--worker", choices=(*MEASURES, "check"), help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1:
        parser.error("--calls and --repeat must be at least 1")

    if args.worker:  # in a fresh interpreter: one measurement, one JSON line
        print(json.dumps(worker(args.worker, args.calls)))
        return 0

    from _common import WorkerError, ensure_venv04, replace_section, run_worker

    python_new = sys.executable
    try:
        python_04 = ensure_venv04()
        _verify_sides(python_new, python_04, args.timeout)
    except WorkerError as exc:
        print(exc, file=sys.stderr)
        return 1
    sides = {"new": python_new, "0.4": str(python_04)}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        side: {measure: [] for measure in MEASURES} for side in sides
    }
    script = str(Path(__file__).resolve())
    started = time.perf_counter()
    for repeat in range(args.repeat):
        for index, measure in enumerate(MEASURES):
            # Alternate which side goes first, so neither always runs on a warmer machine.
            order = ("new", "0.4") if (repeat + index) % 2 == 0 else ("0.4", "new")
            for side in order:
                worker_args = ["--worker", measure, "--calls", str(args.calls)]
                try:
                    result = run_worker(sides[side], script, worker_args, timeout=args.timeout)
                except WorkerError as exc:
                    print(f"{side} {measure} failed:\n{exc}", file=sys.stderr)
                    return 1
                samples[side][measure].append(result)
        print(f"repeat {repeat + 1}/{args.repeat} done ({time.perf_counter() - started:.0f} s)")

    report = _report(_summarize(samples), args, argv)
    print()
    print(report)
    if args.write:
        replace_section("Overhead", report)
        print("\nwrote the lead of the 'Overhead' section of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
