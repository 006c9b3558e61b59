"""A million async calls with two resources: peak memory and the time to schedule and run.

What: ``N`` (default 1,000,000) trivial async calls through one Runner with the realistic
configuration of ``overhead.py`` (requests per minute billed at admission; tokens per
minute estimated before the call, held, and billed from its result), quotas far above what
the calls use, so nothing waits and all that is measured is the package.
Why: a batch of a million calls must fit a laptop and not wait on the library. The targets
are absolute, so there is no 0.4 side: under 1 GB peak RSS, and under 30 s from the first
``schedule()`` to the end of ``run()``.

How: each repeat in a fresh ``python -I`` process (this same file with ``--worker``), so
one repeat's heap does not carry into the next; peak RSS is ``ru_maxrss`` of that process
(the interpreter and the imports included).

    python benchmarks/scale.py [--calls 1000000] [--repeat 3] [--write]

``--write`` replaces the "## Scale" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GIB = 2**30
TARGET_RSS = 10**9  # bytes
TARGET_SECONDS = 30.0


def worker(calls: int) -> dict[str, Any]:
    """One measurement in this interpreter."""
    import resource

    # The worker runs isolated (python -I): its own folder is not on sys.path. Only the
    # new package is measured here, so overhead.py's configuration is imported from it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import _answer_async, _realistic_resources

    from rate_limited import Runner

    runner = Runner(_answer_async, _realistic_resources(), progress=False)
    started = time.perf_counter()
    for i in range(calls):
        runner.schedule(i)
    scheduled = time.perf_counter()
    result = runner.run()
    finished = time.perf_counter()
    if len(result.results) != calls or result.results[-1]["x"] != calls - 1:
        raise AssertionError("wrong results")
    runner.close()
    return {
        "schedule": scheduled - started,
        "run": finished - scheduled,
        "total": finished - started,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="N (default 1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (default 3)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.calls)))
        return 0

    from _common import best, markdown_table, median, preamble, replace_section, run_worker

    script = str(Path(__file__).resolve())
    samples = []
    for repeat in range(args.repeat):
        worker_args = ["--worker", "--calls", str(args.calls)]
        samples.append(run_worker(sys.executable, script, worker_args, timeout=1800))
        print(f"repeat {repeat + 1}/{args.repeat}: {samples[-1]}")

    def cell(key: str, scale: float, unit: str) -> str:
        values = [s[key] / scale for s in samples]
        return f"{best(values):.2f} {unit} / {median(values):.2f} {unit}"

    rss_ok = median([s["peak_rss"] for s in samples]) < TARGET_RSS
    time_ok = median([s["total"] for s in samples]) < TARGET_SECONDS
    rows = [
        ["schedule N calls", cell("schedule", 1, "s"), "-", "-"],
        ["run()", cell("run", 1, "s"), "-", "-"],
        [
            "schedule + run",
            cell("total", 1, "s"),
            f"< {TARGET_SECONDS:g} s",
            "yes" if time_ok else "**no**",
        ],
        ["peak RSS", cell("peak_rss", GIB, "GiB"), "< 1 GB", "yes" if rss_ok else "**no**"],
    ]
    report = "\n".join(
        [
            *preamble(__file__, argv),
            f"N = {args.calls:,} async calls (`async def f(x)` returning a result with a "
            "token count), two resources: requests per minute and tokens per minute with an "
            "estimator and a results extractor (quotas far above what N calls use: nothing "
            f"waits). {args.repeat} repeats, each in a fresh process; best / median.",
            "",
            markdown_table(("measure", "best / median", "target", "met?"), rows),
            "",
            "A target is met when the median meets it. Peak RSS is the process's "
            "`ru_maxrss`, the interpreter and imports included.",
        ]
    )
    print()
    print(report)
    if args.write:
        replace_section("Scale", report)
        print("\nwrote the 'Scale' section of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
