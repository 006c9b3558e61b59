"""One worker process of the shared-quota tests and benchmarks (``python tests/shared_worker.py``).

It runs a ``ChatCompletions`` Runner (the configuration users run: a requests and a tokens
resource, OpenAI's accounting) over its share of a seeded workload against a MockProvider,
with ``--ledger`` (a Redis URL, or ``none``: its own in-process ledger) and ``--store``
(shared, for work sharing). Calls ``i`` with ``i % step == offset`` are its share (``--step
1``: every worker schedules every call). It prints one JSON line: what its Runner saw.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

_VOCABULARY = (
    "rate limit token bucket quota refill request answer model prompt the of and to in is "
    "it for on that as with was be by this at from or an are data call fast slow time load"
)
_WORDS = _VOCABULARY.split()


def workload(count: int, max_tokens: int, seed: str = "shared") -> list[dict[str, Any]]:
    """``count`` seeded chat requests (the same list in every process)."""
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        words = " ".join(rng.choices(_WORDS, k=rng.randint(10, 60)))
        message = {"role": "user", "content": f"Request {index}: {words}"}
        requests.append({"model": "gpt-4o-mini", "messages": [message], "max_tokens": max_tokens})
    return requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ledger", default="none")
    parser.add_argument("--store", default="none")
    parser.add_argument("--rpm", type=float, required=True)
    parser.add_argument("--tpm", type=float, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--max-concurrent", type=int, default=32)
    parser.add_argument("--claim-ttl", type=float, default=60.0)
    args = parser.parse_args(argv)

    import openai

    from rate_limited.apis.openai import ChatCompletions
    from rate_limited.stores import open_store

    client = openai.OpenAI(base_url=args.base_url, api_key="test", timeout=120)
    chat = ChatCompletions(
        client,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        ledger=None if args.ledger == "none" else args.ledger,
    )
    runner = chat.runner(
        max_concurrent=args.max_concurrent,
        progress=False,
        store=None if args.store == "none" else open_store(args.store, claim_ttl=args.claim_ttl),
        long_wait_warning_seconds=None,
    )
    requests = workload(args.count, args.max_tokens)
    mine = [r for i, r in enumerate(requests) if i % args.step == args.offset]
    for request in mine:
        runner.schedule(**request)
    began = time.monotonic()
    result = runner.run()
    outcomes = result.outcomes
    report = {
        "scheduled": len(mine),
        "succeeded": sum(o.status.value == "succeeded" for o in outcomes),
        "from_store": sum(bool(o.from_store) for o in outcomes),
        "attempts": sum(o.attempts for o in outcomes if not o.from_store),
        "rate_limited": sum(1 for errors in result.exceptions for e in errors if "429" in str(e)),
        "texts": [o.result.choices[0].message.content[:40] if o.result else None for o in outcomes],
        "seconds": time.monotonic() - began,
    }
    runner.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
