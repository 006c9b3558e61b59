"""What a store costs: overhead per call of SQLite and Redis, and resuming 100,000 calls.

What: (a) the store overhead per call: N trivial calls (``def f(x): return x`` and its
async twin) through ``Runner`` with no store, with a SQLite file and with Redis; the
overhead is (time with the store - time without) / N, scheduling included (that is where
the call keys are hashed). (b) resuming a finished N-call run from SQLite: a fresh process
builds the Runner, schedules the same N calls and ``run()``s; every result comes from the
store and no call is made. The wall time of schedule + run is reported with its parts:
key hashing, ``get_many``, building the ``RunResult`` and the rest of the engine. It is
measured for int results and for openai ``ChatCompletion`` results (pydantic models, what
an LLM batch stores).
Why: the targets of the store issue: under 50 µs of overhead per call with batched
writes, and a 100,000-call resume in under 3 s.

How: every measurement is a fresh ``python -I`` worker process running this file with
``--worker``; the three backends alternate process by process, in a rotating order, so
the noise of a shared machine hits all alike. Redis is a ``redis-server`` this script
starts on a free port of 127.0.0.1 (no persistence) and stops at the end; without
``redis-server`` on the PATH its rows say n/a.

    python benchmarks/stores.py [--calls 100000] [--repeat 3] [--write]

``--write`` replaces the "## Stores" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BACKENDS = ("none", "sqlite", "redis")
KINDS = ("async", "sync")
RESULT_KINDS = ("int", "chat")
TARGET_OVERHEAD = 50e-6  # seconds per call
TARGET_RESUME = 3.0  # seconds for schedule + run of N stored calls
SECRET = "benchmark-secret"  # workers inherit it: no secret file is written anywhere


# -- the worker: one measurement in a fresh interpreter ----------------------------------------
made = 0  # calls of the function really made in this process


def trivial(x: Any) -> Any:
    global made
    made += 1
    return x


async def trivial_async(x: Any) -> Any:
    global made
    made += 1
    return x


_CHAT_TEXT = "A sentence of a typical short answer, repeated a few times. " * 4


def chat(i: int) -> Any:
    """A ChatCompletion as openai's client returns it (built locally: no server needed)."""
    global made
    made += 1
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{i}",
            "object": "chat.completion",
            "created": 1_700_000_000 + i,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": f"{i}: {_CHAT_TEXT}"},
                }
            ],
            "usage": {"prompt_tokens": 52, "completion_tokens": 61, "total_tokens": 113},
            "system_fingerprint": "fp_0123456789",
        }
    )


def _function(kind: str, results: str) -> Callable[..., Any]:
    if results == "chat":
        return chat
    return trivial_async if kind == "async" else trivial


def _check(result: Any, calls: int, results: str) -> None:
    values = result.results
    if len(values) != calls or any(result.exceptions):
        raise AssertionError(f"wrong results for {calls} calls: {values[:3]}...")
    if results == "chat":
        if values[-1].id != f"chatcmpl-{calls - 1}" or values[0].usage.total_tokens != 113:
            raise AssertionError(f"wrong chat results: {values[0]!r}")
    elif values != list(range(calls)):
        raise AssertionError(f"wrong results for {calls} calls: {values[:3]}...")


def _overhead(kind: str, spec: str, calls: int) -> dict[str, Any]:
    """Schedule ``calls`` trivial calls and run() them: seconds of each."""
    from rate_limited import Runner

    runner = Runner(_function(kind, "int"), [], progress=False, store=spec or None)
    started = time.perf_counter()
    for i in range(calls):
        runner.schedule(i)
    scheduled = time.perf_counter()
    result = runner.run()
    finished = time.perf_counter()
    _check(result, calls, "int")
    if made != calls:
        raise AssertionError(f"{made} calls made, expected {calls} (a store left from before?)")
    runner.close()  # flushes what is left (nothing: each pass of the loop committed)
    return {
        "schedule": scheduled - started,
        "run": finished - scheduled,
        "total": finished - started,
    }


def _prepare(results: str, spec: str, calls: int) -> dict[str, Any]:
    """Run ``calls`` calls into the store at ``spec``: the finished run to resume."""
    from rate_limited import Runner

    with Runner(_function("async", results), [], progress=False, store=spec) as runner:
        for i in range(calls):
            runner.schedule(i)
        started = time.perf_counter()
        result = runner.run()
        elapsed = time.perf_counter() - started
    _check(result, calls, results)
    return {"total": elapsed, "made": made}


def _timed(function: Callable[..., Any], into: dict[str, float], name: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - started

    return wrapper


class GcTimer:
    """Seconds the cyclic garbage collector spends, by generation, while it is installed."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.count[generation] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def _resume(results: str, spec: str, calls: int) -> dict[str, Any]:
    """A fresh process resumes the finished run: every result from the store, no call made.

    The user's script imports what builds its function (openai for a chat batch) before
    the Runner, so those imports are timed apart, not in ``get_many``.
    """
    importing = time.perf_counter()
    from rate_limited import Runner
    from rate_limited._keys import call_key

    if results == "chat":
        import openai.types.chat  # noqa: F401

    parts: dict[str, float] = {}
    started = time.perf_counter()
    runner = Runner(_function("async", results), [], progress=False, store=spec)
    built = time.perf_counter()
    assert runner.store is not None
    # Instance attributes shadow the methods: run() calls these wrappers, nothing else changes.
    runner.store.get_many = _timed(runner.store.get_many, parts, "get_many")  # type: ignore[method-assign]
    runner._result = _timed(runner._result, parts, "result")  # type: ignore[method-assign]
    with GcTimer() as collector:
        for i in range(calls):
            runner.schedule(i)
        scheduled = time.perf_counter()
        result = runner.run()
        finished = time.perf_counter()
    _check(result, calls, results)
    from_store = sum(1 for call in result.calls if call.from_store)
    if made or from_store != calls:
        raise AssertionError(f"resume made {made} calls, {from_store} of {calls} from the store")
    runner.close()
    # Key hashing on its own (not part of the times above): what schedule() spends on it.
    function = runner.function
    hashing = time.perf_counter()
    for i in range(calls):
        call_key(function, (i,), {})
    hashed = time.perf_counter()
    run = finished - scheduled
    return {
        "import": started - importing,
        "construct": built - started,
        "schedule": scheduled - built,
        "keys": hashed - hashing,
        "get_many": parts["get_many"],
        "result": parts["result"],
        "engine": run - parts["get_many"] - parts["result"],
        "run": run,
        "schedule_run": finished - built,
        "gc": sum(collector.seconds),
        "gc_full": collector.seconds[2],
        "gc_full_count": collector.count[2],
        "made": made,
        "from_store": from_store,
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker == "resume":  # imports are part of what it times
        info: dict[str, Any] = _resume(args.results, args.spec, args.calls)
        import rate_limited

        info.update(file=rate_limited.__file__, python=sys.version.split()[0])
        return info
    import rate_limited

    info = {"file": rate_limited.__file__, "python": sys.version.split()[0]}
    if args.worker == "overhead":
        info.update(_overhead(args.kind, args.spec, args.calls))
    elif args.worker == "prepare":
        info.update(_prepare(args.results, args.spec, args.calls))
    elif args.worker == "check":
        info.update(_overhead("sync", "", 10))
    else:
        raise ValueError(f"unknown worker {args.worker!r}")
    return info


# -- redis-server ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on a free port of 127.0.0.1 (None if there is none)."""
    given = os.environ.get("RATE_LIMITED_TEST_REDIS_URL")
    if given:  # the one .ci/run starts
        yield given
        return
    executable = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        executable = None
    if executable is None:
        yield None
        return
    port = _free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0" if _wait_for_redis(redis, port, process) else None
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_redis(redis: Any, port: int, process: subprocess.Popen[bytes]) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                return bool(client.ping())
            except redis.RedisError:
                time.sleep(0.05)
        return False
    finally:
        client.close()


def _flush_redis(url: str, prefix: str) -> None:
    """Remove one worker's records (they are many; the server is shared by the repeats)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for keys in _batched(client.scan_iter(match=f"rate_limited:store:{prefix}:*", count=5000)):
            client.delete(*keys)
    finally:
        client.close()


def _batched(items: Any, size: int = 5000) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the driver ----------------------------------------------------------------------------------
def _format(seconds: float) -> str:
    if seconds < 1e-4:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


class Driver:
    def __init__(self, args: argparse.Namespace, python: str, directory: Path) -> None:
        self.args = args
        self.python = python
        self.directory = directory
        self.script = str(Path(__file__).resolve())

    def run(self, worker_args: list[str]) -> dict[str, Any]:
        from _common import run_worker

        started = time.perf_counter()
        result = run_worker(self.python, self.script, worker_args, timeout=self.args.timeout)
        result["process"] = time.perf_counter() - started
        return result

    def overhead(self, kind: str, backend: str, redis_url: str | None) -> dict[str, Any]:
        prefix = f"bench_{uuid.uuid4().hex}"
        if backend == "none":
            spec = ""
        elif backend == "sqlite":
            spec = str(self.directory / f"{prefix}.db")
        else:
            assert redis_url is not None
            spec = f"{redis_url}?prefix={prefix}"
        args = ["--worker", "overhead", "--kind", kind, "--spec", spec]
        try:
            return self.run([*args, "--calls", str(self.args.calls)])
        finally:
            if backend == "sqlite":
                for file in self.directory.glob(f"{prefix}.db*"):
                    file.unlink()
            elif backend == "redis":
                assert redis_url is not None
                _flush_redis(redis_url, prefix)


def _overhead_table(
    samples: dict[tuple[str, str], list[dict[str, Any]]], calls: int, redis_ok: bool
) -> tuple[str, bool]:
    from _common import best, markdown_table, median

    rows = []
    all_met = True
    for kind in KINDS:
        base = samples[(kind, "none")]
        base_best = best([s["total"] for s in base])
        base_median = median([s["total"] for s in base])
        for backend in BACKENDS:
            label = f"`{'def' if kind == 'sync' else 'async def'} f(x)`, store: {backend}"
            got = samples.get((kind, backend), [])
            if backend == "redis" and not redis_ok:
                rows.append([label, "n/a", "n/a", "n/a", "n/a", "< 50 µs", "n/a"])
                continue
            totals = [s["total"] for s in got]
            schedule = median([s["schedule"] for s in got])
            run = median([s["run"] for s in got])
            times = f"{_format(best(totals))} / {_format(median(totals))}"
            if backend == "none":
                rows.append([label, times, _format(schedule), _format(run), "-", "-", "-"])
                continue
            over_best = (best(totals) - base_best) / calls
            over_median = (median(totals) - base_median) / calls
            met = over_best < TARGET_OVERHEAD and over_median < TARGET_OVERHEAD
            all_met = all_met and met
            rows.append(
                [
                    label,
                    times,
                    _format(schedule),
                    _format(run),
                    f"{_format(over_best)} / {_format(over_median)}",
                    "< 50 µs",
                    "yes" if met else "**no**",
                ]
            )
    header = (
        "N calls of",
        "schedule + run: best / median",
        "schedule (median)",
        "run (median)",
        "overhead per call: best / median",
        "target",
        "met?",
    )
    return markdown_table(header, rows), all_met


RESUME_ROWS = (
    ("imports: rate_limited (and openai for ChatCompletion)", "import"),
    ("`Runner(..., store=path)`", "construct"),
    ("`schedule()` of the N calls, call keys included", "schedule"),
    ("... of which key hashing (`call_key` of each call, timed apart)", "keys"),
    ("`run()`: `store.get_many` (read + verify + decode)", "get_many"),
    ("`run()`: building the `RunResult`", "result"),
    ("`run()`: the rest (engine, loop thread)", "engine"),
    ("**schedule + run**", "schedule_run"),
    ("... of which cyclic GC collections (any step above)", "gc"),
    ("whole worker process, start to exit", "process"),
)


COLUMN_NAMES = {
    "int": "int results",
    "chat": "ChatCompletion results",
}


def _resume_table(samples: dict[str, list[dict[str, Any]]]) -> tuple[str, bool]:
    """The resume table; the target counts for the package as it is (not the experiments)."""
    from _common import best, markdown_table, median

    kinds = [kind for kind in COLUMN_NAMES if samples.get(kind)]
    rows = []
    for label, key in RESUME_ROWS:
        cells = [label]
        for kind in kinds:
            values = [s[key] for s in samples[kind]]
            cells.append(f"{_format(best(values))} / {_format(median(values))}")
        rows.append(cells)
    met_cells = ["target: schedule + run < 3 s, zero calls made"]
    all_met = True
    for kind in kinds:
        values = [s["schedule_run"] for s in samples[kind]]
        calls_made = sum(s["made"] for s in samples[kind])
        met = best(values) < TARGET_RESUME and median(values) < TARGET_RESUME and not calls_made
        if "+" not in kind:
            all_met = all_met and met
        met_cells.append("yes" if met else "**no**")
    rows.append(met_cells)
    header = ("step (best / median)", *(COLUMN_NAMES[k] for k in kinds))
    return markdown_table(header, rows), all_met


def _report(
    args: argparse.Namespace,
    argv: Sequence[str],
    overhead: str,
    overhead_met: bool,
    resume: str,
    resume_met: bool,
    redis_ok: bool,
) -> str:
    from _common import preamble

    repeats = "once" if args.repeat == 1 else f"{args.repeat} times"
    redis_note = (
        "Redis: a local `redis-server` on 127.0.0.1 without persistence, through TCP."
        if redis_ok
        else "Redis: n/a (no `redis-server` on the PATH, or the redis package is missing)."
    )
    return "\n".join(
        [
            *preamble(__file__, argv),
            f"### Store overhead per call (N = {args.calls:,} trivial calls)",
            "",
            f"Each configuration ran {repeats}, each time in a fresh process, the backends "
            "alternating in a rotating order. Overhead per call = (schedule + run with the store - "
            "without) / N, best against best and median against median; it includes hashing "
            "each call's key in `schedule()`, encoding and signing each outcome, and "
            f"committing them in a batch at the end of each pass of the event loop. {redis_note} "
            "SQLite: a new file in the system's temporary directory (WAL, "
            "`synchronous=NORMAL`).",
            "",
            overhead,
            "",
            f"Target (< 50 µs per call, SQLite and Redis): "
            f"{'met' if overhead_met else '**not met**'}.",
            "",
            f"### Resuming a finished {args.calls:,}-call run from SQLite",
            "",
            "A first process ran the N calls into a SQLite file; then, "
            f"{repeats}, a fresh process built the Runner on that file, scheduled "
            "the same N calls and called `run()`: every result came from the store and no "
            "call was made (checked in the worker). `get_many` and the `RunResult` building "
            "are timed by wrapping them on the instance; key hashing is timed apart after the "
            "run, on the same calls. `ChatCompletion` results are openai pydantic models, "
            "stored as their JSON (decoded with pydantic-core).",
            "",
            resume,
            "",
            f"Target (< 3 s): {'met' if resume_met else '**not met**'}.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="N (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (default 3)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per worker (default 600)"
    )
    parser.add_argument(
        "--worker", choices=("overhead", "prepare", "resume", "check"), help=argparse.SUPPRESS
    )
    parser.add_argument("--kind", choices=KINDS, default="async", help=argparse.SUPPRESS)
    parser.add_argument("--results", choices=RESULT_KINDS, default="int", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1:
        parser.error("--calls and --repeat must be at least 1")

    if args.worker:  # in a fresh interpreter: one measurement, one JSON line
        print(json.dumps(worker(args)))
        return 0

    from _common import REPO_ROOT, WorkerError, replace_section

    os.environ["RATE_LIMITED_STORE_SECRET"] = SECRET
    try:
        import openai  # noqa: F401

        result_kinds: tuple[str, ...] = RESULT_KINDS
    except ImportError:
        print("openai is not installed: ChatCompletion results are left out", file=sys.stderr)
        result_kinds = ("int",)

    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="rate_limited_bench_stores_") as tmp,
        redis_server() as redis_url,
    ):
        driver = Driver(args, sys.executable, Path(tmp))
        try:
            check = driver.run(["--worker", "check"])
            if not Path(check["file"]).resolve().is_relative_to(REPO_ROOT / "rate_limited"):
                raise SystemExit(f"the interpreter imports {check['file']}, not this checkout")
            backends = [b for b in BACKENDS if b != "redis" or redis_url is not None]
            samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for repeat in range(args.repeat):
                for index, kind in enumerate(KINDS):
                    shift = (repeat * len(KINDS) + index) % len(backends)
                    for backend in backends[shift:] + backends[:shift]:
                        result = driver.overhead(kind, backend, redis_url)
                        samples.setdefault((kind, backend), []).append(result)
                print(
                    f"overhead: repeat {repeat + 1}/{args.repeat} done "
                    f"({time.perf_counter() - started:.0f} s)"
                )
            resumes: dict[str, list[dict[str, Any]]] = {}
            for results in result_kinds:
                db = str(Path(tmp) / f"resume_{results}.db")
                prepare = ["--worker", "prepare", "--results", results, "--spec", db]
                driver.run([*prepare, "--calls", str(args.calls)])
                resume = ["--worker", "resume", "--results", results, "--spec", db]
                resume += ["--calls", str(args.calls)]
                for _ in range(args.repeat):
                    resumes.setdefault(results, []).append(driver.run(resume))
                print(f"resume ({results}) done ({time.perf_counter() - started:.0f} s)")
        except WorkerError as exc:
            print(exc, file=sys.stderr)
            return 1

    overhead, overhead_met = _overhead_table(samples, args.calls, redis_url is not None)
    resume_table, resume_met = _resume_table(resumes)
    report = _report(
        args,
        argv,
        overhead,
        overhead_met,
        resume_table,
        resume_met,
        redis_url is not None,
    )
    print()
    print(report)
    if args.write:
        replace_section("Stores", report)
        print("\nwrote the 'Stores' section of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
