"""How close to the provider's limits each client gets, under both ways a provider bills.

What: chat completions pushed through five clients against the MockProvider: (a) this
package's ``ChatCompletions`` preset with the limits given, (a') the same with no limits
(read from the response headers), (b) this package's ``openai_chat_resources`` around
``create(...).model_dump()``, (c) rate_limited 0.4.0's ``openai_chat_resources`` around
the same function, and (d) what the popular guides teach: ``asyncio.gather`` +
``asyncio.Semaphore`` + tenacity's ``wait_random_exponential`` over ``AsyncOpenAI``.

Under both settle rules a provider may apply to unused output:
* **keeps** (OpenAI's documented rule, the MockProvider's default for its OpenAI wire
  format): a request counts ``prompt + max_tokens`` against TPM when it arrives, and the
  unused part is not handed back;
* **refunds** (a compatible server that hands it back at the answer).

Workloads: **rpm** (600 RPM binds), **tpm** (120,000 TPM binds), **two models**
(gpt-4o-mini at 120,000 TPM and gpt-4o at 60,000 TPM at once, each model its own buckets,
requests 2:1). The clients of this package are told each rule the way a user would: the
preset and ``openai_chat_resources`` assume OpenAI's rule (the preset finds a refunding
provider from its headers); under **refunds**, ``openai_chat_resources`` is declared
``settle="actual"`` (it reads no headers), with one more row showing its default there.

How: the MockProvider runs in this process (a fresh one per cell) and a sampler thread
reads its buckets (``MockProvider.buckets()``) every 20 ms; each client runs as a worker in
its own ``python -I`` process (0.4 in ``benchmarks/.venv04``, with ``openai`` added). Every
client starts on full buckets (a whole minute of quota it may burst), so:

* steady state: the last ``--steady`` seconds (default 20) before 1 s before the model's
  last admission, and not before 3 s after the binding bucket first ran below 5% of the
  limit (the burst of the first minute, and learning the limits or the rule, come first:
  the workload is sized for 15 s of that on top). The quota charged in it is ``refill -
  (level at end - level at start) - refill lost while the bucket sat full`` (end levels
  averaged over 2 s: refunds make the level jump), over ``limit / 60 * seconds``. A
  client that never drains the bucket has no steady state.
* overall: the quota charged from the first to the last admission over what the provider
  allowed in that time (the full bucket plus the refill).

    python benchmarks/utilization.py [--steady 20] [--write] [--only rule:workload:client,...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONCURRENCY = 64
MINI, FOUR_O = "gpt-4o-mini", "gpt-4o"
RULES = ("keeps", "refunds")
WORKLOADS = ("rpm", "tpm", "two-models")
CLIENTS = ("preset", "headers", "ocr", "v04", "guides")
#: Per workload: per model, (RPM, TPM) at the provider; the binding kind; max_tokens; the
#: median output; the share of the requests.
SPECS: dict[str, dict[str, Any]] = {
    "rpm": {"limits": {MINI: (600, 400_000)}, "binds": "requests", "max_tokens": 300},
    "tpm": {"limits": {MINI: (6000, 120_000)}, "binds": "tokens", "max_tokens": 1000},
    "two-models": {
        "limits": {MINI: (6000, 120_000), FOUR_O: (6000, 60_000)},
        "binds": "tokens",
        "max_tokens": 1000,
    },
}
MEDIAN_OUTPUT = 150
#: The bucket has run dry (the initial burst is over) below this fraction of the limit; the
#: steady state starts SETTLE s later; endpoint levels are averaged over EDGE s.
DRY, SETTLE, EDGE = 0.05, 3.0, 2.0
LATENCY = {"latency": 0.25, "latency_per_token": 0.002, "jitter": 0.3}
_VOCABULARY = (
    "rate limit token bucket quota refill request answer model prompt the of and to in is "
    "it for on that as with was be by this at from or an are data call fast slow time load"
)
_WORDS = _VOCABULARY.split()
#: The mean of min(lognormal(median, sigma 1), max_tokens) for max_tokens 300 and 1000.
_MEAN_OUTPUT = {300: 190, 1000: 235}
#: Seconds the workload allows for the first minute's burst to end and the limits (or the
#: provider's rule) to be learned, before the steady state.
LEARNING = 15.0


# -- the workload ---------------------------------------------------------------------------------
def make_requests(workload: str, rule: str, steady: float) -> list[dict[str, Any]]:
    """The workload's requests (seeded): enough for every model to run ``steady`` seconds at
    its limit after its first minute's burst, under ``rule``."""
    from rate_limited.testing import count_tokens

    spec = SPECS[workload]
    models = list(spec["limits"])
    pattern = [MINI, MINI, FOUR_O] if len(models) == 2 else [MINI]
    rng = random.Random(f"utilization:{workload}")
    max_tokens = spec["max_tokens"]
    output = max_tokens if rule == "keeps" else _MEAN_OUTPUT[max_tokens]
    needed = {}
    for model, (rpm, tpm) in spec["limits"].items():
        limit = rpm if spec["binds"] == "requests" else tpm
        needed[model] = limit + limit / 60.0 * (steady + LEARNING + EDGE)
    requests = []
    for index in itertools.count():
        model = pattern[index % len(pattern)]
        if all(n <= 0 for n in needed.values()):
            break
        words = " ".join(rng.choices(_WORDS, k=rng.randint(20, 150)))
        content = f"Request {index}: {words}"
        charge = 1 if spec["binds"] == "requests" else count_tokens(content) + 7 + output
        needed[model] -= charge
        message = {"role": "user", "content": content}
        requests.append({"model": model, "messages": [message], "max_tokens": max_tokens})
    return requests


# -- workers: run in their own interpreter (stdlib, openai, one rate_limited, tenacity) ----------
def _limits_of(workload: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the preset's options, the model_limits of openai_chat_resources) for the workload."""
    limits = SPECS[workload]["limits"]
    rpm, tpm = limits[MINI]
    others = {m: {"requests_per_minute": r, "tokens_per_minute": t} for m, (r, t) in limits.items()}
    others.pop(MINI)
    options: dict[str, Any] = {"requests_per_minute": rpm, "tokens_per_minute": tpm}
    if others:
        options["model_limits"] = others
    return options, others


def _worker_preset(
    base_url: str, requests: list[dict[str, Any]], workload: str, given: bool
) -> Any:
    import openai

    from rate_limited.apis.openai import ChatCompletions

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=60)
    options = _limits_of(workload)[0] if given else {}
    chat = ChatCompletions(client, **options)
    runner = chat.runner(max_concurrent=CONCURRENCY, progress=False)
    for kwargs in requests:
        runner.schedule(**kwargs)
    return runner.run()


def _create_as_dicts(base_url: str) -> Any:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=60, max_retries=0)

    async def create(**kwargs: Any) -> Any:  # 0.4 reads results["usage"]["total_tokens"]
        return (await client.chat.completions.create(**kwargs)).model_dump()

    return create


def _worker_ocr(base_url: str, requests: list[dict[str, Any]], workload: str, settle: str) -> Any:
    from rate_limited.apis.openai.chat import openai_chat_resources
    from rate_limited.runner import Runner

    options, others = _limits_of(workload)
    resources = openai_chat_resources(
        options["requests_per_minute"],
        options["tokens_per_minute"],
        model_max_len=4096,
        settle=settle,
        model_limits=others or None,
    )
    runner = Runner(
        _create_as_dicts(base_url), resources, max_concurrent=CONCURRENCY, progress=False
    )
    for kwargs in requests:
        runner.schedule(**kwargs)
    return runner.run()


def _worker_v04(base_url: str, requests: list[dict[str, Any]], workload: str) -> Any:
    from rate_limited.apis.openai.chat import openai_chat_resources
    from rate_limited.runner import Runner

    options = _limits_of(workload)[0]  # 0.4 has one pair of limits: the first model's
    resources = openai_chat_resources(
        options["requests_per_minute"], options["tokens_per_minute"], model_max_len=4096
    )
    runner = Runner(
        _create_as_dicts(base_url), resources, max_concurrent=CONCURRENCY, progress_interval=0.1
    )
    for kwargs in requests:
        runner.schedule(**kwargs)
    return runner.run()


def _worker_guides(base_url: str, requests: list[dict[str, Any]]) -> Any:
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


def worker(
    client: str, base_url: str, workload: str, requests_file: str, settle: str
) -> dict[str, Any]:
    requests = json.loads(Path(requests_file).read_text(encoding="utf-8"))
    started = time.monotonic()
    if client in ("preset", "headers"):
        results, exceptions = _worker_preset(base_url, requests, workload, client == "preset")
    elif client == "ocr":
        results, exceptions = _worker_ocr(base_url, requests, workload, settle)
    elif client == "v04":
        results, exceptions = _worker_v04(base_url, requests, workload)
    else:
        results, exceptions = _worker_guides(base_url, requests)
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
    """Reads the MockProvider's buckets every ``interval`` s."""

    def __init__(self, provider: Any, interval: float = 0.02) -> None:
        self._provider = provider
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            levels = {name: level for name, (level, _) in self._provider.buckets().items()}
            self.samples.append((time.monotonic(), levels))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _mean_level(series: list[tuple[float, float]], start: float, end: float) -> float:
    levels = [a for t, a in series if start <= t <= end]
    return sum(levels) / len(levels) if levels else float("nan")


def steady_state(
    samples: list[tuple[float, dict[str, float]]],
    bucket: str,
    limit: float,
    last_admission: float,
    seconds: float,
) -> float | None:
    """Throughput / limit of ``bucket`` over the steady state (see the module docstring)."""
    series = [(t, levels[bucket]) for t, levels in samples if bucket in levels]
    rate = limit / 60.0
    dry_at = next((t for t, a in series if a < DRY * limit), None)
    if dry_at is None:
        return None
    end = last_admission - EDGE / 2
    start = max(dry_at + SETTLE, end - seconds)
    if end - start < 4 * EDGE:
        return None
    level_start = _mean_level(series, start - EDGE / 2, start + EDGE / 2)
    level_end = _mean_level(series, end - EDGE / 2, end + EDGE / 2)
    lost = sum(
        rate * (t2 - t1)
        for (t1, a), (t2, _) in itertools.pairwise(series)
        if start <= t1 < end and a >= limit - 1e-6
    )
    window = end - start
    charged = rate * window - (level_end - level_start) - lost
    return charged / (rate * window)


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
    rule: str, workload: str, client: str, settle: str, python: str | Path, steady: float
) -> dict[str, Any]:
    from _common import run_worker

    from rate_limited.testing import Limits, MockProvider

    spec = SPECS[workload]
    requests = make_requests(workload, rule, steady)  # the same for every client
    rpm, tpm = spec["limits"][MINI]
    model_limits = {m: Limits(rpm=r, tpm=t) for m, (r, t) in spec["limits"].items() if m != MINI}
    provider = MockProvider(
        rpm=rpm,
        tpm=tpm,
        model_limits=model_limits or None,
        median_output_tokens=MEDIAN_OUTPUT,
        refund_unused_output=rule == "refunds",
        seed=7,
        **LATENCY,
    ).start()
    sampler = Sampler(provider).start()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as file:
            json.dump(requests, file)
            file.flush()
            args = ["--worker", client, "--base-url", provider.base_url]
            args += ["--workload", workload, "--requests", file.name, "--settle", settle]
            result = run_worker(python, __file__, args, timeout=1200)
    finally:
        sampler.stop()
        stats = provider.stats()
        log = provider.request_log
        provider.stop()
    kind = spec["binds"]
    per_model = {}
    for model, (model_rpm, model_tpm) in spec["limits"].items():
        bucket, limit = f"openai.{kind}[{model}]", model_rpm if kind == "requests" else model_tpm
        times = [e.time for e in log if e.model == model and e.status not in (429, None)]
        first, last = (min(times), max(times)) if times else (0.0, 0.0)
        per_model[model] = {
            "steady": steady_state(sampler.samples, bucket, limit, last, steady),
            "overall": overall(sampler.samples, bucket, limit, first, last),
        }
    result.update(
        rule=rule,
        workload=workload,
        settle=settle,
        provider_requests=stats.requests,
        rejected=stats.rejected,
        per_model=per_model,
    )
    return result


LABELS = {
    "preset": "(a) ChatCompletions preset",
    "headers": "(a') preset, no limits",
    "ocr": "(b) openai_chat_resources",
    "v04": "(c) rate_limited 0.4.0",
    "guides": "(d) gather + Semaphore + tenacity",
}


def _cells(only: str | None) -> list[tuple[str, str, str, str]]:
    """(rule, workload, client, settle of openai_chat_resources) of every cell to run."""
    cells = []
    for rule in RULES:
        for workload in WORKLOADS:
            for client in CLIENTS:
                declared = "actual" if rule == "refunds" else "reserved"
                cells.append((rule, workload, client, declared))
                if client == "ocr" and rule == "refunds" and workload == "tpm":
                    cells.append((rule, workload, client, "reserved"))  # its default
    if only:
        wanted = [tuple(c.split(":")) for c in only.split(",")]
        cells = [c for c in cells if any(c[: len(w)] == w for w in wanted)]
    return cells


def _limits_label(result: dict[str, Any]) -> str:
    client = result["client"]
    if client == "guides":
        return "(uses none)"
    if client == "headers":
        return "headers"
    if client == "v04" and result["workload"] == "two-models":
        return "given (one pair: gpt-4o-mini's)"
    if client == "ocr":
        return f'given, settle="{result["settle"]}"'
    return "given"


def _percent(value: float | None) -> str:
    return "never saturated" if value is None else f"{value:.1%}"


def _per_model(result: dict[str, Any], key: str) -> str:
    values = result["per_model"]
    if len(values) == 1:
        return _percent(next(iter(values.values()))[key])
    return " / ".join(f"{_percent(v[key])}" for v in values.values())


def _row(result: dict[str, Any]) -> list[str]:
    sent = result["provider_requests"]
    rejected = result["rejected"]
    failed = result["failed"]
    errors = f" ({', '.join(result['errors'])})" if failed else ""
    return [
        result["rule"],
        result["workload"],
        LABELS[result["client"]],
        _limits_label(result),
        _per_model(result, "steady"),
        _per_model(result, "overall"),
        f"{rejected} ({rejected / max(1, sent):.2%})",
        f"{result['elapsed']:.1f} s",
        f"{result['requests'] - failed}/{result['requests']}{errors}",
    ]


def _checks(results: list[dict[str, Any]]) -> list[str]:
    """The targets the issue set, checked on this run's cells."""

    def cells(clients: tuple[str, ...], workloads: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            r
            for r in results
            if r["client"] in clients
            and r["workload"] in workloads
            and (
                r["client"] != "ocr"
                or r["settle"] == ("actual" if r["rule"] == "refunds" else "reserved")
            )
        ]

    def steady_values(rows: list[dict[str, Any]]) -> list[float]:
        return [
            v["steady"] if v["steady"] is not None else 0.0
            for r in rows
            for v in r["per_model"].values()
        ]

    lines = []
    given = cells(("preset", "ocr"), ("rpm", "tpm"))
    learned = cells(("headers",), ("rpm", "tpm", "two-models"))
    two = cells(("preset", "ocr"), ("two-models",))
    ours = cells(("preset", "headers", "ocr"), WORKLOADS)
    specs = [
        (
            "limits given, both rules, RPM- and TPM-bound, preset and openai_chat_resources: "
            "steady state >= 99%, 0 429s",
            given,
            0.99,
            lambda r: r["rejected"] == 0,
        ),
        (
            "limits learned from the headers: >= 97%, < 0.5% of requests answered 429",
            learned,
            0.97,
            lambda r: r["rejected"] < 0.005 * r["provider_requests"],
        ),
        (
            "two models at once, each within its own limit: each bucket >= 97%, 0 429s",
            two,
            0.97,
            lambda r: r["rejected"] == 0,
        ),
    ]
    for text, rows, floor, ok in specs:
        if not rows:
            continue
        values = steady_values(rows)
        met = min(values) >= floor and all(ok(r) for r in rows)
        worst = min(values)
        rejected = sum(r["rejected"] for r in rows)
        lines.append(
            f"- {text}: {'met' if met else 'NOT MET'} (lowest {worst:.1%}, "
            f"{rejected} 429s in {len(rows)} cells)"
        )
    lost = sum(r["failed"] for r in ours)
    if ours:
        lines.append(
            f"- no call lost to 429s (this package's rows): {'met' if lost == 0 else 'NOT MET'} "
            f"({lost} calls failed)"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady", type=float, default=20.0, help="steady-state seconds")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--only", help="cells to run: rule[:workload[:client]],...")
    parser.add_argument("--replay", help="render the cells a previous run logged (JSON lines)")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--requests", help=argparse.SUPPRESS)
    parser.add_argument("--settle", default="reserved", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.worker, args.base_url, args.workload, args.requests, args.settle)
        print(json.dumps(result))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    cells = [] if args.replay else _cells(args.only)
    pythons = {c: sys.executable for c in CLIENTS}
    if any(c[2] == "v04" for c in cells):
        pythons["v04"] = str(_common.ensure_venv04())
        _common.ensure_packages(pythons["v04"], ["openai"])
    results = []
    if args.replay:  # the JSON lines a previous run printed to stderr: re-render only
        lines = Path(args.replay).read_text(encoding="utf-8").splitlines()
        results = [json.loads(line) for line in lines if line.startswith("{")]
    for rule, workload, client, settle in cells:
        print(f"running {rule} / {workload} / {client} ...", file=sys.stderr, flush=True)
        result = run_cell(rule, workload, client, settle, pythons[client], args.steady)
        expected = "/benchmarks/.venv04/" if client == "v04" else str(_common.REPO_ROOT)
        if result["file"] is not None and expected not in result["file"]:
            raise RuntimeError(f"{client} imported rate_limited from {result['file']}")
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    header = [
        "rule",
        "workload",
        "client",
        "limits",
        "steady-state throughput / limit",
        "overall: quota used / allowed",
        "429s (of requests sent)",
        "makespan",
        "calls succeeded",
    ]
    table = _common.markdown_table(header, [_row(r) for r in results])
    text = _report(table, _checks(results), args, argv)
    print(text)
    if args.write:
        _common.replace_section("Utilization", text)
    return 0


def _report(
    table: str, checks: list[str], args: argparse.Namespace, argv: Sequence[str] | None
) -> str:
    import _common

    given = list(argv if argv is not None else sys.argv[1:])
    if "--replay" in given:  # how the cells were measured, not how they were re-rendered
        index = given.index("--replay")
        del given[index : index + 2]
    preamble = "\n".join(
        _common.preamble(__file__, [a for a in given if a != "--write"] + ["--write"])
    )
    return f"""{preamble}
MockProvider (one per cell, in the driver's process): latency {LATENCY["latency"]} s + \
{LATENCY["latency_per_token"]} s per output token + up to {LATENCY["jitter"]} s \
jitter; outputs lognormal (median {MEDIAN_OUTPUT}, sigma 1) capped at max_tokens; each \
model its own buckets. **keeps**: OpenAI's documented rule (prompt + max_tokens \
counted on arrival, never handed back; the mock's default for the OpenAI wire format); \
**refunds**: unused output handed back at the answer. Workloads (prompts of 20-150 \
words; each sized for {LEARNING:g} + {args.steady:g} s past the first minute's burst \
for this package's clients): **rpm**: 600 RPM binds (400,000 TPM does not), max_tokens \
300; **tpm**: 120,000 TPM binds (6,000 RPM does not), max_tokens 1000; **two-models**: \
gpt-4o-mini at 120,000 TPM and gpt-4o at 60,000 TPM at once, requests 2:1 (figures: \
gpt-4o-mini / gpt-4o), max_tokens 1000. Each client runs {CONCURRENCY} calls at most \
at once, over `openai.AsyncOpenAI`: (a) `ChatCompletions(client, \
requests_per_minute=..., tokens_per_minute=..., model_limits=...)`; (a') \
`ChatCompletions(client)`; (b) `openai_chat_resources(rpm, tpm, 4096, settle=..., \
model_limits=...)` around `create(...).model_dump()` (client max_retries=0); (c) 0.4's \
`openai_chat_resources(rpm, tpm, 4096)` around the same function, \
`progress_interval=0.1` (0.4 has one pair of limits: gpt-4o-mini's on two-models); (d) \
`asyncio.Semaphore({CONCURRENCY})` + `@retry(wait=wait_random_exponential(min=1, \
max=60), stop=stop_after_attempt(6))`, SDK defaults (max_retries=2).

{table}

Steady state: the last {args.steady:g} s to {EDGE / 2:g} s before the model's last \
admission, not before {SETTLE:g} s after the binding bucket first ran below {DRY:.0%} of \
the limit (the burst of the first minute, and learning the limits or the rule, come \
first: each workload is sized for {LEARNING:g} s of that); throughput / limit = quota \
charged in it / (limit / 60 * seconds), read from \
the provider's bucket sampled every 20 ms (refill, minus the change of the level, minus \
refill lost while the bucket sat full; end levels averaged over {EDGE:g} s). "never \
saturated": the client never drained the bucket. Overall: quota charged from the first \
to the last admission / what the provider allowed then (the full bucket plus the \
refill). 429s are counted by the provider (SDK retries included).

Targets, checked on this run:

{chr(10).join(checks)}

Reading it: this package's clients keep each binding bucket at its edge after the burst, \
under either rule, with no 429: the preset and `openai_chat_resources` bill OpenAI's rule \
(max_tokens counted, never less), and the preset finds a refunding provider from its \
headers in a few seconds and then bills the actual usage; without the limits it sends one \
probe per model and reads them. With two models, each model's calls wait only for its \
own buckets. `openai_chat_resources` reads no headers: under **refunds** it is declared \
`settle="actual"`; left at OpenAI's rule there (its extra row) it is safe but leaves the \
refunded capacity unused. 0.4 counts each request for a whole window (61 s) while the \
provider refills continuously (so where nothing else goes wrong it never runs at the \
limit), and bills the actual usage where OpenAI keeps max_tokens: under **keeps** most \
of its requests are answered 429, and the calls whose retries the 429s used up are lost. \
The guides' recipe sends whatever its semaphore allows and backs off blindly: most \
requests answered 429, the bucket idle during the sleeps, calls lost after six attempts.
"""


if __name__ == "__main__":
    raise SystemExit(main())
