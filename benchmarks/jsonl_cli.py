"""``rate-limited run requests.jsonl`` beside the openai-cookbook's parallel processor.

What: the same JSONL file of chat completions (the cookbook's input format: one request
body per line, with ``metadata``) sent by (a) ``rate-limited run FILE --rpm R --tpm T``
and (b) the cookbook's ``examples/api_request_parallel_processor.py`` with
``--max_requests_per_minute R --max_tokens_per_minute T`` — the same limits the provider
enforces — and (b') the cookbook at 75% of them, the headroom its docstring advises.

How: each row gets a fresh MockProvider in this process, billing as OpenAI documents
(``prompt + max_tokens`` counted against TPM on arrival, never handed back; buckets start
full and refill continuously), and each client runs as its own process. The processor is
not part of this repository: fetch it yourself and pass its path (``--cookbook``); it runs
with two adaptations for an offline machine and a plain-HTTP mock, listed in
``benchmarks/_cookbook_worker.py``, and needs ``aiohttp`` (installed on first use).

Figures, all counted by the provider or read from each client's output file: wall time
of the process; 429s answered; calls lost (no answer in the output: failed after the
client's retries, or missing); requests paid twice (a body admitted more than once);
quota used / allowed: the tokens charged from the first to the last admission over what
the provider allowed then (the full bucket plus the refill).

    git -C COOKBOOK show 59019bd2:examples/api_request_parallel_processor.py > /tmp/processor.py
    python benchmarks/jsonl_cli.py --cookbook /tmp/processor.py [--requests 800] [--write]
    python benchmarks/jsonl_cli.py --cookbook /tmp/processor.py --only "Ctrl-C"  # two rows
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_packages, markdown_table, preamble, replace_section

RPM, TPM = 6_000, 120_000
MODEL, MAX_TOKENS, MEDIAN_OUTPUT = "gpt-4o-mini", 200, 80
LATENCY = {"latency": 0.25, "latency_per_token": 0.002, "jitter": 0.3}
_VOCABULARY = (
    "rate limit token bucket quota refill request answer model prompt the of and to in is "
    "it for on that as with was be by this at from or an are data call fast slow time load"
)
_WORDS = _VOCABULARY.split()
HERE = Path(__file__).resolve().parent


def make_requests(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(count):
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 150)))
            body = {
                "model": MODEL,
                "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": f"{i}: {words}"}],
                "metadata": {"row": i},
            }
            handle.write(json.dumps(body) + "\n")


def ours(source: Path, output: Path, base_url: str, rpm: float, tpm: float) -> list[str]:
    command = [sys.executable, "-m", "rate_limited", "run", str(source), "-o", str(output)]
    if rpm:
        command += ["--rpm", str(rpm), "--tpm", str(tpm)]
    return [*command, "--no-progress"]


def cookbook(
    processor: Path, source: Path, output: Path, base_url: str, rpm: float, tpm: float
) -> list[str]:
    worker = str(HERE / "_cookbook_worker.py")
    url = f"{base_url}/chat/completions"
    return [
        sys.executable,
        worker,
        str(processor),
        str(source),
        str(output),
        url,
        str(rpm),
        str(tpm),
    ]


def lost_ours(output: Path, count: int) -> int:
    rows = [json.loads(x) for x in output.read_text().splitlines()] if output.exists() else []
    return count - sum(1 for r in rows if r.get("response"))


def lost_cookbook(output: Path, count: int) -> int:
    rows = [json.loads(x) for x in output.read_text().splitlines()] if output.exists() else []
    answered = {r[2]["row"] for r in rows if isinstance(r[1], dict) and "choices" in r[1]}
    return count - len(answered)


def run_row(
    name: str,
    command_of: Any,
    lost_of: Any,
    source: Path,
    count: int,
    limits: tuple[float, float],
    interrupt: bool = False,
) -> dict[str, Any]:
    """One client against a fresh provider; with ``interrupt``, a SIGINT once the provider
    has admitted half the requests, then the same command again."""
    from rate_limited.testing import MockProvider

    with (
        tempfile.TemporaryDirectory() as folder,
        MockProvider(rpm=RPM, tpm=TPM, median_output_tokens=MEDIAN_OUTPUT, seed=1, **LATENCY) as mp,
    ):
        output = Path(folder) / "results.jsonl"
        command = command_of(source, output, mp.base_url, *limits)
        env = {"OPENAI_BASE_URL": mp.base_url, "OPENAI_API_KEY": "sk-bench", "PATH": ""}
        started = time.monotonic()
        if interrupt:
            with subprocess.Popen(
                command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ) as first:
                while mp.stats().admitted < count // 2 and first.poll() is None:
                    time.sleep(0.01)
                first.send_signal(signal.SIGINT)
                first.wait(timeout=600)
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=1800
        )
        wall = time.monotonic() - started
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        stats = mp.stats()
        log = mp.request_log
        lost = lost_of(output, count)
    admitted = [e for e in log if e.status == 200]
    paid_twice = sum(n - 1 for n in Counter(e.body_hash for e in admitted).values() if n > 1)
    charged = sum(e.prompt_tokens + e.reserved_output_tokens for e in admitted)
    first_at, last_at = stats.first_admission or 0.0, stats.last_admission or 0.0
    allowed = TPM + TPM / 60 * (last_at - first_at)
    return {
        "client": name,
        "wall": wall,
        "rejected": stats.rejected,
        "requests": stats.requests,
        "lost": lost,
        "paid_twice": paid_twice,
        "used": charged / allowed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cookbook", type=Path, required=True, help="path of api_request_parallel_processor.py"
    )
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run only the rows whose client contains TEXT (prints them; no --write)",
    )
    args = parser.parse_args()
    if args.only and args.write:
        parser.error("--only prints a subset of the rows; --write needs them all")
    ensure_packages(sys.executable, ["aiohttp"])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "requests.jsonl"
        make_requests(source, args.requests)
        processor = args.cookbook.resolve()

        def book(s: Path, o: Path, u: str, r: float, t: float) -> list[str]:
            return cookbook(processor, s, o, u, r, t)

        given, headroom = (RPM, TPM), (RPM * 0.75, TPM * 0.75)
        plan = [
            ("(a) rate-limited run --rpm --tpm (the limits)", ours, lost_ours, given, False),
            ("(b) cookbook, the limits", book, lost_cookbook, given, False),
            ("(b) cookbook, 75% of them (its advice)", book, lost_cookbook, headroom, False),
            ("(a) rate-limited run, no limits (headers)", ours, lost_ours, (0, 0), False),
            (
                "(b) cookbook, its defaults (1,500 RPM, 125,000 TPM)",
                book,
                lost_cookbook,
                (1500, 125_000),
                False,
            ),
            ("(a) the limits; Ctrl-C at half, rerun", ours, lost_ours, given, True),
            ("(b) the limits; Ctrl-C at half, rerun", book, lost_cookbook, given, True),
        ]
        if args.only:
            plan = [row for row in plan if args.only in row[0]]
        for name, command_of, lost_of, limits, interrupt in plan:
            result = run_row(name, command_of, lost_of, source, args.requests, limits, interrupt)
            print(json.dumps(result), flush=True)
            rows.append(result)
    reference = rows[0]["wall"]
    table = markdown_table(
        [
            "client",
            "wall time",
            "vs (a)",
            "429s (of requests sent)",
            "calls lost",
            "paid twice",
            "quota used / allowed",
        ],
        [
            [
                r["client"],
                f"{r['wall']:.1f} s",
                f"{r['wall'] / reference:.2f}x",
                f"{r['rejected']} ({r['rejected'] / max(1, r['requests']):.1%})",
                f"{r['lost']}/{args.requests}",
                str(r["paid_twice"]),
                f"{r['used']:.1%}",
            ]
            for r in rows
        ],
    )
    print(table)
    if args.write:
        argv = ["--cookbook", "/tmp/processor.py", "--requests", str(args.requests), "--write"]
        body = "\n".join(
            [
                *preamble("benchmarks/jsonl_cli.py", argv),
                f"The processor: openai-cookbook `examples/api_request_parallel_processor.py` at "
                "commit 59019bd2 (fetched with `git show`, never committed here; adapted as "
                "`benchmarks/_cookbook_worker.py` says: http URLs, the mock's tokenizer for "
                f"tiktoken). {args.requests:,} chat completions to {MODEL} (prompts of 20-150 "
                f"words, max_tokens {MAX_TOKENS}, outputs lognormal around {MEDIAN_OUTPUT}) "
                f"against one fresh MockProvider per row at {RPM:,} RPM and {TPM:,} TPM per "
                "model, billed as OpenAI documents (prompt + max_tokens on arrival, not handed "
                "back), latency 0.25 s + 0.002 s per output token + up to 0.3 s jitter.",
                "",
                table,
                "",
                "Rows (a) run `rate-limited run FILE -o OUT [--rpm R --tpm T] --no-progress`; "
                "rows (b) the processor with `--max_requests_per_minute R "
                "--max_tokens_per_minute T`. Ctrl-C rows: SIGINT once the provider has "
                "admitted half the requests, then the same command again (wall time is both "
                "runs'). Quota used / allowed: tokens charged from the first to the last "
                "admission, over the full bucket the provider starts with plus its refill in "
                "that time. "
                "429s and requests paid twice are counted by the provider; calls lost are "
                "requests without an answer in the client's output file.",
                "",
                "Reading it: given the limits, and counting tokens exactly (here it counts "
                "with the mock's own tokenizer), the cookbook's processor paces as well as "
                "`rate-limited run`: both keep the token bucket at its edge with no more than"
                " a stray 429. The differences are elsewhere. At the 75% its docstring "
                "advises, it leaves a quarter of the quota unused. Left at its default limits"
                " (above this account's), it gets 429s and pauses 15 s after each, where "
                "`rate-limited run` given no limits reads them from the headers. Interrupted,"
                " it has no resume: the same command sends the whole file again and pays for "
                "the finished half twice, where `rate-limited run` sends only what is left. "
                "That resumed run is not free of 429s: a new process cannot know how much of "
                "the bucket the interrupted one used, so its first burst meets an emptier "
                "bucket than it believes (429s that are retried, lose nothing and are not "
                "billed) until the headers correct its ledger.",
            ]
        )
        replace_section("JSONL command line vs the cookbook's parallel processor", body)


if __name__ == "__main__":
    main()
