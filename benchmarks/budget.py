"""What a Budget costs per call, side by side with the same run without one.

What: trivial async calls (``async def f(x): return x``, so that all that is measured is
the library) through a Runner with the quotas users give a chat preset (requests and
tokens per minute, both far from binding), with and without ``Budget(usd=...)``, each
without a store and with the store users keep runs in (a SQLite file; Redis when
``--redis URL`` is given). The budget's spend book is where it lives: memory without a
store, the store's SQLite file or Redis keys with one; every call reserves its maximum
cost and settles its cost there (two atomic operations per call).
Why: a budget must not make the Runner the bottleneck of a job it protects; with a store,
the per-call cost of the shared book is the price of surviving a restart and of sharing
one budget between processes.

How: each configuration runs ``--calls`` calls, alternating configurations repeat after
repeat in this one process (the noise of a shared machine hits all alike); the ratios
compare each budget row with the row of the same store without a budget.

    .venv/bin/python benchmarks/budget.py [--calls 5000] [--repeat 3] [--redis URL] [--write]

``--write`` replaces the "## Budget" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from rate_limited import Budget, Resource, Runner


async def trivial(x: int) -> int:
    return x


def resources() -> list[Resource]:
    return [
        Resource("requests_per_minute", 1_000_000, 60, refill="bucket"),
        Resource(
            "tokens_per_minute",
            1_000_000_000,
            60,
            arguments_usage_extractor=lambda call: 20,
            results_usage_extractor=lambda call, result: 60,
            max_results_usage_estimator=lambda call: 100,
            refill="bucket",
            settle="reserved",
        ),
    ]


def one_run(calls: int, store: Any, budget: bool) -> float:
    options: dict[str, Any] = {"progress": False, "max_concurrent": 64}
    if store is not None:
        options["store"] = store
    if budget:
        options["budget"] = Budget(
            usd=1e9,
            cost=lambda call, result: 0.00003,
            max_cost=lambda call: 0.00006,
            name=f"bench-{uuid.uuid4().hex}",
        )
    runner = Runner(trivial, resources(), **options)
    started = time.perf_counter()
    for i in range(calls):
        runner.schedule(i)
    result = runner.run()
    elapsed = time.perf_counter() - started
    assert result.counts() == {"succeeded": calls}
    runner.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", default=None, help="a Redis URL for the Redis rows")
    parser.add_argument("--write", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    from _common import best, markdown_table, median, preamble, replace_section

    with tempfile.TemporaryDirectory() as tmp:
        stores: list[tuple[str, Any]] = [("no store", None)]
        stores.append(("SQLite store", lambda: str(Path(tmp) / f"{uuid.uuid4().hex}.db")))
        if args.redis:
            stores.append(("Redis store", lambda: f"{args.redis}?prefix=bench{uuid.uuid4().hex}"))
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.repeat):
            for name, make in stores:
                for budget in (False, True):
                    store = None if make is None else make()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        elapsed = one_run(args.calls, store, budget)
                    times.setdefault((name, budget), []).append(elapsed / args.calls * 1e6)
    rows = []
    for name, _ in stores:
        without, within = times[(name, False)], times[(name, True)]
        rows.append(
            [
                name,
                f"{best(without):.1f} / {median(without):.1f} µs",
                f"{best(within):.1f} / {median(within):.1f} µs",
                f"{best(within) / best(without):.2f}x / {median(within) / median(without):.2f}x",
            ]
        )
    header = ["store", "without a budget", "with a budget", "ratio: best / median"]
    body = "\n".join(
        [
            *preamble(__file__, argv),
            f"{args.calls:,} trivial async calls, max_concurrent=64, with a requests and a "
            "tokens quota (as a chat preset has, far from binding), each configuration "
            f"{args.repeat} times, alternated in one process. Per call, best / median; "
            "the ratio is the time with a budget over the time without, on the same store.",
            "",
            markdown_table(header, rows),
            "",
            "Without a store the spend book is in memory (a few dict operations and a lock "
            "per call); with one, each call reserves and settles in the store (a SQLite "
            "transaction, a Redis script, each), the price of a budget that survives a "
            "restart and is shared by processes. Against an API answering in 0.3-3 s, "
            "either is far below what a call takes.",
        ]
    )
    print(body)
    if args.write:
        replace_section("Budget", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
