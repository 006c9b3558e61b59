"""The ``rate-limited`` command: ``demo``, ``mock-provider`` and ``bench``.

* ``rate-limited demo`` starts a MockProvider on 127.0.0.1 with realistic limits (scaled
  so the run takes about half a minute), pushes 2,000 chat completions through the real
  ``openai`` client and ``rate_limited.apis.openai.ChatCompletions``, shows the progress
  bar and ends with what the provider saw: requests, tokens, 429s, the rate achieved
  against the limit. No API key, no network. With a durable store (``--store``, when
  the Runner supports one), Ctrl-C and a second ``rate-limited demo`` resume the run.
* ``rate-limited mock-provider`` serves the MockProvider until Ctrl-C (see its ``--help``).
* ``rate-limited bench [utilization|overhead] ...`` runs a benchmark script of a source
  checkout (they are not installed with the package).

``python -m rate_limited ...`` is the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

#: The demo's defaults: 2,000 requests against 200,000 TPM and 3,000 RPM. Every provider
#: bucket starts full (a minute of quota at once), then refills at limit/60 per second.
DEMO_REQUESTS = 2000
DEMO_RPM = 3000
DEMO_TPM = 200_000
DEMO_STORE = "rate_limited_demo.db"
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


def _demo_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--requests", type=int, default=DEMO_REQUESTS, help="chat completions to run (2000)")
    add("--rpm", type=float, default=DEMO_RPM, help=f"requests per minute ({DEMO_RPM})")
    add("--tpm", type=float, default=DEMO_TPM, help=f"tokens per minute ({DEMO_TPM:,})")
    add("--async", dest="use_async", action="store_true", help="use openai.AsyncOpenAI")
    add("--concurrency", type=int, default=64, help="most requests in flight (64)")
    add("--store", default=DEMO_STORE, help=f"where finished calls are kept ({DEMO_STORE})")
    add("--fresh", action="store_true", help="delete the store first: start over")
    add("--seed", type=int, default=0, help="seed of the prompts and the provider")


def _demo_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Request {i}: explain {rng.choice(_TOPICS)} to a {rng.choice(('child', 'chef', 'pilot'))}"
        f" in {rng.randint(2, 6)} sentences."
        for i in range(count)
    ]


def _store_supported() -> bool:
    from rate_limited.runner import Runner

    return "store" in inspect.signature(Runner).parameters


def demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every call succeeded, 1 otherwise, 130 when interrupted."""
    try:
        import openai
    except ImportError:
        print("The demo needs the openai SDK: pip install 'rate_limited[openai]'", file=sys.stderr)
        return 2
    from rate_limited.apis.openai import ChatCompletions
    from rate_limited.testing import MockProvider

    if args.requests < 1 or args.rpm <= 0 or args.tpm <= 0 or args.concurrency < 1:
        print("--requests, --rpm, --tpm and --concurrency must be positive", file=sys.stderr)
        return 2
    store = Path(args.store)
    resumable = _store_supported()
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
        options: dict[str, Any] = {"max_concurrent": args.concurrency, "progress": "tqdm"}
        if resumable:
            options["store"] = str(store)
        print(
            f"MockProvider at {provider.base_url}: {args.rpm:,.0f} requests and {args.tpm:,.0f} "
            f"tokens per minute.\nRunning {args.requests:,} chat completions through "
            f"openai.{client_class.__name__} and ChatCompletions "
            f"({'resumable from ' + str(store) if resumable else 'no durable store yet'}); "
            "Ctrl-C stops.",
            flush=True,
        )
        with chat.runner(**options) as runner:
            for prompt in _demo_prompts(args.requests, args.seed):
                runner.schedule(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=400,
                )
            started = time.monotonic()
            result = runner.run()
            elapsed = time.monotonic() - started
        stats = provider.stats()
    _summary(args, result, stats, elapsed, store if resumable else None)
    if result.interrupted:
        return 130
    return 0 if all(value is not None for value in result.results) else 1


def _summary(
    args: argparse.Namespace, result: Any, stats: Any, elapsed: float, store: Path | None
) -> None:
    succeeded = sum(1 for value in result.results if value is not None)
    # Calls already sent at a Ctrl-C finished afterwards (the Runner's close() waited).
    late = sum(1 for call in result.calls if call.status.value == "succeeded") - succeeded
    succeeded += late
    from_store = sum(1 for outcome in result.outcomes if getattr(outcome, "from_store", False))
    tokens = stats.prompt_tokens + stats.completion_tokens
    lines = [
        "",
        f"{'Interrupted' if result.interrupted else 'Done'} after {elapsed:.1f} s: "
        f"{succeeded:,} of {len(result.results):,} requests succeeded"
        + (f" ({from_store:,} loaded from the store)" if from_store else "")
        + ".",
        f"  provider saw: {stats.requests:,} requests, {stats.rejected:,} answered 429, "
        f"{tokens:,} tokens ({stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} "
        "completion)",
        f"  limits:       {args.rpm:,.0f} requests and {args.tpm:,.0f} tokens per minute; each "
        "bucket starts full (a minute of quota at once), then refills at limit/60 per second",
    ]
    span = stats.admission_span
    if stats.admitted > 1 and span > 0:
        allowed_tokens = args.tpm + args.tpm / 60 * span
        allowed_requests = args.rpm + args.rpm / 60 * span
        lines += [
            f"  allowed:      {allowed_requests:,.0f} requests and {allowed_tokens:,.0f} tokens "
            f"in the {span:.1f} s from the first admission to the last",
            f"  used:         {tokens / allowed_tokens:.1%} of the tokens and "
            f"{stats.admitted / allowed_requests:.1%} of the requests allowed "
            f"({stats.admitted / span * 60:,.0f} requests/min, {tokens / span * 60:,.0f} "
            "tokens/min)",
        ]
    if late:
        lines.append(
            f"  {late:,} requests already sent at the interrupt finished after it; their "
            "results were kept" + (" and stored." if store is not None else ".")
        )
    if result.interrupted:
        if store is not None:
            lines.append(f"Run `rate-limited demo` again to resume: finished calls are in {store}.")
        else:
            lines.append(
                "This build cannot resume across processes yet (its Runner has no store=), so "
                "a second `rate-limited demo` starts over."
            )
    print("\n".join(lines), flush=True)


def bench(argv: Sequence[str]) -> int:
    """Run ``benchmarks/<name>.py`` of the source checkout with this interpreter."""
    name = argv[0] if argv and not argv[0].startswith("-") else "utilization"
    rest = list(argv[1:] if argv and not argv[0].startswith("-") else argv)
    candidates = [
        Path.cwd() / "benchmarks" / f"{name}.py",
        Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py",
    ]
    script = next((path for path in candidates if path.is_file()), None)
    if script is None:
        print(
            f"benchmarks/{name}.py not found: the benchmarks live in the source checkout "
            "(git clone the repository and run this from it).",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *rest], cwd=script.parent.parent)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rate-limited`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="rate-limited",
        description="Run many calls of rate-limited APIs as fast as the quotas allow.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo_parser(commands.add_parser("demo", help="a 2,000-request run against a mock API"))
    commands.add_parser("mock-provider", help="serve the MockProvider", add_help=False)
    commands.add_parser("bench", help="run a benchmark of the source checkout", add_help=False)
    if arguments and arguments[0] in ("mock-provider", "bench"):
        if arguments[0] == "bench":
            return bench(arguments[1:])
        from rate_limited.testing.mock_provider import main as serve

        return serve(arguments[1:])
    args = parser.parse_args(arguments)
    if args.command != "demo":
        parser.print_help()
        return 2
    try:
        return demo(args)
    except KeyboardInterrupt:  # a Ctrl-C outside the run (e.g. while it is set up)
        print("\nStopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
