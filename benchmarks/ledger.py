"""The in-memory ledger's cost per call, side by side with another revision's.

What: ``InMemoryLedger.try_reserve`` then ``settle`` for each of ``N`` calls on the two
resources of ``overhead.py``'s realistic configuration (requests per minute billed at
admission; tokens per minute estimated at 1,000 before the call, held, and billed 120 from
its result), 64 calls in flight (the Runner's default ``max_concurrent``), the clock
advancing 30 µs per call (a million calls in 30 s: every usage is still in its 60 s
window at the end). Measured: CPU seconds per call (reserve + settle, both resources), bytes a
reservation holds while its call is in flight, and the bytes the ledger keeps per settled
call (its window meters' logs). A second configuration runs the presets' way: buckets,
``settle="reserved"`` for tokens, and the provider's headers expected
(``expect_reports``: the ledger keeps what reconciliation needs).

Why: the engine pays this per call, per resource; issue 11 asks for O(1) amortized time
per resource per call and bounded memory. Only the ledger runs here (no engine), so the
figures are the ledger's own.

How: the other revision's ``rate_limited`` package is extracted with ``git archive``
into a temporary folder; every measurement runs this file as a worker in a fresh
``python -I`` process that imports either that copy or this checkout, alternating the two
repeat after repeat, so that the noise of a shared machine hits both alike.

    python benchmarks/ledger.py [--calls 200000] [--repeat 5] [--base main] [--write]

``--write`` replaces the "### Ledger micro-benchmark" subsection of the "## Overhead" section
of ``benchmarks/RESULTS.md`` and nothing else (``_common.replace_section``): the section's
lead, which ``overhead.py --write`` writes, and the notes under the subsection's
``<!-- notes below: kept by --write -->`` line stay as they are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUBSECTION = "### Ledger micro-benchmark"
IN_FLIGHT = 64
STEP = 30e-6  # seconds of loop time per call
ESTIMATE = 1000.0
USED = 120.0
CONFIGS = ("window", "bucket_reports")


def _ledger(config: str) -> tuple[Any, tuple[tuple[float, float, None], ...]]:
    from rate_limited.ledgers import InMemoryLedger
    from rate_limited.resources import Resource

    bucket = config == "bucket_reports"
    refill = "bucket" if bucket else "window"
    resources = [
        Resource("requests", 10**12, 60, lambda call: 1, refill=refill),
        Resource(
            "tokens",
            10**15,
            60,
            results_usage_extractor=lambda call, result: USED,
            max_results_usage_estimator=lambda call: ESTIMATE,
            refill=refill,
            settle="reserved" if bucket else "actual",
        ),
    ]
    ledger = InMemoryLedger(resources)
    if bucket:
        ledger.expect_reports()
    return ledger, ((1.0, 0.0, None), (0.0, ESTIMATE, None))


def _run(ledger: Any, demand: Any, calls: int, start: int = 0) -> None:
    in_flight: deque[Any] = deque()
    used = [0.0, USED]
    for i in range(start, start + calls):
        now = i * STEP
        in_flight.append(ledger.try_reserve(demand, now))
        if len(in_flight) >= IN_FLIGHT:
            ledger.settle(in_flight.popleft(), used, now)
    now = (start + calls) * STEP
    while in_flight:
        ledger.settle(in_flight.popleft(), used, now)


def worker(config: str, calls: int) -> dict[str, float]:
    """One measurement in this interpreter (whichever ``rate_limited`` it imports)."""
    import gc

    ledger, demand = _ledger(config)
    _run(ledger, demand, 1000)  # warm up
    gc.collect()
    started = time.process_time()  # CPU time: a shared machine's other work left out
    _run(ledger, demand, calls, 1000)
    seconds = (time.process_time() - started) / calls

    ledger, demand = _ledger(config)
    _run(ledger, demand, 1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [ledger.try_reserve(demand, (1000 + i) * STEP) for i in range(1000)]
    per_reservation = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    for reservation in held:
        ledger.settle(reservation, [0.0, USED], 1000 * STEP + 1000 * STEP)
    del held
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    _run(ledger, demand, calls, 2000)
    gc.collect()
    per_call = (tracemalloc.get_traced_memory()[0] - before) / calls
    tracemalloc.stop()
    return {"seconds": seconds, "reservation": per_reservation, "kept": per_call}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="N (default 200000)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats (default 5)")
    parser.add_argument("--base", default="main", help="the revision compared (default main)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--worker", nargs=2, metavar=("SOURCE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        source, config = args.worker
        if source != "-":
            sys.path.insert(0, source)
        print(json.dumps(worker(config, args.calls)))
        return 0

    from _common import command_line, markdown_table, median, replace_section, run_worker, today

    root = Path(__file__).resolve().parent.parent
    script = str(Path(__file__).resolve())
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ledger_base_") as base:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", args.base, "rate_limited"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", args.base],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        base_name = f"{args.base} ({commit})"
        sides = {"this": "-", base_name: base}
        for repeat in range(args.repeat):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for config in CONFIGS:
                for side in order:
                    found = run_worker(
                        sys.executable,
                        script,
                        ["--calls", str(args.calls), "--worker", sides[side], config],
                        cwd=root,
                    )
                    samples.setdefault((side, config), []).append(found)
    rows = []
    for config in CONFIGS:
        this, other = samples[("this", config)], samples[(base_name, config)]

        def figure(side: list[dict[str, float]], what: str) -> float:
            return median([sample[what] for sample in side])

        us_this, us_other = figure(this, "seconds") * 1e6, figure(other, "seconds") * 1e6
        rows.append(
            [
                config,
                f"{us_this:.2f} µs / {us_other:.2f} µs",
                f"{us_other / us_this:.2f}x",
                f"{figure(this, 'reservation'):.0f} B / {figure(other, 'reservation'):.0f} B",
                f"{figure(this, 'kept'):.1f} B / {figure(other, 'kept'):.1f} B",
            ]
        )
    header = [
        "configuration",
        f"reserve + settle per call: this / {base_name}",
        "speed-up",
        "bytes per reservation",
        "bytes kept per settled call",
    ]
    table = markdown_table(header, rows)
    print(table)
    if args.write:
        body = [
            SUBSECTION,
            "",
            f"Date: {today()}. The in-memory ledger alone (no engine): `try_reserve` + "
            f"`settle` of N = {args.calls:,} calls on requests + tokens resources, 64 in "
            "flight, the clock 30 µs per call, CPU time per call; `window`: 0.4's refill, "
            "`actual` rule (`overhead.py`'s realistic configuration); `bucket_reports`: "
            "the presets' buckets, tokens `reserved`, headers expected. Medians of "
            f"{args.repeat} fresh processes per side, alternating; bytes from tracemalloc.",
            "",
            "```",
            command_line(script, sys.argv[1:] if argv is None else argv),
            "```",
            "",
            table,
        ]
        replace_section("Overhead", "\n".join(body), lead=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
