"""Online calls during a batch on one key: their latency with and without priority.

A service and a nightly batch share one API key. The batch (``ChatCompletions`` with its
RPM and TPM resources, as users run it) has used the provider's bucket up and its last
calls wait for the refill; then ``--online`` requests arrive at once through
``await runner.call(...)``. Two configurations, alternated run by run in one process:

* ``priority``: ``call()`` as it is (priority 1): the online calls take the quota as it
  frees, ahead of the batch's waiting calls;
* ``no priority``: ``call(..., priority=0)``, the batch's priority: online and batch calls
  take freed quota as their timers come, whoever's first.

The MockProvider enforces the same RPM with its own code; every 429 it sends is counted.
The "quota wait" bound is what the k-th online call must wait with priority: k requests of
refill (k * 60 / RPM s), plus the provider's latency.

    .venv/bin/python benchmarks/online.py [--rpm 1200] [--batch 1400] [--online 40]
                                         [--repeat 2] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_info, markdown_table, replace_section, today

LATENCY = 0.05


def one_run(rpm: int, batch: int, online: int, priority: int | None) -> dict[str, Any]:
    import openai

    from rate_limited.apis.openai import ChatCompletions
    from rate_limited.testing import MockProvider

    with MockProvider(rpm=rpm, latency=LATENCY, output_tokens=12) as provider:
        client = openai.AsyncOpenAI(base_url=provider.base_url, api_key="bench")
        chat = ChatCompletions(client, requests_per_minute=rpm, tokens_per_minute=10_000_000)
        runner = chat.runner(progress=False)
        for i in range(batch):
            runner.schedule(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"b{i}"}], max_tokens=20
            )
        handle = runner.start()
        while provider.stats().admitted < rpm:  # the bucket is used up: calls now wait
            time.sleep(0.005)
        options = {} if priority is None else {"priority": priority}

        async def ask(i: int) -> float:
            sent = time.monotonic()
            await runner.call(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"o{i}"}],
                max_tokens=21,
                **options,
            )
            return time.monotonic() - sent

        async def all_online() -> list[float]:
            return list(await asyncio.gather(*(ask(i) for i in range(online))))

        latencies = sorted(asyncio.run(all_online()))
        result = handle.result()
        runner.close()
        stats = provider.stats()
    assert result.counts() == {"succeeded": batch}, result.counts()
    return {
        "p50": statistics.median(latencies),
        "p95": latencies[max(0, int(0.95 * len(latencies)) - 1)],
        "max": latencies[-1],
        "rejected": stats.rejected,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=1400)
    parser.add_argument("--online", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    configs = {"priority": None, "no priority": 0}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for repeat in range(args.repeat):
        order = list(configs) if repeat % 2 == 0 else list(reversed(configs))
        for name in order:
            runs[name].append(one_run(args.rpm, args.batch, args.online, configs[name]))
            print(name, runs[name][-1], flush=True)
    refill = 60 / args.rpm
    bound = 0.95 * args.online * refill + LATENCY
    rows = []
    for name in configs:
        p95s = [r["p95"] for r in runs[name]]
        rows.append(
            [
                name,
                f"{statistics.median(r['p50'] for r in runs[name]):.2f} s",
                f"{min(p95s):.2f} s / {statistics.median(p95s):.2f} s",
                f"{bound:.2f} s",
                str(sum(r["rejected"] for r in runs[name])),
            ]
        )
    ratio = statistics.median(r["p95"] for r in runs["no priority"]) / statistics.median(
        r["p95"] for r in runs["priority"]
    )
    table = markdown_table(
        ["online calls", "p50 (median)", "p95: best / median", "quota wait bound (p95)", "429s"],
        rows,
    )
    info = machine_info()
    body = f"""Date: {today()}. Machine: {info["nproc"]} CPUs ({info["cpu"]}), CPython \
{info["python"]}, {info["os"]}.

Command (from the repository root):

```
{command_line(__file__, argv)}
```

A batch of {args.batch:,} calls (`ChatCompletions` with its RPM and TPM resources) runs
against a MockProvider limited to {args.rpm:,} RPM (latency {LATENCY} s); once it has used
the bucket up, {args.online} online requests arrive at once through `await runner.call(...)`.
Each configuration ran {args.repeat} times, alternated in one process. The bound is the
p95 online call's quota wait with priority (0.95 x {args.online} requests of refill at
{args.rpm / 60:g} a second) plus the provider's latency.

{table}

Online p95 latency without priority / with priority: **{ratio:.2f}x** (median p95s). Every
batch completed; the 429 column counts what the MockProvider refused, online and batch
together.
"""
    print(body)
    if args.write:
        replace_section("Online calls during a batch", body)


if __name__ == "__main__":
    main(sys.argv[1:])
