"""One quota for many processes: the Redis ledger, work sharing on one store, Dask.

What (each cell against the MockProvider with OpenAI's accounting: a request costs
``prompt + max_tokens`` of TPM at arrival, kept; the workers run the ``ChatCompletions``
preset, a requests and a tokens resource, with the limits given):

* **one key, 4 processes** (TPM-bound): each process runs its share of the calls, with
  the Redis ledger, then with in-process ledgers (each believes it owns the key), one after
  the other in the same run. Steady-state utilization of the TPM limit, 429s, requests.
* **SIGKILL one of 4** (Redis ledger, lease 5 s): the others finish; seconds from the kill
  until the dead process's reservations were reaped (its holder gone from Redis); 429s.
* **one job, 4 processes**: the same 3,000 calls scheduled by 4 processes on one store
  (Redis, SQLite): requests the provider received; then the same with one worker killed
  mid-run (claims of 5 s): requests <= 3,000 + the calls it had in flight.
* **overhead**: the Runner's wall time per call, a no-op function with the two resources,
  Redis ledger (loopback) minus in-process ledger, measured side by side (alternately, 5
  times; best and median): the same demand every call, demands that differ per call, and
  the provider reporting on every call what is left of both resources (the presets' path).
* **Dask**: ``rate_limited.dask.apply`` on a ``LocalCluster`` of 2 worker processes over
  10,000 rows (RPM-bound): complete and exact results, 429s, every request beyond the rows
  accounted for; then the same with one worker SIGKILLed mid-run.

Steady state: a sampler reads the provider's token bucket every 20 ms; from 3 s after the
bucket first ran dry (below 5% of the limit) to 1 s before the last admission, the quota
charged is ``refill - (level at end - level at start)`` over the refill (the bucket never
sits full there, so no refill is lost).

    .venv/bin/python benchmarks/shared.py [--write] [--only quota,kill,job,overhead,dask]

``--write`` writes the parts run into the "## Shared quota" section of
``benchmarks/RESULTS.md``, each in its own ``### `` subsection, with the explanations the
figures give (the target met or not, whether a run sent a row twice); a full run also its
preamble (date, machine, command). A run of some parts (``--only``) replaces only their
subsections, each with a preamble of its own, and keeps the rest of the section. Notes
written by hand under a part's ``<!-- notes below: kept by --write -->`` line are kept
(``_common.replace_section``).

Needs a redis-server: ``--redis redis://127.0.0.1:6379/0`` (default: $RATE_LIMITED_TEST_REDIS_URL).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, markdown_table, preamble, replace_section  # noqa: E402
from tests.shared import reports, start_workers  # noqa: E402

TPM, RPM = 60_000, 6_000
#: Calls of ~240 tokens: 1.5 minutes of TPM (the first minute's burst, then ~30 s bound).
QUOTA_CALLS = 375
DRY, SETTLE = 0.05, 3.0


class Sampler(threading.Thread):
    """Reads the provider's token bucket every 20 ms: (time, available)."""

    def __init__(self, mp: Any) -> None:
        super().__init__(daemon=True)
        self.mp, self.samples, self.stop = mp, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for name, (available, _) in self.mp.buckets().items():
                if name.startswith("openai.tokens"):
                    self.samples.append((time.monotonic(), available))


def steady_utilization(samples: list[tuple[float, float]], last_admission: float) -> float:
    """Share of the refill charged between 3 s after the bucket ran dry and 1 s before the
    last admission (nan: no steady state)."""
    dry = next((t for t, a in samples if a < DRY * TPM), None)
    if dry is None:
        return float("nan")
    start, end = dry + SETTLE, last_admission - 1.0
    window = [(t, a) for t, a in samples if start <= t <= end]
    if len(window) < 2 or window[-1][0] - window[0][0] < 5:
        return float("nan")
    (t0, a0), (t1, a1) = window[0], window[-1]
    refill = TPM / 60 * (t1 - t0)
    charged = refill + (a0 - a1)  # available fell by what was charged beyond the refill
    return charged / refill


def provider(**options: Any) -> Any:
    from rate_limited.testing import MockProvider

    return MockProvider(latency=0.2, jitter=0.3, **options)


def cell_quota(redis_url: str, ledger: str) -> list[str]:
    with provider(rpm=RPM, tpm=TPM) as mp:
        sampler = Sampler(mp)
        sampler.start()
        url = "none" if ledger == "in-process" else f"{redis_url}?name=b-{uuid.uuid4().hex[:6]}"
        done = reports(start_workers(mp.base_url, QUOTA_CALLS, workers=4, ledger=url,
                                     rpm=RPM, tpm=TPM))  # fmt: skip
        sampler.stop.set()
        sampler.join()
        stats = mp.stats()
    steady = steady_utilization(sampler.samples, stats.last_admission or 0.0)
    return [
        f"{ledger} ledgers" if ledger == "in-process" else "Redis ledger",
        f"{sum(r['succeeded'] for r in done):,}/{QUOTA_CALLS:,}",
        f"{stats.requests:,}",
        f"{stats.rejected:,}",
        f"{steady:.1%}",
    ]


def cell_kill(redis_url: str) -> list[str]:
    import redis

    name = f"b-kill-{uuid.uuid4().hex[:6]}"
    prefix = f"rate_limited:ledger:{{{name}}}:"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with provider(rpm=RPM, tpm=TPM) as mp:
        procs = start_workers(mp.base_url, QUOTA_CALLS, workers=4, rpm=RPM, tpm=TPM,
                              ledger=f"{redis_url}?name={name}&lease=5")  # fmt: skip
        victim = procs.pop(0)
        # Killed once a third of the calls are in and it holds a lease (a loaded machine
        # may start it after the others have begun).
        holder = None
        while holder is None or mp.stats().admitted < QUOTA_CALLS // 3:
            time.sleep(0.02)
            if holder is None:
                holders = client.zrange(prefix + "holders", 0, -1)
                holder = next((h for h in holders if f":{victim.pid}:" in h), None)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.communicate()
        while client.zscore(prefix + "holders", holder) is not None:
            time.sleep(0.01)
        back = time.monotonic() - killed
        done = reports(procs)
        stats = mp.stats()
    client.close()
    finished = all(r["succeeded"] == r["scheduled"] for r in done)
    return [
        "Redis ledger, lease 5 s",
        "yes" if finished else "NO",
        f"{back:.1f} s",
        f"{stats.rejected:,}",
    ]


def cell_job(redis_url: str, store: str, kill: bool, tmp: Path) -> list[str]:
    count, concurrency = 3000, 16
    os.environ["RATE_LIMITED_STORE_SECRET"] = "benchmark-secret"
    url = (
        f"{redis_url}?prefix=b-{uuid.uuid4().hex[:6]}"
        if store == "Redis"
        else f"sqlite:///{tmp / f'job-{uuid.uuid4().hex[:6]}.db'}"
    )
    with provider(rpm=600_000, tpm=100_000_000) as mp:
        procs = start_workers(
            mp.base_url, count, workers=4, store=url, rpm=600_000, tpm=100_000_000,
            max_tokens=50, split=False,
            extra=["--claim-ttl=5", f"--max-concurrent={concurrency}"],
        )  # fmt: skip
        if kill:
            while mp.stats().admitted < count // 3:
                time.sleep(0.02)
            procs[0].send_signal(signal.SIGKILL)
            procs.pop(0).communicate()
        done = reports(procs)
        stats = mp.stats()
    exact = all(r["texts"] == done[0]["texts"] for r in done) and None not in done[0]["texts"]
    return [
        store,
        "one killed mid-run" if kill else "none",
        f"{count:,}",
        f"{stats.requests:,}",
        f"<= {count + concurrency:,}" if kill else f"{count:,}",
        "yes" if exact else "NO",
    ]


#: Overhead runs: alternated in-process / Redis, each of ``OVERHEAD_CALLS`` calls.
OVERHEAD_RUNS, OVERHEAD_CALLS = 5, 4000
#: The Runner's default concurrency, at which the overhead is measured.
OVERHEAD_CONCURRENCY = 64


def cell_overhead(
    redis_url: str, calls: int = OVERHEAD_CALLS
) -> tuple[list[list[str]], list[float]]:
    """Per call: (wall time of N calls with the Redis ledger - with the in-process ledger)
    / N, the two run alternately ``OVERHEAD_RUNS`` times; best and median of the runs'
    differences. Three workloads: every call the same demand; demands that differ per call
    (tokens 50-250 by the arguments); and the provider reporting on every call what it has
    left of both resources (the presets' path: ``report_remaining`` as they read the
    headers, each report reconciled with the shared meter). With Redis's ``commandstats``
    per call: script calls, the commands they ran, their server time. Returns the table's
    rows and each workload's median difference (seconds per call)."""
    import statistics

    import redis

    from rate_limited import Resource, Runner

    def resources(varying: bool) -> list[Resource]:
        def prompt(call: Any) -> int:
            return 50 + (call.args[0] * 37) % 200 if varying else 100

        return [
            Resource("requests", quota=1e9, time_window_seconds=60,
                     arguments_usage_extractor=lambda call: 1),
            Resource("tokens", quota=1e12, time_window_seconds=60, settle="reserved",
                     arguments_usage_extractor=prompt,
                     max_results_usage_estimator=lambda call: 200,
                     results_usage_extractor=lambda call, result: 150),
        ]  # fmt: skip

    async def noop(i: int) -> int:
        return i

    class Reporting:
        """A no-op that reports on every call as a preset reads the provider's headers
        (``rate_limited.apis._limits``): the remaining requests and tokens, per call."""

        def __init__(self) -> None:
            self.control: Any = None

        def attach_ledger(self, control: Any) -> None:
            self.control = control

        async def __call__(self, i: int) -> int:
            admission = self.control.admission()
            self.control.report_remaining("requests", 1e9 - i, admission=admission)
            self.control.report_remaining("tokens", 1e12 - 300 * i, admission=admission)
            return i

    admin = redis.Redis.from_url(redis_url)

    def timed(ledger: str | None, varying: bool, reports: bool) -> float:
        function = Reporting() if reports else noop
        runner = Runner(function, resources(varying), ledger=ledger, progress=False,
                        max_concurrent=OVERHEAD_CONCURRENCY)  # fmt: skip
        for i in range(calls):
            runner.schedule(i)
        if ledger is not None:
            admin.config_resetstat()
        began = time.perf_counter()
        runner.run()
        seconds = time.perf_counter() - began
        if ledger is not None:
            server.append(per_call(admin.info("commandstats")))
        runner.close()
        return seconds / calls

    def per_call(stats: dict[str, Any]) -> tuple[float, float, float]:
        """(script calls, commands they ran, server µs in them) per call of the run."""
        scripts = {"cmdstat_fcall", "cmdstat_evalsha"}
        ran = sum(s["calls"] for name, s in stats.items()
                  if name not in scripts and name.startswith("cmdstat_")
                  and not name.startswith(("cmdstat_config", "cmdstat_info")))  # fmt: skip
        made = sum(stats.get(name, {}).get("calls", 0) for name in scripts)
        usec = sum(stats.get(name, {}).get("usec", 0) for name in scripts)
        return made / calls, ran / calls, usec / calls

    def ping() -> float:  # the machine's floor: one bare round trip to the same server
        client = redis.Redis.from_url(redis_url)
        began = time.perf_counter()
        for _ in range(calls):
            client.ping()
        seconds = time.perf_counter() - began
        client.close()
        return seconds / calls

    workloads = [
        ("same demand every call", False, False),
        ("demand differs per call", True, False),
        ("provider reports on every call (presets' path)", False, True),
    ]
    rows, pings, medians = [], [], []
    for label, varying, reported in workloads:
        memory, shared = [], []
        server: list[tuple[float, float, float]] = []
        for _ in range(OVERHEAD_RUNS):  # alternating, so noise hits both alike
            memory.append(timed(None, varying, reported))
            shared.append(timed(f"{redis_url}?name=b-overhead-{uuid.uuid4().hex[:6]}",
                                varying, reported))  # fmt: skip
            pings.append(ping())
        extra = [r - m for m, r in zip(memory, shared, strict=True)]
        medians.append(statistics.median(extra))
        scripts, commands, usec = (statistics.median(s[i] for s in server) for i in range(3))
        rows.append([label, us(statistics.median(memory)), us(statistics.median(shared)),
                     us(min(extra), sign=True), us(medians[-1], sign=True),
                     f"{scripts:.2f} / {commands:.1f} / {usec:.0f} µs"])  # fmt: skip
    rows.append(["(for scale: one Redis PING round trip, redis-py)", "-", us(min(pings)),
                 "-", f"median {us(statistics.median(pings))}", "-"])  # fmt: skip
    admin.close()
    return rows, medians


def us(seconds: float, *, sign: bool = False) -> str:
    """Seconds in microseconds, e.g. ``122 µs`` (``+122 µs`` with ``sign``)."""
    return f"{seconds * 1e6:{'+' if sign else ''},.0f} µs"


#: The Redis ledger's target: less than this per call on loopback, more than in-process.
OVERHEAD_TARGET = 300e-6


def overhead_verdict(runner_path: Sequence[float], presets_path: float) -> str:
    """The paragraph under the overhead table: the target, met or not, on each path, from
    the median differences (seconds per call) of the Runner's workloads and the presets'."""
    runner_met = all(x < OVERHEAD_TARGET for x in runner_path)
    presets_met = presets_path < OVERHEAD_TARGET
    verdict = {
        (True, True): "met on both paths",
        (True, False): "met on the Runner's path, not on the presets' path",
        (False, True): "met on the presets' path, not on the Runner's path",
        (False, False): "not met",
    }[runner_met, presets_met]
    runner = " / ".join(f"{x * 1e6:+,.0f}" for x in runner_path)
    return (
        f"Target (< {OVERHEAD_TARGET * 1e6:.0f} µs per call on loopback): **{verdict}**: "
        f"{runner} µs median on the Runner's path, {us(presets_path, sign=True)} on the "
        "presets' path (a provider reporting its remaining requests and tokens on every "
        "call, each report reconciled with the shared meter, as the `ChatCompletions` "
        "preset does)."
    )


#: Calls one Dask worker process can have in flight: 2 threads, a Runner each, 16 calls.
DASK_IN_FLIGHT = 2 * 16


def cell_dask(redis_url: str, kill: bool, rows: int = 10_000) -> list[str]:
    """``rate_limited.dask.apply`` over ``rows`` rows; ``kill``: one of the 2 worker
    processes is SIGKILLed once a third of the rows were sent. Every request the provider
    received beyond the rows is accounted for: a row sent again (the request log's body
    hashes), by a retry (``attempts``) or by a partition Dask ran again."""
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster

    from rate_limited.dask import apply
    from tests.dask_jobs import answers_row, make_runner, reply_with_row_id, row_to_kwargs

    os.environ["PYTHONPATH"] = str(ROOT)
    os.environ["RATE_LIMITED_STORE_SECRET"] = "benchmark-secret"
    name = uuid.uuid4().hex[:6]
    frame = pd.DataFrame(
        {"id": range(rows), "text": [f"word {i} " * (i % 7 + 1) for i in range(rows)],
         "max_tokens": 40}
    )  # fmt: skip
    rpm, tpm, partitions = 6_000, 10_000_000, 8
    with (
        provider(rpm=rpm, tpm=tpm, reply=reply_with_row_id) as mp,
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        make = functools.partial(make_runner, mp.base_url, f"{redis_url}?name=b-dask-{name}",
                                 f"{redis_url}?prefix=b-dask-{name}", rpm, tpm)  # fmt: skip
        began = time.monotonic()
        future = client.compute(
            apply(dd.from_pandas(frame, npartitions=partitions), make, row_to_kwargs)
        )
        if kill:
            while mp.stats().admitted < rows // 3:
                time.sleep(0.02)
            os.kill(next(iter(client.run(os.getpid).values())), signal.SIGKILL)
        out = future.result()
        seconds = time.monotonic() - began
        stats = mp.stats()
        distinct = len({entry.body_hash for entry in mp.request_log})
        # Partition tasks Dask started more than once (a worker lost, a result lost).
        started = [k for k, _, finish, *_ in cluster.scheduler.transition_log
                   if finish == "processing" and str(k).startswith("('_run_partition")]  # fmt: skip
    exact = out.index.equals(frame.index) and all(
        answers_row(r, i) for i, r in zip(out.index, out["result"], strict=True)
    )
    return [
        "one worker killed mid-run" if kill else "none",
        f"{(out['status'] == 'succeeded').sum():,}/{rows:,}",
        "yes" if exact else "NO",
        f"{stats.requests:,}",
        f"<= {rows + DASK_IN_FLIGHT:,}" if kill else f"{rows:,}",
        f"{stats.requests - distinct:,}",
        f"{int(out['attempts'].sum()) - rows:,}",
        f"{len(started) - partitions:,}",
        f"{int(out['from_store'].sum()):,}",
        f"{stats.rejected:,}",
        f"{seconds:.0f} s",
    ]


def dask_verdict(rows: Sequence[Sequence[str]]) -> str:
    """The sentence under the Dask table, from its rows (``cell_dask``'s): whether the run
    without a kill sent every row once."""
    for row in rows:
        if row[0] == "none":
            twice, retries = int(row[5].replace(",", "")), int(row[6].replace(",", ""))
            if twice == 0:
                return "Without a kill every row is sent once."
            return (f"Without a kill, {twice:,} requests were sent for rows the provider had "
                    f"received already ({retries:,} retries): none was expected.")  # fmt: skip
    return ""


def part_quota(redis_url: str) -> str:
    rows = [cell_quota(redis_url, "redis"), cell_quota(redis_url, "in-process")]
    return markdown_table(
        ["ledger", "calls done", "requests", "429s", "steady-state TPM used"], rows
    )


def part_kill(redis_url: str) -> str:
    return markdown_table(
        ["ledger", "the other 3 finish", "reservations back after", "429s"],
        [cell_kill(redis_url)],
    )


def part_job(redis_url: str) -> str:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    rows = [cell_job(redis_url, s, k, tmp) for s in ("Redis", "SQLite") for k in (False, True)]
    return markdown_table(
        ["store", "kill", "calls", "requests sent", "bound", "same results in every worker"],
        rows,
    )


def part_overhead(redis_url: str) -> str:
    load = os.getloadavg()[0]  # before the runs
    rows, medians = cell_overhead(redis_url)
    header = ["workload", "in-process (median)", "Redis (median)", "Redis - in-process, best",
              "median", "per call: script calls / commands in them / server time"]  # fmt: skip
    return "\n\n".join(
        [
            f"Per call: (wall time of {OVERHEAD_CALLS:,} calls with the Redis ledger - with the "
            f"in-process ledger) / {OVERHEAD_CALLS:,}, at the default "
            f"max_concurrent={OVERHEAD_CONCURRENCY}; the two run alternately {OVERHEAD_RUNS} "
            "times, best and median of the runs' differences. Redis on loopback; load average "
            f"at the start of the run: {load:.1f} ({machine_info()['nproc']} CPUs). The last "
            "column: Redis's `commandstats` over each Redis run (median of the runs), per call: "
            "the ledger's script calls (FCALL), the Redis commands its Lua ran in them, and the "
            "server time in them.",
            markdown_table(header, rows),
            overhead_verdict(medians[:2], medians[2]),
        ]
    )


def part_dask(redis_url: str) -> str:
    rows = [cell_dask(redis_url, kill) for kill in (False, True)]
    header = ["kill", "succeeded", "exact and aligned", "requests", "bound", "sent twice",
              "retries", "partitions re-run", "from store", "429s", "time"]  # fmt: skip
    return "\n\n".join(
        [
            "10,000 rows, 8 partitions, 2 worker processes of 2 threads (a Runner per "
            'partition, max_concurrent=16), sharing the Redis ledger and store. "sent '
            'twice": requests for a row the provider had received already (its request '
            'log); "retries": attempts after a call\'s first; "partitions re-run": '
            'partition tasks Dask started again; "from store": rows a re-run partition '
            "took from the store instead of sending them. A killed worker's partitions "
            "(those it had finished too) run again on the other: the outcomes stored are "
            "taken, and only the calls it had in flight, paid and their answers lost with "
            f"it, are sent again: at most {DASK_IN_FLIGHT} (its 2 Runners' max_concurrent).",
            markdown_table(header, rows),
            dask_verdict(rows),
        ]
    )


#: The parts of the benchmark (``--only``): each one's subsection of "## Shared quota" in
#: RESULTS.md and the function that measures it and writes its text.
PARTS: dict[str, tuple[str, Callable[[str], str]]] = {
    "quota": ("### One key, 4 processes (TPM-bound, 60,000 TPM)", part_quota),
    "kill": ("### SIGKILL one of the 4 mid-run", part_kill),
    "job": ("### One job, 4 processes: the same 3,000 calls on one store", part_job),
    "overhead": (
        "### Overhead per call (no-op function, requests + tokens resources)",
        part_overhead,
    ),
    "dask": ("### Dask LocalCluster (RPM-bound, 6,000 RPM)", part_dask),
}
SECTION = "Shared quota"


def parts_chosen(only: str) -> list[str]:
    """The parts ``--only`` names (comma-separated), in the section's order."""
    names = {name.strip() for name in only.split(",") if name.strip()}
    unknown = sorted(names - set(PARTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {unknown or [only]}; choose from {','.join(PARTS)}"
        )
    return [name for name in PARTS if name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write",
        action="store_true",
        help="update the parts run in the 'Shared quota' section of benchmarks/RESULTS.md",
    )
    parser.add_argument(
        "--only",
        type=parts_chosen,
        default=list(PARTS),
        help=f"the parts to run, comma-separated (default: {','.join(PARTS)})",
    )
    parser.add_argument(
        "--redis", default=os.environ.get("RATE_LIMITED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    arguments = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write"]
    body = section_body({name: PARTS[name][1](args.redis) for name in args.only}, arguments)
    print(body)
    if args.write:
        replace_section(SECTION, body, lead=len(args.only) == len(PARTS))
    return 0


def section_body(texts: dict[str, str], arguments: Sequence[str]) -> str:
    """What ``--write`` writes: a full run's preamble (date, machine, command) and every
    part's subsection; a run of some parts (``--only``) only their subsections, each with
    that preamble of its own (the section's preamble says how the others were measured)."""
    head = preamble(__file__, arguments)
    full = len(texts) == len(PARTS)
    parts = list(head) if full else []
    for name, text in texts.items():
        parts += [PARTS[name][0], "", *([] if full else head), text.strip("\n"), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
