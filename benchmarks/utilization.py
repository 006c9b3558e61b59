"""How close to the provider's limit each client gets, against the MockProvider.

What: one workload of chat completions pushed through (a) this package's
``ChatCompletions`` preset, (b) rate_limited 0.4.0 with ``openai_chat_resources`` and
(c) what the popular guides teach: ``asyncio.gather`` + ``asyncio.Semaphore`` + tenacity's
``wait_random_exponential`` over ``AsyncOpenAI`` (OpenAI cookbook, "How to handle rate
limits"). Workloads: (1) RPM-bound, (2) TPM-bound with heavy-tailed outputs, (3) the TPM
workload with the limits unknown to the client (headers only).
Why: the issue promises, with known limits, at least 97% of the binding limit in the
steady state and zero 429s; with unknown limits at least 90% and under 1% of requests
answered 429. Nobody publishes these numbers; we do.

How: the MockProvider runs in this process (a fresh one per cell) and a sampler thread
reads its binding bucket every 20 ms; each client runs as a worker in its own
``python -I`` process (0.4 in ``benchmarks/.venv04``, with ``openai`` added). Every
client starts on a full bucket (a whole minute of quota it may burst), so:

* steady state: from 3 s after the bucket first ran below 5% of the limit to 1 s before
  the last admission. The quota charged in it is ``refill - (level at end - level at
  start) - refill lost while the bucket sat full`` (end levels averaged over 2 s:
  refunds of unused output make the level jump), and throughput / limit is that over
  ``limit / 60 * seconds``. A client that never drains the bucket has no steady state.
* overall: the quota charged from the first to the last admission over what the
  provider allowed in that time (the full bucket plus the refill).

    python benchmarks/utilization.py [--scale 1.0] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLIENTS = ("new", "v04", "guides")
CONCURRENCY = 64
MODEL = "gpt-4o-mini"
#: Per workload: the MockProvider's limits, requests, max_tokens, median output tokens.
WORKLOADS: dict[str, dict[str, Any]] = {
    "rpm": {"rpm": 600, "tpm": None, "requests": 1000, "max_tokens": 300, "median": 60},
    "tpm": {"rpm": 6000, "tpm": 120_000, "requests": 560, "max_tokens": 1000, "median": 150},
}
#: The bucket has run dry (the initial burst is over) below this fraction of the limit; the
#: steady state starts SETTLE s later; endpoint levels are averaged over EDGE s.
DRY, SETTLE, EDGE = 0.05, 3.0, 2.0
LATENCY = {"latency": 0.25, "latency_per_token": 0.002, "jitter": 0.3}
_VOCABULARY = (
    "rate limit token bucket quota refill request answer model prompt the of and to in is "
    "it for on that as with was be by this at from or an are data call fast slow time load"
)
_WORDS = _VOCABULARY.split()


def make_requests(workload: str, scale: float) -> list[dict[str, Any]]:
    """The workload's requests (seeded): a user prompt of 20-150 words, max_tokens."""
    spec = WORKLOADS[workload]
    rng = random.Random(f"utilization:{workload}")
    requests = []
    for index in range(int(spec["requests"] * scale)):
        words = " ".join(rng.choices(_WORDS, k=rng.randint(20, 150)))
        message = {"role": "user", "content": f"Request {index}: {words}"}
        requests.append({"model": MODEL, "messages": [message], "max_tokens": spec["max_tokens"]})
    return requests


# -- workers: run in their own interpreter (stdlib, openai, one rate_limited, tenacity) ----------
def _worker_new(base_url: str, requests: list[dict[str, Any]], limits: dict[str, Any]) -> Any:
    import openai

    from rate_limited.apis.openai import ChatCompletions

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=60)
    chat = ChatCompletions(client, **limits)
    runner = chat.runner(max_concurrent=CONCURRENCY, progress=False)
    for kwargs in requests:
        runner.schedule(**kwargs)
    return runner.run()


def _worker_v04(base_url: str, requests: list[dict[str, Any]], limits: dict[str, Any]) -> Any:
    import openai

    from rate_limited.apis.openai.chat import openai_chat_resources
    from rate_limited.runner import Runner

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=60)

    async def create(**kwargs: Any) -> Any:  # 0.4 reads results["usage"]["total_tokens"]
        return (await client.chat.completions.create(**kwargs)).model_dump()

    resources = openai_chat_resources(
        limits["requests_per_minute"], limits["tokens_per_minute"], model_max_len=4096
    )
    runner = Runner(create, resources, max_concurrent=CONCURRENCY, progress_interval=0.1)
    for kwargs in requests:
        runner.schedule(**kwargs)
    return runner.run()


def _worker_guides(base_url: str, requests: list[dict[str, Any]], limits: dict[str, Any]) -> Any:
    import openai
    from tenacity import retry, stop_after_attempt, wait_random_exponential

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=60)

    @retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))
    async def completion_with_backoff(**kwargs: Any) -> Any:
        return await client.chat.completions.create(**kwargs)

    async def main() -> list[Any]:
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(kwargs: dict[str, Any]) -> Any:
            async with semaphore:
                return await completion_with_backoff(**kwargs)

        return await asyncio.gather(*(one(k) for k in requests), return_exceptions=True)

    outcomes = asyncio.run(main())
    results = [None if isinstance(o, BaseException) else o for o in outcomes]
    return results, [[o] if isinstance(o, BaseException) else [] for o in outcomes]


def worker(client: str, base_url: str, workload: str, scale: float, known: bool) -> dict[str, Any]:
    spec = WORKLOADS[workload]
    limits: dict[str, Any] = {}
    if known:
        limits = {"requests_per_minute": spec["rpm"], "tokens_per_minute": spec["tpm"]}
        if limits["tokens_per_minute"] is None:  # unlimited: 0.4 needs a number
            limits["tokens_per_minute"] = 10**9
    requests = make_requests(workload, scale)
    run = {"new": _worker_new, "v04": _worker_v04, "guides": _worker_guides}[client]
    started = time.monotonic()
    results, exceptions = run(base_url, requests, limits)
    elapsed = time.monotonic() - started
    failed = [i for i, r in enumerate(results) if r is None]
    errors = sorted({type(e).__name__ for i in failed for e in exceptions[i][-1:]})
    import rate_limited

    return {
        "client": client,
        "file": getattr(rate_limited, "__file__", None) if client != "guides" else None,
        "elapsed": elapsed,
        "requests": len(requests),
        "failed": len(failed),
        "errors": errors,
    }


# -- the driver ---------------------------------------------------------------------------------
class Sampler:
    """Reads the MockProvider's buckets every ``interval`` s (its private limiter: this is a
    benchmark of this repository, written against its own test double)."""

    def __init__(self, provider: Any, interval: float = 0.02) -> None:
        self._limiter = provider._limiter
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._limiter._lock:
                now = time.monotonic()
                levels = {n: b.available() for n, b in self._limiter._buckets.items()}
            self.samples.append((now, levels))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _mean_level(series: list[tuple[float, float]], start: float, end: float) -> float:
    levels = [a for t, a in series if start <= t <= end]
    return sum(levels) / len(levels) if levels else float("nan")


def steady_state(
    samples: list[tuple[float, dict[str, float]]], bucket: str, limit: float, last_admission: float
) -> dict[str, Any]:
    """Throughput / limit of ``bucket`` over the steady state (see the module docstring)."""
    series = [(t, levels[bucket]) for t, levels in samples if bucket in levels]
    rate = limit / 60.0
    dry_at = next((t for t, a in series if a < DRY * limit), None)
    if dry_at is None:
        return {"utilization": None, "window": 0.0}
    start, end = dry_at + SETTLE, last_admission - EDGE / 2
    if end - start < 4 * EDGE:
        return {"utilization": None, "window": 0.0}
    # Endpoint levels averaged over EDGE seconds: refunds make the level jump by a reply's
    # unused output, which over a short window would swamp the measure.
    level_start = _mean_level(series, start - EDGE / 2, start + EDGE / 2)
    level_end = _mean_level(series, end - EDGE / 2, end + EDGE / 2)
    lost = sum(
        rate * (t2 - t1)
        for (t1, a), (t2, _) in itertools.pairwise(series)
        if start <= t1 < end and a >= limit - 1e-6
    )
    window = end - start
    charged = rate * window - (level_end - level_start) - lost
    return {"utilization": charged / (rate * window), "window": window}


def overall(
    samples: list[tuple[float, dict[str, float]]],
    bucket: str,
    limit: float,
    first: float,
    last: float,
) -> float | None:
    """Quota charged from the first to the last admission / what the provider allowed then
    (the full bucket it starts with plus the refill)."""
    series = [(t, levels[bucket]) for t, levels in samples if bucket in levels and t <= last]
    if not series or last <= first:
        return None
    rate = limit / 60.0
    lost = sum(
        rate * (t2 - t1) for (t1, a), (t2, _) in itertools.pairwise(series) if a >= limit - 1e-6
    )
    allowed = limit + rate * (last - first)
    return (allowed - series[-1][1] - lost) / allowed


def run_cell(
    client: str, workload: str, known: bool, python: str | Path, scale: float
) -> dict[str, Any]:
    from _common import run_worker

    from rate_limited.testing import MockProvider

    spec = WORKLOADS["tpm" if workload == "unknown" else workload]
    provider = MockProvider(
        rpm=spec["rpm"],
        tpm=spec["tpm"],
        median_output_tokens=spec["median"],
        seed=7,
        log_requests=False,
        **LATENCY,
    ).start()
    sampler = Sampler(provider).start()
    try:
        base = "tpm" if workload == "unknown" else workload
        args = ["--worker", client, "--base-url", provider.base_url, "--workload", base]
        args += ["--scale", str(scale)] + (["--known"] if known else [])
        result = run_worker(python, __file__, args, timeout=900)
    finally:
        sampler.stop()
        stats = provider.stats()
        provider.stop()
    if base == "rpm":
        bucket, limit = "openai.requests", spec["rpm"]
    else:
        bucket, limit = "openai.tokens", spec["tpm"]
    first, last = stats.first_admission or 0.0, stats.last_admission or 0.0
    steady = steady_state(sampler.samples, bucket, limit, last)
    steady["overall"] = overall(sampler.samples, bucket, limit, first, last)
    result.update(
        workload=workload,
        known=known,
        provider_requests=stats.requests,
        admitted=stats.admitted,
        rejected=stats.rejected,
        first_admission=stats.first_admission,
        **steady,
    )
    return result


TARGETS = {"rpm": "≥ 97%, 0 429s", "tpm": "≥ 97%, 0 429s", "unknown": "≥ 90%, < 1% 429s"}
LABELS = {
    "new": "(a) rate_limited (this)",
    "v04": "(b) rate_limited 0.4.0",
    "guides": "(c) gather + Semaphore + tenacity",
}


def _cells(only: str | None) -> list[tuple[str, str, bool]]:
    cells = [
        (client, workload, workload != "unknown")
        for workload in ("rpm", "tpm", "unknown")
        for client in CLIENTS
        if not (workload == "unknown" and client != "new")
    ]
    if only:
        wanted = {tuple(c.split(":")) for c in only.split(",")}
        cells = [c for c in cells if (c[0], c[1]) in wanted]
    return cells


def _limits_label(result: dict[str, Any]) -> str:
    if result["client"] == "guides":
        return "(uses none)"
    return "given" if result["known"] else "headers"


def _row(result: dict[str, Any]) -> list[str]:
    utilization = result["utilization"]
    sent = result["provider_requests"]
    rejected = result["rejected"]
    failed = result["failed"]
    errors = f" ({', '.join(result['errors'])})" if failed else ""
    return [
        result["workload"],
        LABELS[result["client"]],
        _limits_label(result),
        "never saturated" if utilization is None else f"{utilization:.1%}",
        "-" if result["overall"] is None else f"{result['overall']:.1%}",
        f"{rejected} ({rejected / max(1, sent):.1%})",
        f"{result['elapsed']:.1f} s",
        f"{result['requests'] - failed}/{result['requests']}{errors}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--only", help="cells to run, e.g. new:rpm,v04:tpm,new:unknown")
    parser.add_argument("--replay", help="render the cells a previous run logged (JSON lines)")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--known", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.base_url, args.workload, args.scale, args.known)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    pythons = {"new": sys.executable, "guides": sys.executable}
    if not args.replay and any(c[0] == "v04" for c in _cells(args.only)):
        pythons["v04"] = str(_common.ensure_venv04())
        _common.ensure_packages(pythons["v04"], ["openai"])
    results = []
    if args.replay:  # the JSON lines a previous run printed to stderr: re-render only
        lines = Path(args.replay).read_text(encoding="utf-8").splitlines()
        results = [json.loads(line) for line in lines if line.startswith("{")]
    for client, workload, known in [] if args.replay else _cells(args.only):
        print(f"running {client} on {workload} ...", file=sys.stderr, flush=True)
        result = run_cell(client, workload, known, pythons[client], args.scale)
        expected = "/benchmarks/.venv04/" if client == "v04" else str(_common.REPO_ROOT)
        if result["file"] is not None and expected not in result["file"]:
            raise RuntimeError(f"{client} imported rate_limited from {result['file']}")
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    header = [
        "workload",
        "client",
        "limits",
        "steady-state throughput / limit",
        "overall: quota used / allowed",
        "429s (of requests sent)",
        "makespan",
        "calls succeeded",
    ]
    rows = [_row(r) for r in results]
    if any(r["workload"] == "unknown" for r in results):
        rows += [
            ["unknown", LABELS["v04"], "-", "n/a: 0.4 needs the limits", *["-"] * 4],
            ["unknown", LABELS["guides"], "(uses none)", "same as its tpm row", *["-"] * 4],
        ]
    table = _common.markdown_table(header, rows)
    text = _report(table, args, argv)
    print(text)
    if args.write:
        _common.replace_section("Utilization", text)
    return 0


def _report(table: str, args: argparse.Namespace, argv: Sequence[str] | None) -> str:
    import _common

    machine = _common.machine_info()
    rpm, tpm = WORKLOADS["rpm"], WORKLOADS["tpm"]
    given = list(argv if argv is not None else sys.argv[1:])
    if "--replay" in given:  # how the cells were measured, not how they were re-rendered
        index = given.index("--replay")
        del given[index : index + 2]
    command = _common.command_line(__file__, [a for a in given if a != "--write"])
    return f"""Date: {_common.today()}. Machine: {machine["nproc"]} CPUs ({machine["cpu"]}), \
{machine["implementation"]} {machine["python"]}, {machine["os"]}.

Command (from the repository root):

```
{command} --write
```

MockProvider (one per cell, in the driver's process): latency {LATENCY["latency"]} s + \
{LATENCY["latency_per_token"]} s per output token + up to {LATENCY["jitter"]} s jitter; \
outputs lognormal (sigma 1) capped at max_tokens; unused output refunded at the answer. \
Workloads ({MODEL}, prompts of 20-150 words, scale {args.scale:g}): \
**rpm**: {int(rpm["requests"] * args.scale)} requests, limits {rpm["rpm"]} RPM and no TPM, \
max_tokens {rpm["max_tokens"]}, median output {rpm["median"]}; \
**tpm**: {int(tpm["requests"] * args.scale)} requests, limits {tpm["tpm"]:,} TPM \
(binding) and {tpm["rpm"]} RPM, max_tokens {tpm["max_tokens"]}, median output \
{tpm["median"]}; **unknown**: the tpm workload, the client given no limits. Each client \
runs {CONCURRENCY} calls at most at once, over `openai.AsyncOpenAI`: (a) \
`ChatCompletions(client, requests_per_minute=..., tokens_per_minute=...)` (none for \
unknown; the preset sets the client's max_retries to 0); (b) 0.4's \
`openai_chat_resources(rpm, tpm, 4096)` around `create(...).model_dump()`, \
`progress_interval=0.1`; (c) `asyncio.Semaphore({CONCURRENCY})` + \
`@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`, SDK \
defaults (max_retries=2). (b) cannot run without limits and (c) never uses them, so \
their unknown-limits cells are the tpm ones.

{table}

Steady state: from {SETTLE:g} s after the binding bucket first ran below {DRY:.0%} of \
the limit (the initial burst is over) to {EDGE / 2:g} s before the last admission; \
throughput / limit = quota charged in it / (limit / 60 * seconds), read from the \
provider's bucket sampled every 20 ms (refill, minus the change of the level, minus \
refill lost while the bucket sat full; end levels averaged over {EDGE:g} s). "never \
saturated": the client never drained the bucket, so it never ran at the limit. Overall: \
quota charged from the first to the last admission / what the provider allowed then (the \
full bucket plus the refill). 429s are counted by the provider (SDK retries included). \
Targets: {TARGETS["rpm"]} on rpm and tpm, {TARGETS["unknown"]} on unknown.

Reading it: (a) keeps the provider's bucket at its edge from the end of the burst to the \
last call, on either limit, with no 429 (a steady-state figure a little above 100% is \
measurement noise: refunds of unused output move the level in lumps). Without limits it \
sends one probe, reads the limits from its answer and then runs as if it had been told. \
(b) 0.4 counts each request for a whole window (61 s, from its `timedelta.seconds` \
arithmetic) while the provider refills continuously, so after its first burst it waits \
with the bucket refilling (and finally full, the refill lost) and never runs at the \
limit: 1.6-1.9x the makespan. (c) sends whatever the semaphore allows: about 7 of 10 \
requests are answered 429, its backoff sleeps leave the bucket idle (81% of the limit \
in the steady state), and with `stop_after_attempt(6)` 2-4% of the calls fail for good \
(its tpm makespan is short only because those calls were dropped).
"""


if __name__ == "__main__":
    raise SystemExit(main())
