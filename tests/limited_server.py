"""A small rate-limited HTTP server for tests, enforcing its limits with its own code.

It plays rate_limited 0.4's "dummy server": ``GET /calculate_things/{n}`` returns
``{"output": "x" * n, "used_points": 2 * n, "state_before_check": {...}}`` after
``n * delay_per_thing`` seconds. It admits a request only if one request and ``2 * n``
points fit in its sliding windows, and answers 429 otherwise, so a test can tell whether
the Runner's ledger kept within the limits. Its accounting is deliberately independent
of the package (no import of rate_limited): it is the referee, not the player.

``failure_proba`` (query) makes it answer 500 with that probability (seeded), after
billing, like a real provider that fails after admitting a request.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class SlidingWindow:
    """At most ``quota`` units in any ``window`` seconds (each usage expires whole)."""

    def __init__(self, quota: float, window: float) -> None:
        self.quota = quota
        self.window = window
        self.log: deque[tuple[float, float]] = deque()

    def used(self, now: float) -> float:
        while self.log and self.log[0][0] + self.window <= now:
            self.log.popleft()
        return sum(amount for _, amount in self.log)

    def fits(self, amount: float, now: float) -> bool:
        return self.used(now) + amount <= self.quota

    def add(self, amount: float, now: float) -> None:
        self.log.append((now, amount))


class LimitedServer:
    """Runs in a background thread; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(
        self,
        requests_quota: float = 10,
        points_quota: float = 100,
        window: float = 1.0,
        delay_per_thing: float = 0.01,
        seed: int = 42,
    ) -> None:
        self.requests = SlidingWindow(requests_quota, window)
        self.points = SlidingWindow(points_quota, window)
        self.delay_per_thing = delay_per_thing
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        #: One entry per request: (monotonic time, path, status).
        self.log: list[tuple[float, str, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = server.handle(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, path: str) -> tuple[int, dict[str, Any]]:
        parsed = urlparse(path)
        parts = parsed.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "calculate_things":
            return 404, {"message": "not found"}
        n = int(parts[1])
        failure_proba = float(parse_qs(parsed.query).get("failure_proba", ["0"])[0])
        points = 2 * n
        with self.lock:
            now = time.monotonic()
            state = {"points": self.points.used(now), "requests": self.requests.used(now)}
            allowed = self.points.fits(points, now) and self.requests.fits(1, now)
            if allowed:
                self.requests.add(1, now)
                self.points.add(points, now)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                fail = failure_proba > 0 and self.rng.random() < failure_proba
            self.log.append((now, parsed.path, 200 if allowed else 429))
        if not allowed:
            return 429, {"message": f"Some rate limits exceeded: {state}"}
        try:
            time.sleep(n * self.delay_per_thing)
        finally:
            with self.lock:
                self.in_flight -= 1
        if fail:
            with self.lock:
                self.log[-1] = (self.log[-1][0], self.log[-1][1], 500)
            return 500, {"message": "Internal server error"}
        return 200, {"output": "x" * n, "used_points": points, "state_before_check": state}

    def statuses(self) -> list[int]:
        with self.lock:
            return [status for _, _, status in self.log]

    def __enter__(self) -> LimitedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
