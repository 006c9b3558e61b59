"""``rate-limited run requests.jsonl -o results.jsonl``: a file of requests through a preset.

The input is the OpenAI Batch API's input format, one request per line
(``{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}``),
or the openai-cookbook parallel processor's (one request body per line, with an optional
``"metadata"`` that is not sent and comes back with the result). Every line is checked
before anything is sent; a bad one is an error naming its line number.

Online (default), the calls go through the preset of their endpoint (``ChatCompletions``,
``Embeddings``, ``Responses``) with ``--rpm`` / ``--tpm`` (or the limits the provider's
headers report); ``--batch`` sends them through the Batch API at half the price
(``rate_limited.batch``). The ``openai`` client is made as usual: ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL`` from the environment.

Every finished call is kept in ``--store`` (default: next to the output, ``OUTPUT.db``)
as it finishes, so Ctrl-C and a rerun of the same command skip what is done and never
send a request twice. Each finished result is also appended, as it finishes (online:
every second; by batch: after each poll), to a sidecar ``OUTPUT.partial`` (flushed to
disk), so that a crash, even ``kill -9``, leaves what was done readable on disk. A rerun
takes the answered lines from the sidecar (each row carries a hash of its request, so an
edited line is sent again) and schedules only the rest. The output is written at the end
of each run (Ctrl-C included), atomically, in input order: one line per request with its
``custom_id``, the ``response`` (``status_code`` and ``body``) or the ``error``, and its
``metadata``; the sidecar is removed once every request is answered.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BadInputError", "Line", "Sidecar", "add_arguments", "read_requests", "run_command"]

#: Seconds between two appends to the sidecar during an online run.
SIDECAR_EVERY = 1.0

#: The batch endpoints, and the preset of each.
ENDPOINTS = {
    "/v1/chat/completions": "ChatCompletions",
    "/v1/embeddings": "Embeddings",
    "/v1/responses": "Responses",
}

DESCRIPTION = """\
Send every request of a JSONL file through the OpenAI API, as fast as the rate limits
allow (or through the Batch API with --batch, at half the price), and write the results
to a JSONL file in input order. Lines are either OpenAI Batch API input lines
({"custom_id", "method", "url", "body"}) or request bodies (the openai-cookbook parallel
processor's format, with an optional "metadata" echoed back). Finished calls are kept in
a store as they finish: Ctrl-C, then the same command again, sends only what is left.
The client reads OPENAI_API_KEY and OPENAI_BASE_URL as usual."""


class BadInputError(ValueError):
    """A line of the input that cannot be sent; the message names the line."""


@dataclass
class Line:
    """One request of the input file."""

    number: int
    custom_id: str
    url: str
    body: dict[str, Any]
    metadata: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def request_hash(self) -> str:
        """What identifies the request (its endpoint and body), for the sidecar."""
        text = json.dumps([self.url, self.body], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("requests", type=Path, help="the JSONL file of requests")
    add("-o", "--output", type=Path, help="results file (default: REQUESTS.results.jsonl)")
    add("--rpm", type=float, help="requests per minute (default: read from the headers)")
    add("--tpm", type=float, help="tokens per minute (default: read from the headers)")
    add("--model", help="the model of lines that name none")
    add(
        "--url",
        default="/v1/chat/completions",
        choices=sorted(ENDPOINTS),
        help="endpoint of lines that name none (default /v1/chat/completions)",
    )
    add("--batch", action="store_true", help="through the Batch API (half price, up to 24 h)")
    add("--store", help="where finished calls are kept (default: OUTPUT.db)")
    add(
        "--claim-ttl",
        type=float,
        help="seconds a killed run's claims hold its unfinished requests from a rerun (60)",
    )
    add("--max-retries", type=int, default=5, help="retries of a failed request (5)")
    add("--max-concurrent", type=int, default=64, help="most requests in flight (64)")
    add(
        "--estimate",
        action="store_true",
        help="print the requests, tokens and most cost; send nothing",
    )
    add("--no-progress", action="store_true", help="no progress bar")


def read_requests(path: Path, url: str, model: str | None) -> list[Line]:
    """Every line of ``path`` as a request, or ``BadInputError`` naming the first bad line."""
    lines: list[Line] = []
    seen: dict[str, int] = {}
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"can't read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            line = _parse(text, number, url, model)
            if line.custom_id in seen:
                raise BadInputError(
                    f"line {number}: custom_id {line.custom_id!r} is already on line "
                    f"{seen[line.custom_id]}; each request needs its own."
                )
            seen[line.custom_id] = number
            lines.append(line)
    if not lines:
        raise BadInputError(f"{path} has no requests.")
    urls = {line.url for line in lines}
    if len(urls) > 1:
        first = {u: next(x.number for x in lines if x.url == u) for u in urls}
        raise BadInputError(
            "one endpoint per file: "
            + ", ".join(f"{u} (line {n})" for u, n in sorted(first.items(), key=lambda i: i[1]))
        )
    return lines


def _parse(text: str, number: int, url: str, model: str | None) -> Line:
    try:
        item = json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"line {number}: not valid JSON ({exc}).") from None
    if not isinstance(item, dict):
        raise BadInputError(f"line {number}: expected a JSON object, got {type(item).__name__}.")
    metadata = item.pop("metadata", None)
    if "body" in item or "custom_id" in item:  # the Batch API's input format
        body = item.get("body")
        if not isinstance(body, dict):
            raise BadInputError(f'line {number}: "body" must be the request, a JSON object.')
        if item.get("method", "POST") != "POST":
            raise BadInputError(f'line {number}: "method" must be "POST".')
        url = item.get("url", url)
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BadInputError(f'line {number}: "custom_id" must be a non-empty string.')
    else:  # a request body per line
        body, custom_id = item, f"line-{number}"
    if url not in ENDPOINTS:
        raise BadInputError(
            f"line {number}: url {url!r} is not one of {', '.join(sorted(ENDPOINTS))}."
        )
    body = dict(body)
    if "model" not in body and model is not None:
        body["model"] = model
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadInputError(f'line {number}: the request names no "model" (or pass --model).')
    if body.get("stream"):
        raise BadInputError(f'line {number}: "stream" is not supported; leave it unset.')
    needed = {
        "/v1/chat/completions": "messages",
        "/v1/embeddings": "input",
        "/v1/responses": "input",
    }
    if needed[url] not in body:
        raise BadInputError(f'line {number}: a {url} request needs "{needed[url]}".')
    return Line(number, custom_id, url, body, metadata)


def run_command(args: argparse.Namespace) -> int:
    """The ``run`` command; its exit status (0: every request answered)."""
    try:
        lines = read_requests(args.requests, args.url, args.model)
    except BadInputError as exc:
        print(f"rate-limited run: {args.requests}: {exc}", file=sys.stderr)
        return 2
    output: Path = args.output or args.requests.with_suffix(".results.jsonl")
    store = args.store or f"{output}.db"
    import openai

    with openai.OpenAI() as client:  # its connections closed when the command ends
        return _send(args, lines, output, store, client)


def _send(
    args: argparse.Namespace, lines: list[Line], output: Path, store: str, client: Any
) -> int:
    """Send ``lines`` (those not answered before) through ``client``, write ``output``;
    the exit status."""
    from rate_limited.apis.openai import _presets

    preset_class = getattr(_presets, ENDPOINTS[lines[0].url])
    preset = preset_class(client, requests_per_minute=args.rpm, tokens_per_minute=args.tpm)
    if args.estimate:
        return _estimate(preset, lines, args.batch)
    options: dict[str, Any] = {"store": store, "max_retries": args.max_retries}
    # A Runner closes the stores it opens, not one it is given: this one closes at the end.
    own_store: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if args.claim_ttl is not None:
        from rate_limited.stores import open_store

        own_store = options["store"] = open_store(store, claim_ttl=args.claim_ttl)
    if args.no_progress:
        options["progress"] = False
    if args.batch:
        runner: Any = preset.runner(batch=True, **options)
    else:
        runner = preset.runner(max_concurrent=args.max_concurrent, **options)
    sidecar = Sidecar(output.with_name(output.name + ".partial"))
    done = sidecar.answered(lines)
    todo = [line for line in lines if line.custom_id not in done]
    interrupted = False
    with own_store, runner, sidecar:
        for line in todo:
            runner.schedule(**line.body)
        if todo:
            result = _run(runner, args.batch, lambda r: sidecar.append(todo, r))
            sidecar.append(todo, result)
            interrupted = result.interrupted
            done.update(zip([line.custom_id for line in todo], _rows(todo, result), strict=True))
    rows = [done[line.custom_id] for line in lines]
    _write(output, rows)
    counts: dict[str, int] = {}
    for row in rows:
        status = _status(row)
        counts[status] = counts.get(status, 0) + 1
    if counts.get("succeeded", 0) == len(lines):
        sidecar.path.unlink(missing_ok=True)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{output}: {summary}", file=sys.stderr)
    if interrupted:
        print(
            f"Interrupted; the same command again sends only what is left (store: {store}).",
            file=sys.stderr,
        )
        return 130
    return 0 if counts.get("succeeded", 0) == len(lines) else 1


def _run(runner: Any, batch: bool, on_progress: Callable[[Any], object]) -> Any:
    """The run, with what has finished handed to ``on_progress`` as it goes."""
    if batch:
        return runner.run(on_progress=on_progress)
    handle = runner.start()
    try:
        while True:
            try:
                return handle.result(timeout=SIDECAR_EVERY)
            except TimeoutError:
                on_progress(handle.snapshot())
    except KeyboardInterrupt:  # between two waits: stop as run() would
        return handle.stop()


def _row(line: Line, outcome: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"custom_id": line.custom_id, "response": None, "error": None}
    if outcome.status.value == "succeeded":
        body = outcome.result
        to_dict = getattr(body, "to_dict", None) or getattr(body, "model_dump", None)
        row["response"] = {"status_code": 200, "body": to_dict() if to_dict else body}
    elif outcome.error is not None:
        from rate_limited._redact import redact

        row["error"] = {
            "type": type(outcome.error).__name__,
            "message": redact(str(outcome.error)),
        }
    else:
        row["error"] = {"type": "NotRun", "message": f"{outcome.status.value}: not finished"}
    if line.metadata is not None:
        row["metadata"] = line.metadata
    return row


def _rows(lines: Sequence[Line], result: Any) -> list[dict[str, Any]]:
    return [_row(line, o) for line, o in zip(lines, result.outcomes, strict=True)]


def _status(row: Mapping[str, Any]) -> str:
    if row["response"] is not None:
        return "succeeded"
    if row["error"]["type"] == "NotRun":
        return str(row["error"]["message"]).split(":", 1)[0]
    return "failed"


def _write(output: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """The results in input order, written whole or not at all."""
    temporary = output.with_name(output.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, output)


class Sidecar:
    """``OUTPUT.partial``: each finished result appended as it finishes (one JSON row per
    line, with the ``request`` hash of its line), so a crash leaves them on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None
        #: Indexes (in the list handed to ``append``) already written.
        self._written: set[int] = set()

    def answered(self, lines: Sequence[Line]) -> dict[str, dict[str, Any]]:
        """The rows of the sidecar answering ``lines`` as they are now, by custom_id (a
        row of an edited line, a failure, or a line torn by a crash does not count)."""
        hashes = {line.custom_id: line.request_hash for line in lines}
        found: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return found
        for raw in text.splitlines():
            try:
                row = json.loads(raw)
            except ValueError:
                continue  # the last line of a process killed while writing it
            if not isinstance(row, dict) or row.get("response") is None:
                continue
            custom_id = row.get("custom_id")
            if hashes.get(custom_id) == row.pop("request", None):  # type: ignore[arg-type]
                found[custom_id] = row  # type: ignore[index]
        return found

    def append(self, lines: Sequence[Line], result: Any) -> None:
        """Write the outcomes of ``result`` (of ``lines``) that finished since the last
        call, and flush them to disk."""
        rows = []
        for index, (line, outcome) in enumerate(zip(lines, result.outcomes, strict=True)):
            if index in self._written or not outcome.status.is_final:
                continue
            self._written.add(index)
            rows.append({**_row(line, outcome), "request": line.request_hash})
        if not rows:
            return
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _estimate(preset: Any, lines: Sequence[Line], batch: bool) -> int:
    """What the file would send and cost at most, per model; sends nothing."""
    from rate_limited.cost import PriceTable

    table = PriceTable()
    by_model: dict[str, list[float]] = {}
    for line in lines:
        body = line.body
        prompt = float(preset.prompt_tokens(body))
        output = (
            float(preset._reserved_output(body)) if hasattr(preset, "_reserved_output") else 0.0
        )
        row = by_model.setdefault(body["model"], [0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += prompt
        row[2] += output
        most = table.max_cost(body["model"], prompt, output, batch=batch)
        row[3] = math.nan if most is None or math.isnan(row[3]) else row[3] + most
    where = "Batch API" if batch else "online"
    for model, (count, prompt, output, cost) in by_model.items():
        money = "no price known" if math.isnan(cost) else f"at most ${cost:,.4f} ({where})"
        print(
            f"{model}: {count:,.0f} requests, ~{prompt:,.0f} prompt tokens, up to "
            f"{output:,.0f} output tokens; {money}"
        )
    return 0
