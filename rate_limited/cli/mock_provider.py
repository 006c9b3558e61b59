"""``rate-limited mock-provider``: serve a MockProvider on HOST:PORT until Ctrl-C.

On start it prints the OpenAI base URL, the Anthropic base URL and the limits on stdout;
when it stops, its statistics on stderr. SIGTERM stops it as Ctrl-C does.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from types import FrameType

from rate_limited.testing import Faults, MockProvider

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rate-limited mock-provider",
        description=(
            "Serve a rate-limited mock of the OpenAI and Anthropic APIs on HOST:PORT until "
            "Ctrl-C (or SIGTERM). On start it prints the OpenAI base URL, the Anthropic "
            "base URL and its limits on stdout; when it stops it prints its statistics "
            "(requests served, admitted, rate-limited, faults) on stderr. It touches no "
            "file and calls no real API."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    add("--rpm", type=float, help="requests per minute (default unlimited)")
    add("--tpm", type=float, help="OpenAI tokens per minute")
    add("--input-tpm", type=float, help="Anthropic input tokens per minute")
    add("--output-tpm", type=float, help="Anthropic output tokens per minute")
    add("--latency", type=float, default=0.0, help="seconds before each answer")
    add("--latency-per-token", type=float, default=0.0, help="extra seconds per output token")
    add("--jitter", type=float, default=0.0, help="extra uniform random seconds, at most")
    add("--output-tokens", type=int, help="fixed output length (default: lognormal)")
    add("--median-output-tokens", type=float, default=100.0, help="lognormal median")
    add("--reply", choices=("echo", "hash", "filler"), default="echo", help="reply prefix")
    add("--default-max-tokens", type=int, default=4096, help="reserved when max_tokens is unset")
    add("--seed", type=int, default=0, help="seed of every random draw")
    add("--api-key", help="accept only this API key (default: any non-empty key)")
    add(
        "--refund-unused-output",
        choices=("documented", "yes", "no"),
        default="documented",
        help="hand unused output back at the answer (default: as each provider documents: "
        "OpenAI no, Anthropic yes)",
    )
    for kind in ("error-500", "hang", "malformed", "drop", "stream-break"):
        add(f"--{kind}", type=float, default=0.0, help=f"probability of a {kind} fault")
    add("--hang-seconds", type=float, default=30.0, help="how long a hang fault holds")
    add("--log-requests", action="store_true", help="keep a request log (memory grows)")
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Serve a MockProvider until Ctrl-C; prints the OpenAI base URL first."""
    args = _parser().parse_args(argv)
    faults = Faults(
        error_500=args.error_500,
        hang=args.hang,
        malformed=args.malformed,
        drop=args.drop,
        stream_break=args.stream_break,
        hang_seconds=args.hang_seconds,
    )
    provider = MockProvider(
        host=args.host,
        port=args.port,
        rpm=args.rpm,
        tpm=args.tpm,
        input_tpm=args.input_tpm,
        output_tpm=args.output_tpm,
        latency=args.latency,
        latency_per_token=args.latency_per_token,
        jitter=args.jitter,
        output_tokens=args.output_tokens,
        median_output_tokens=args.median_output_tokens,
        reply=args.reply,
        default_max_tokens=args.default_max_tokens,
        faults=faults,
        seed=args.seed,
        api_key=args.api_key,
        refund_unused_output={"documented": None, "yes": True, "no": False}[
            args.refund_unused_output
        ],
        log_requests=args.log_requests,
    )
    provider.start()
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # Ctrl-C even where SIGINT was ignored (background jobs); SIGTERM too
        previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:  # the prints too: a Ctrl-C right after the first line must not kill the process
        print(provider.base_url, flush=True)
        print(f"anthropic base_url: {provider.anthropic_base_url}", flush=True)
        print(f"limits: {dataclasses.asdict(provider.limits())}", flush=True)
        print("Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()
        if in_main_thread:
            for signum, handler in zip((signal.SIGINT, signal.SIGTERM), previous, strict=True):
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        stats = provider.stats()
        print(
            f"served {stats.requests} requests: {stats.admitted} admitted, "
            f"{stats.rejected} rate-limited, faults {stats.faults}",
            file=sys.stderr,
            flush=True,
        )
    return 0
