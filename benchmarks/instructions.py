"""Instructions per call, counted by callgrind, side by side with rate_limited 0.4.

What: the CPU instructions one call costs in ``overhead.py``'s configurations (a trivial
``async def``; ``realistic``: requests and tokens per minute, an estimator and a results
extractor), schedule and run included, or ``schedule()`` alone.
Why: wall-clock ratios on a shared machine swing by 10-20% from one run to the next;
an instruction count does not move with load, so it tells whether a change to the
per-call path helped, and by how much, in one run of a few seconds.

How: each side runs ``overhead.py``'s runner in a fresh interpreter under
``valgrind --tool=callgrind`` twice, with ``SMALL`` and ``LARGE`` calls; the difference
divided by ``LARGE - SMALL`` is the cost of one call, without the interpreter's start-up
and imports. ``PYTHONHASHSEED=0`` makes the counts repeat. Needs ``valgrind`` on PATH.

    python benchmarks/instructions.py [--config realistic] [--only-schedule] [--no-04]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 10_000, 30_000
CONFIGS = ("plain", "realistic")


def worker(config: str, calls: int, run: bool) -> None:
    """Schedule ``calls`` calls of ``config`` and, if ``run``, run them."""
    sys.path.insert(0, str(HERE))
    import overhead

    resources = overhead._realistic_resources() if config == "realistic" else None
    runner = overhead._make_runner(overhead._answer_async, resources)
    for i in range(calls):
        runner.schedule(i)
    if run:
        runner.run()
    overhead._dispose(runner)


def count(python: str, config: str, calls: int, run: bool) -> int:
    """Instructions callgrind counts for one worker process."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        python,
        "-I",
        str(Path(__file__).resolve()),
        "--worker",
        config,
        str(calls),
        "run" if run else "schedule",
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as folder:  # -I: neither cwd nor this folder on path
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder)
    found = re.search(r"Collected : ([\d,]+)", done.stderr)
    if done.returncode or found is None:
        raise RuntimeError(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_call(python: str, config: str, run: bool) -> float:
    return (count(python, config, LARGE, run) - count(python, config, SMALL, run)) / (LARGE - SMALL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="realistic")
    parser.add_argument("--only-schedule", action="store_true", help="schedule() alone")
    parser.add_argument("--no-04", action="store_true", help="this checkout only")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config, calls, what = args.worker
        worker(config, int(calls), what == "run")
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on PATH (apt-get install valgrind)")
    sides = [("new", sys.executable)]
    if not args.no_04:
        sys.path.insert(0, str(HERE))
        from _common import ensure_venv04

        sides.append(("0.4", str(ensure_venv04())))
    run = not args.only_schedule
    what = "schedule + run" if run else "schedule() only"
    print(f"{args.config}, {what}: instructions per call ({SMALL:,} and {LARGE:,} calls)")
    for name, python in sides:
        print(f"  {name:4} {per_call(python, args.config, run):10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
