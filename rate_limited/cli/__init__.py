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
  online or through the Batch API (``--batch``), resumably (``rate_limited.cli.run``).
* ``rate-limited mock-provider`` serves the MockProvider until Ctrl-C (see its ``--help``).
* ``rate-limited ledger inspect|reset redis://...`` shows what a shared ledger holds
  (levels, reservations and their holders) or deletes one (``rate_limited.ledgers.inspect``).
* ``rate-limited bench [NAME] ...`` runs ``benchmarks/NAME.py`` of a source checkout (they
  are not installed with the package); ``--help`` says what each one touches.

``python -m rate_limited ...`` is the same command. This module parses the command line;
each command is a module of this package (``demo``, ``run``, ``mock_provider``,
``ledger``, ``bench``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rate_limited.cli import bench, demo, ledger, run

__all__ = ["main"]


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
    demo.add_arguments(
        commands.add_parser(
            "demo",
            help=f"{demo.DEMO_REQUESTS:,} chat completions against a local mock API, resumable",
            description=demo.DEMO_DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    run.add_arguments(
        commands.add_parser(
            "run",
            help="send a JSONL file of requests, online or by batch, resumable",
            description=run.DESCRIPTION,
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
    ledger_parser = commands.add_parser(
        "ledger",
        help="inspect (or reset) a shared Redis ledger",
        description=ledger.DESCRIPTION,
    )
    ledger_parser.add_argument("action", choices=("inspect", "reset"))
    ledger_parser.add_argument(
        "url", help="redis://host:port/db[?name=NAME] (without name=: every ledger there)"
    )
    if arguments and arguments[0] in ("mock-provider", "bench"):
        if arguments[0] == "bench":
            return bench.bench(arguments[1:])
        from rate_limited.cli import mock_provider

        return mock_provider.main(arguments[1:])
    args = parser.parse_args(arguments)
    if args.command == "run":
        return run.run_command(args)
    if args.command == "ledger":
        return ledger.ledger_command(args.action, args.url)
    if args.command != "demo":
        parser.print_help()
        return 2
    try:
        return demo.demo(args)
    except KeyboardInterrupt:  # a Ctrl-C outside the run (e.g. while it is set up)
        print("\nStopped.", file=sys.stderr)
        return 130
