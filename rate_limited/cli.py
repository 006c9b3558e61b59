"""The ``rate-limited`` command: ``demo``, ``run``, ``mock-provider``, ``ledger`` and ``bench``.

* ``rate-limited demo`` starts a MockProvider on 127.0.0.1 with realistic limits (scaled
  so the run takes about half a minute), pushes 2,000 chat completions through the real
  ``openai`` client and ``rate_limited.apis.openai.ChatCompletions``, shows the progress
  bar and ends with what the provider saw: requests, tokens, 429s, the average rate and
  the share of what the provider allowed (its buckets start full, so a short run's
  average is above the limit: the summary says so). No API key, no network. Finished
  calls are kept in a SQLite store (``--store``), so Ctrl-C and the command it prints
  resume the run; its counts are read after the Runner has closed, when the calls
  already sent at the Ctrl-C have finished and been stored.
* ``rate-limited run requests.jsonl -o results.jsonl`` sends a JSONL file of requests
  online or through the Batch API (``--batch``), resumably (``rate_limited._run_command``).
* ``rate-limited mock-provider`` serves the MockProvider until Ctrl-C (see its ``--help``).
* ``rate-limited ledger inspect|reset redis://...`` shows what a shared ledger holds
  (levels, reservations and their holders) or deletes one (``rate_limited.ledgers.inspect``).
* ``rate-limited bench [NAME] ...`` runs ``benchmarks/NAME.py`` of a source checkout (they
  are not installed with the package); ``--help`` says what each one touches.

``python -m rate_limited ...`` is the same command.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["main"]

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


def _demo_parser(parser: argparse.ArgumentParser) -> None:
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


BENCH_USAGE = "rate-limited bench [NAME] [OPTIONS]"
BENCH_DESCRIPTION = """\
Run benchmarks/NAME.py of a source checkout (default: utilization) with this
interpreter, from the repository root, passing OPTIONS on. The benchmarks are not
installed with the package: run this from a git clone, in the virtualenv where the
clone is installed.

What it touches:
  - a benchmark that compares with rate_limited 0.4 (marked below) installs
    rate_limited 0.4.0 and its helpers (tqdm, openai) from PyPI into
    benchmarks/.venv04 the first time, and reuses that virtualenv after;
  - it starts MockProviders (and, for stores, a redis-server) on 127.0.0.1 and
    writes temporary files; it calls no real API and needs no key;
  - with --write, it replaces its own section of benchmarks/RESULTS.md."""


def _bench_dirs() -> list[Path]:
    return [
        Path.cwd() / "benchmarks",
        Path(__file__).resolve().parent.parent / "benchmarks",
    ]


def _bench_scripts() -> dict[str, Path]:
    """The benchmark scripts of the checkout, by name (the first folder that has any)."""
    for folder in _bench_dirs():
        scripts = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")}
        if scripts:
            return scripts
    return {}


def _bench_summary(script: Path) -> tuple[str, bool]:
    """The first line of a benchmark's docstring, and whether it installs 0.4 (it calls
    ``ensure_venv04``, the helper that does)."""
    source = script.read_text(encoding="utf-8")
    try:
        doc = ast.get_docstring(ast.parse(source)) or ""
    except SyntaxError:
        doc = ""
    return (doc.splitlines() or [""])[0], "ensure_venv04" in source


def bench_help(name: str | None) -> str:
    """``rate-limited bench --help`` (and ``bench NAME --help``, with NAME's options)."""
    scripts = _bench_scripts()
    usage = BENCH_USAGE if name is None else f"rate-limited bench {name} [OPTIONS]"
    lines = [f"usage: {usage}", "", BENCH_DESCRIPTION, ""]
    if not scripts:
        lines.append("No benchmarks/ folder here: run this from a git clone of the repository.")
        return "\n".join(lines)
    lines += [
        "Benchmarks (* installs rate_limited 0.4.0 from PyPI into benchmarks/.venv04 on",
        "first use; rate-limited bench NAME --help shows NAME's options):",
    ]
    for stem, path in scripts.items():
        summary, installs = _bench_summary(path)
        lines.append(f"  {stem:<12} {'*' if installs else ' '} {summary}")
    script = scripts.get(name) if name is not None else None
    if script is not None:
        done = subprocess.run(
            [sys.executable, str(script), "--help"],
            capture_output=True,
            text=True,
            cwd=script.parent.parent,
            check=False,
        )
        own = done.stdout.splitlines()
        # Its own usage line names the script file; the options are what is useful here.
        start = next(
            (i for i, line in enumerate(own) if line.rstrip().endswith(("options:", "arguments:"))),
            None,
        )
        if start is not None:
            lines += ["", f"Options of benchmarks/{script.name}:", *own[start + 1 :]]
    return "\n".join(lines)


def bench(argv: Sequence[str]) -> int:
    """Run ``benchmarks/<name>.py`` of the source checkout with this interpreter."""
    name = argv[0] if argv and not argv[0].startswith("-") else None
    rest = list(argv[1:] if name is not None else argv)
    if "-h" in rest or "--help" in rest:
        print(bench_help(name))
        return 0
    name = name or "utilization"
    script = _bench_scripts().get(name)
    if script is None:
        print(
            f"benchmarks/{name}.py not found: the benchmarks live in the source checkout "
            "(git clone the repository and run this from it). See rate-limited bench --help.",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *rest], cwd=script.parent.parent)


MAIN_EPILOG = """\
demo           runs against a local mock API; writes its store (rate_limited_demo.db
               and .db.key) in the current directory
run            sends a JSONL file of requests online or by batch (--batch); writes the
               results and a store of finished calls (OUTPUT.db) next to the output
mock-provider  serves the mock API on 127.0.0.1 until Ctrl-C; prints its base URLs and
               limits on stdout, and its statistics on stderr when it stops
ledger         inspect / reset a shared Redis ledger: levels, reservations, holders
bench          runs a benchmark of a source checkout; may install rate_limited 0.4 from
               PyPI into benchmarks/.venv04 and rewrite benchmarks/RESULTS.md (--write)

rate-limited COMMAND --help says more about each."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rate-limited`` console script."""
    from rate_limited import __version__

    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="rate-limited",
        description="Run many calls of rate-limited APIs as fast as the quotas allow.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rate_limited {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo_parser(
        commands.add_parser(
            "demo",
            help=f"{DEMO_REQUESTS:,} chat completions against a local mock API, resumable",
            description=DEMO_DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    from rate_limited import _run_command

    _run_command.add_arguments(
        commands.add_parser(
            "run",
            help="send a JSONL file of requests, online or by batch, resumable",
            description=_run_command.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    commands.add_parser(
        "mock-provider",
        help="serve a rate-limited mock of the OpenAI and Anthropic APIs",
        add_help=False,
    )
    commands.add_parser(
        "bench", help="run a benchmark of a source checkout (see bench --help)", add_help=False
    )
    ledger = commands.add_parser(
        "ledger",
        help="inspect (or reset) a shared Redis ledger",
        description="What a shared ledger (Runner(ledger='redis://...')) holds, and who.",
    )
    ledger.add_argument("action", choices=("inspect", "reset"))
    ledger.add_argument(
        "url", help="redis://host:port/db[?name=NAME] (without name=: every ledger there)"
    )
    if arguments and arguments[0] in ("mock-provider", "bench"):
        if arguments[0] == "bench":
            return bench(arguments[1:])
        from rate_limited.testing.mock_provider import main as serve

        return serve(arguments[1:])
    args = parser.parse_args(arguments)
    if args.command == "run":
        return _run_command.run_command(args)
    if args.command == "ledger":
        return _ledger(args.action, args.url)
    if args.command != "demo":
        parser.print_help()
        return 2
    try:
        return demo(args)
    except KeyboardInterrupt:  # a Ctrl-C outside the run (e.g. while it is set up)
        print("\nStopped.", file=sys.stderr)
        return 130


def _ledger(action: str, url: str) -> int:
    from rate_limited.exceptions import RateLimitedError
    from rate_limited.ledgers.inspect import inspect, reset

    try:
        if action == "inspect":
            print(inspect(url))
        else:
            print(f"Deleted {reset(url)} key(s).")
    except RateLimitedError as exc:
        print(f"rate-limited ledger {action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
