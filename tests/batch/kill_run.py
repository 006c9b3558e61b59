"""One "kernel" of the kill -9 test: a fresh process that runs 60 chat calls as batches and
prints ``POLLING`` when it first waits (every batch is submitted by then), then the run's
counts as JSON.

``python -m tests.batch.kill_run STORE BASE_URL``
"""

from __future__ import annotations

import json
import sys
import threading

import openai

from rate_limited.apis.openai import ChatCompletions


def main(store: str, base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=10.0)
    chat = ChatCompletions(client, requests_per_minute=6000, tokens_per_minute=1_000_000)
    polled = threading.Event()

    def wait(seconds: float) -> None:
        if not polled.is_set():
            polled.set()
            print("POLLING", flush=True)
        threading.Event().wait(0.02)  # a real poll, every 20 ms

    with chat.runner(
        batch=True, store=store, progress=False, max_requests=25, sleep=wait
    ) as runner:
        for i in range(60):
            runner.schedule(
                model="gpt-4o-mini",
                max_tokens=8,
                messages=[{"role": "user", "content": f"question {i}"}],
            )
        result = runner.run()
    print(json.dumps(result.counts()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
