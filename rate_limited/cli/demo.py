"""``rate-limited demo``: 2,000 chat completions against a local MockProvider, resumable.

It starts a MockProvider on 127.0.0.1 with realistic limits (scaled so the run takes
about half a minute), pushes the requests through the real ``openai`` client and
``rate_limited.apis.openai.ChatCompletions``, shows the progress bar and ends with what
the provider saw: requests, tokens, 429s, the average rate and the share of what the
provider allowed (its buckets start full, so a short run's average is above the limit:
the summary says so). No API key, no network. Finished calls are kept in a SQLite store
(``--store``), so Ctrl-C and the command it prints resume the run; its counts are read
after the Runner has closed, when the calls already sent at the Ctrl-C have finished and
been stored.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEMO_DESCRIPTION", "DEMO_REQUESTS", "add_arguments", "demo", "resume_command"]

#: The demo's defaults: 2,000 requests against 200,000 TPM and 3,000 RPM. Every provider
#: bucket starts full (a minute of quota at once), then refills at limit/60 per second.
DEMO_REQUESTS = 2000
DEMO_RPM = 3000
DEMO_TPM = 200_000
DEMO_STORE = "rate_limited_demo.db"
DEMO_CONCURRENCY = 64
DEMO_SEED = 0
_TOPICS = (
    "token buckets",
    "exponential backoff",
    "the Retry-After header",
    "quota windows",
    "HTTP 429",
    "batch inference",
    "heavy-tailed latency",
    "a leaky bucket",
)


DEMO_DESCRIPTION = f"""\
Start a MockProvider (a local fake of the OpenAI API) on 127.0.0.1 and run
{DEMO_REQUESTS:,} chat completions through the real openai client and ChatCompletions,
with a progress bar; then print what the provider saw: requests, tokens, 429s, and
the rate against the limits. No API key, no network.

Finished calls are kept in a SQLite store, by default {DEMO_STORE} in the
current directory (with its -wal/-shm files and the signing secret
{DEMO_STORE}.key). Ctrl-C stops the run and prints the command that resumes
it: running the same command again sends only what is not in the store yet."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--requests", type=int, default=DEMO_REQUESTS, help="chat completions to run (2000)")
    add("--rpm", type=float, default=DEMO_RPM, help=f"requests per minute ({DEMO_RPM:,})")
    add("--tpm", type=float, default=DEMO_TPM, help=f"tokens per minute ({DEMO_TPM:,})")
    add("--async", dest="use_async", action="store_true", help="use openai.AsyncOpenAI")
    add(
        "--concurrency",
        type=int,
        default=DEMO_CONCURRENCY,
        help=f"most requests in flight ({DEMO_CONCURRENCY})",
    )
    add("--store", default=DEMO_STORE, help=f"where finished calls are kept ({DEMO_STORE})")
    add("--fresh", action="store_true", help="delete the store first: start over")
    add("--seed", type=int, default=DEMO_SEED, help="seed of the prompts and the provider")
    add(
        "--budget",
        type=float,
        default=None,
        metavar="USD",
        help="stop at this many US dollars (at gpt-4o-mini's list price); run again to go on",
    )
    add(
        "--estimate",
        action="store_true",
        help="print what the requests will need (tokens, cost, least time) and exit",
    )


def _demo_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Request {i}: explain {rng.choice(_TOPICS)} to a {rng.choice(('child', 'chef', 'pilot'))}"
        f" in {rng.randint(2, 6)} sentences."
        for i in range(count)
    ]


def demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every call succeeded, 1 otherwise, 130 when interrupted."""
    try:
        import openai
    except ImportError:
        print("The demo needs the openai SDK: pip install 'rate_limited[openai]'", file=sys.stderr)
        return 2
    from rate_limited.apis.openai import ChatCompletions
    from rate_limited.budget import Budget
    from rate_limited.testing import MockProvider

    if args.requests < 1 or args.rpm <= 0 or args.tpm <= 0 or args.concurrency < 1:
        print("--requests, --rpm, --tpm and --concurrency must be positive", file=sys.stderr)
        return 2
    if args.budget is not None and not args.budget >= 0:
        print("--budget must be a number of US dollars >= 0", file=sys.stderr)
        return 2
    store = Path(args.store)
    if args.fresh:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{store}{suffix}").unlink()
    provider = MockProvider(
        rpm=args.rpm,
        tpm=args.tpm,
        latency=0.2,
        latency_per_token=0.004,
        jitter=0.2,
        median_output_tokens=80,
        seed=args.seed,
        log_requests=False,
    )
    with provider:
        client_class = openai.AsyncOpenAI if args.use_async else openai.OpenAI
        client = client_class(base_url=provider.base_url, api_key="demo", timeout=30)
        chat = ChatCompletions(client, requests_per_minute=args.rpm, tokens_per_minute=args.tpm)
        print(
            f"MockProvider at {provider.base_url}: {args.rpm:,.0f} requests and {args.tpm:,.0f} "
            f"tokens per minute.\nRunning {args.requests:,} chat completions through "
            f"openai.{client_class.__name__} and ChatCompletions (resumable from {store}); "
            "Ctrl-C stops.",
            flush=True,
        )
        budget = None if args.budget is None else Budget(usd=args.budget)
        runner = chat.runner(
            max_concurrent=args.concurrency, progress="tqdm", store=str(store), budget=budget
        )
        with runner:
            for prompt in _demo_prompts(args.requests, args.seed):
                runner.schedule(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": prompt}],
                    # OpenAI counts max_tokens, used or not: keep it near the expected output
                    max_tokens=150,
                )
            if args.estimate:
                print(runner.estimate(), flush=True)
                return 0
            started = time.monotonic()
            result = runner.run()
            elapsed = time.monotonic() - started
        # Closed: calls already sent at a Ctrl-C (sync ones, in threads) have finished and
        # been stored by now, so the counts below are what the store holds.
        stats = provider.stats()
    # What the provider charged: by OpenAI's rule, the max_tokens reserved, used or not.
    output = stats.completion_tokens if provider.refunds["openai"] else stats.reserved_output_tokens
    charged = stats.prompt_tokens + output
    counts = _counts(result, store)
    _summary(args, result.interrupted, counts, stats, charged, elapsed, store)
    _dollars(result, stats)
    if result.interrupted:
        return 130
    return 0 if counts.succeeded == counts.total else 1


@dataclass(frozen=True)
class _Counts:
    """How the demo's calls ended, read after the Runner has closed."""

    total: int
    #: Calls that succeeded, those finished after the interrupt included.
    succeeded: int
    #: Of those, how many had succeeded when ``run()`` returned.
    at_return: int
    #: Loaded from the store instead of being sent.
    from_store: int
    #: Succeeded calls of this run that the store holds.
    saved: int


def _counts(result: Any, store: Path) -> _Counts:
    from rate_limited.outcomes import Status
    from rate_limited.stores import open_store

    calls = list(result.calls)
    keys = [call.key for call in calls if call.key is not None]
    with open_store(str(store)) as opened:
        records = opened.get_many(keys)
    return _Counts(
        total=len(calls),
        succeeded=sum(1 for call in calls if call.status is Status.SUCCEEDED),
        at_return=sum(1 for value in result.results if value is not None),
        from_store=sum(1 for call in calls if call.from_store),
        saved=sum(1 for record in records.values() if record.status == "succeeded"),
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def resume_command(args: argparse.Namespace) -> str:
    """The ``rate-limited demo ...`` command that resumes this one: every option that
    makes a difference to the calls or the run (never ``--fresh``, which starts over)."""
    parts = ["rate-limited", "demo"]
    defaults = (
        ("requests", DEMO_REQUESTS),
        ("rpm", DEMO_RPM),
        ("tpm", DEMO_TPM),
        ("concurrency", DEMO_CONCURRENCY),
        ("seed", DEMO_SEED),
    )
    for name, default in defaults:
        value = getattr(args, name)
        if value != default:
            parts += [f"--{name}", _number(value)]
    if getattr(args, "budget", None) is not None:
        parts += ["--budget", _number(args.budget)]
    if args.use_async:
        parts.append("--async")  # the sync and async presets' calls have different keys
    parts += ["--store", str(args.store)]
    return shlex.join(parts)


def _summary(
    args: argparse.Namespace,
    interrupted: bool,
    counts: _Counts,
    stats: Any,
    charged: int,
    elapsed: float,
    store: Path,
) -> None:
    tokens = stats.prompt_tokens + stats.completion_tokens
    loaded = f" ({counts.from_store:,} loaded from the store)" if counts.from_store else ""
    late = counts.succeeded - counts.at_return
    lines = [
        "",
        f"{'Interrupted' if interrupted else 'Done'} after {elapsed:.1f} s: "
        f"{counts.succeeded:,} of {counts.total:,} requests succeeded{loaded}.",
    ]
    if late:
        lines.append(
            f"  {late:,} of them finished after Ctrl-C: they had been sent, so they were "
            "waited for and kept."
        )
    lines += [
        f"  store:        {counts.saved:,} of the {counts.total:,} are saved in {store}",
        f"  provider saw: {stats.requests:,} requests, {stats.rejected:,} answered 429, "
        f"{tokens:,} tokens ({stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} "
        f"completion); it charged {charged:,} against the limit (max_tokens counts, used or "
        "not, as OpenAI bills)",
    ]
    span = stats.admission_span
    if stats.admitted > 1 and span > 0:
        # Each provider bucket starts full: a minute of quota may go at once, so the
        # average rate of a run shorter than a few minutes is above the limit. What the
        # provider allowed in the span is that full bucket plus the refill.
        allowed_tokens = args.tpm + args.tpm / 60 * span
        allowed_requests = args.rpm + args.rpm / 60 * span
        tokens_rate, requests_rate = charged / span * 60, stats.admitted / span * 60
        above = tokens_rate > args.tpm or requests_rate > args.rpm
        lines += [
            f"  rate:         {tokens_rate:,.0f} tokens/min and {requests_rate:,.0f} "
            f"requests/min on average over the {span:.1f} s from the first admission to the "
            "last",
            f"  limits:       {args.tpm:,.0f} tokens and {args.rpm:,.0f} requests per minute; "
            "each bucket starts full (a minute of quota that may go at once), then refills "
            "at limit/60 per second"
            + (". That initial burst is why the average is above the limit" if above else ""),
            f"  utilization:  {charged / allowed_tokens:.1%} of the tokens and "
            f"{stats.admitted / allowed_requests:.1%} of the requests the provider allowed "
            f"in those {span:.1f} s ({allowed_tokens:,.0f} tokens and "
            f"{allowed_requests:,.0f} requests: the full buckets plus their refill)",
        ]
    else:
        lines.append(
            f"  limits:       {args.tpm:,.0f} tokens and {args.rpm:,.0f} requests per minute"
        )
    if interrupted:
        left = counts.total - counts.saved
        lines.append(
            f"Run `{resume_command(args)}` to resume: it sends only the {left:,} requests "
            f"not saved in {store}."
        )
    print("\n".join(lines), flush=True)


def _dollars(result: Any, stats: Any) -> None:
    """What the run cost: the package's figure, and the provider's own at list prices."""
    from rate_limited._format import format_usd
    from rate_limited.testing._billing import LIST_PRICES

    input_rate, output_rate = LIST_PRICES["gpt-4o-mini"]
    billed = (stats.prompt_tokens * input_rate + stats.completion_tokens * output_rate) / 1e6
    cost = result.cost
    ours = "unknown" if cost is None else format_usd(cost)
    lines = [
        f"  cost:         {ours} for this run's responses, as rate_limited priced their usage "
        f"(the provider's bill at gpt-4o-mini's list price: {format_usd(billed)})"
    ]
    if result.budget is not None:
        lines.append(f"  budget:       {result.budget.message}")
    print("\n".join(lines), flush=True)
