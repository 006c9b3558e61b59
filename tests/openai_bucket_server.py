"""An OpenAI-style chat completions server for tests, as small as possible, by its own rules.

It is the independent referee of the ledger's accounting: no import of rate_limited, not
even of its MockProvider. Each model has two token buckets of capacity = the per-minute
limit, refilled continuously at limit/60 per second, and a request is counted the way
OpenAI documents: one request, and tokens = its prompt *estimated from the characters*
(a token per 4 characters of every message, plus 4 per message) + ``max_tokens * n``,
charged when it arrives and never handed back ("Your rate limit is calculated as the
maximum of max_tokens and the estimated number of tokens based on the character count of
your request", platform.openai.com/docs/guides/rate-limits). What does not fit gets a 429
with ``retry-after-ms``; every answer carries the ``x-ratelimit-*`` headers of the model's
buckets as of the request's arrival. Answers are ``min(max_tokens, a heavy-tailed draw)``
tokens long, after ``latency`` seconds.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Bucket:
    """``limit`` units, refilled continuously at ``limit / 60`` per second."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.level = limit  # what is available
        self.stamp = time.monotonic()

    def available(self, now: float) -> float:
        self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now
        return self.level


class BucketServer:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1 from a thread; ``base_url`` for
    the ``openai`` client. ``log`` has ``(arrival, model, status, charged tokens)``."""

    def __init__(self, rpm: float, tpm: float, latency: float = 0.05, seed: int = 1) -> None:
        self.rpm, self.tpm, self.latency = rpm, tpm, latency
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[Bucket, Bucket]] = {}
        self.log: list[tuple[float, str, int, float]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # the SDK's models.list(), for a warm-up
                self.reply(200, {"object": "list", "data": []}, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload, headers = server.handle(body)
                self.reply(status, payload, headers)

            def reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        model = str(body.get("model"))
        messages = body.get("messages") or []
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        prompt = math.ceil(chars / 4) + 4 * len(messages)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
        cost = prompt + max_tokens * int(body.get("n") or 1)
        with self.lock:
            now = time.monotonic()
            if model not in self.buckets:
                self.buckets[model] = (Bucket(self.rpm), Bucket(self.tpm))
            requests, tokens = self.buckets[model]
            fits = requests.available(now) >= 1 and tokens.available(now) >= cost
            if fits:
                requests.level -= 1
                tokens.level -= cost
            headers = {
                "x-ratelimit-limit-requests": str(int(self.rpm)),
                "x-ratelimit-remaining-requests": str(math.floor(requests.level)),
                "x-ratelimit-limit-tokens": str(int(self.tpm)),
                "x-ratelimit-remaining-tokens": str(math.floor(tokens.level)),
            }
            self.log.append((now, model, 200 if fits else 429, cost if fits else 0))
            output = min(max_tokens, max(1, int(self.rng.lognormvariate(math.log(40), 1))))
        if not fits:
            short = max(1 - requests.level, (cost - tokens.level) * 60 / self.tpm, 0.001)
            headers["retry-after-ms"] = str(math.ceil(short * 1000))
            error = {
                "message": "Rate limit reached",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
            return 429, {"error": error}, headers
        time.sleep(self.latency)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        }
        message = {"role": "assistant", "content": "x " * output}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        return 200, answer, headers

    def statuses(self) -> list[int]:
        with self.lock:
            return [status for _, _, status, _ in self.log]

    def __enter__(self) -> BucketServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
