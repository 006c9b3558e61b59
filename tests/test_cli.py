"""The ``rate-limited`` command: the demo end to end in a subprocess (with Ctrl-C and a
resume), the MockProvider server, the bench launcher and the usage errors."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rate_limited import cli
from rate_limited.cli import demo as cli_demo


def run_demo(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rate_limited", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags", [pytest.param((), id="sync"), pytest.param(("--async",), id="async")]
)
def test_demo_runs_end_to_end_and_prints_a_summary(tmp_path: Path, flags: tuple[str, ...]) -> None:
    done = run_demo(tmp_path, "--requests", "200", *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "Done after" in out
    assert "200 of 200 requests succeeded." in out
    assert "store:        200 of the 200 are saved in rate_limited_demo.db" in out
    assert re.search(r"provider saw: 200 requests, 0 answered 429, [\d,]+ tokens", out)
    assert "200,000 tokens and 3,000 requests per minute" in out
    # 200 requests fit in the buckets the provider starts with: the average is the burst,
    # above the limit, and the summary says why, unless a stalled machine stretched the run.
    rates = re.search(r"rate: +([\d,]+) tokens/min and ([\d,]+) requests/min", out)
    assert rates is not None, out
    tokens, requests = (float(rate.replace(",", "")) for rate in rates.groups())
    above = tokens > 200_000 or requests > 3_000
    assert ("That initial burst is why the average is above the limit" in out) is above
    assert re.search(r"utilization: +[\d.]+% of the tokens", out)
    assert "200/200" in done.stderr  # the progress bar
    again = run_demo(tmp_path, "--requests", "200", *flags)
    assert "(200 loaded from the store)" in again.stdout
    assert "provider saw: 0 requests" in again.stdout
    fresh = run_demo(tmp_path, "--requests", "200", "--fresh", *flags)
    assert "loaded from the store" not in fresh.stdout


def wait_for_progress(process: subprocess.Popen[str], finished: int) -> None:
    """Read the demo's progress bar (stderr) until it shows ``finished`` calls done."""
    assert process.stderr is not None
    seen = ""
    while True:
        char = process.stderr.read(1)
        assert char, f"the demo ended before {finished} calls finished: {seen[-2000:]}"
        seen = seen[-200:] + char
        done = re.findall(r"(\d+)/\d+ \[", seen)
        if done and int(done[-1]) >= finished:
            return


def interrupt_demo(cwd: Path, *args: str, after: int) -> tuple[int, str]:
    """Start ``rate-limited demo *args``, Ctrl-C it once ``after`` calls have finished; its
    exit code and output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rate_limited", "demo", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "chat completions" in process.stdout.readline() + process.stdout.readline()
        wait_for_progress(process, after)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out


@pytest.mark.slow
def test_demo_interrupted_then_resumed(tmp_path: Path) -> None:
    """Ctrl-C stops the run with a partial summary; the next demo takes up the rest."""
    flags = ["--requests", "120", "--tpm", "20000", "--store", "my runs.db"]
    # 20,000 TPM: the first ~100 at once, then about 2 a second. The rerun is charged with
    # what the first one used (its store's records), so it goes on at about 2 a second too.
    returncode, out = interrupt_demo(tmp_path, *flags, after=20)
    assert returncode == 130
    assert "Interrupted after" in out
    # The hint repeats the flags that matter (quoted for the shell), never --fresh.
    hint = re.search(r"Run `(rate-limited demo [^`]*)` to resume", out)
    assert hint is not None, out
    assert hint.group(1) == "rate-limited demo --requests 120 --tpm 20000 --store 'my runs.db'"
    finished = int(re.search(r"Interrupted after [\d.]+ s: (\d+) of 120", out).group(1))  # type: ignore[union-attr]
    assert 0 < finished < 120
    # The counts are the store's: calls already sent at the Ctrl-C were kept and counted.
    saved = int(re.search(r"store: +(\d+) of the 120 are saved in my runs.db", out).group(1))  # type: ignore[union-attr]
    assert saved == finished
    assert f"it sends only the {120 - saved} requests not saved" in out
    resumed = run_demo(tmp_path, *shlex.split(hint.group(1))[2:], timeout=240)
    loaded = int(re.search(r"\((\d+) loaded from the store\)", resumed.stdout).group(1))  # type: ignore[union-attr]
    assert loaded == saved
    assert f"provider saw: {120 - saved} requests" in resumed.stdout


def paid_requests(summary: str) -> int:
    """Requests the demo's MockProvider billed: those it saw, less those it answered 429."""
    found = re.search(r"provider saw: ([\d,]+) requests, ([\d,]+) answered 429", summary)
    assert found is not None, summary
    seen, rejected = (int(number.replace(",", "")) for number in found.groups())
    return seen - rejected


@pytest.mark.slow
def test_demo_async_interrupted_and_rerun_pays_for_each_request_once(tmp_path: Path) -> None:
    """Ctrl-C cancelled the coroutines in flight although the provider had billed them, and
    the rerun sent them again: 2,064 paid requests for 2,000 results. Now they finish (the
    Runner's close() waits for them), are stored, and the rerun does not send them."""
    requests = 1000
    # 100 done, dozens in flight
    returncode, first = interrupt_demo(tmp_path, "--async", "--requests", str(requests), after=100)
    assert returncode == 130 and "Interrupted after" in first
    second = run_demo(tmp_path, "--async", "--requests", str(requests))
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"{requests:,} of {requests:,} requests succeeded" in second.stdout
    assert 0 < paid_requests(first) < requests
    assert paid_requests(first) + paid_requests(second.stdout) == requests


def test_mock_provider_command_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "rate_limited", "mock-provider", "--port", "0", "--rpm", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", process.stdout.readline().strip())
        assert "Press Ctrl-C" in process.stderr.readline()  # printed last before it waits
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "served 0 requests" in err


def test_bench_runs_a_script_of_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "hello.py").write_text(
        "import sys, pathlib; pathlib.Path('ran.txt').write_text(' '.join(sys.argv[1:]))\n"
    )
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "hello", "--fast"]) == 0
    assert (tmp_path / "ran.txt").read_text() == "--fast"
    assert cli.main(["bench", "nowhere"]) == 2
    assert "benchmarks/nowhere.py not found" in capsys.readouterr().err


def test_bench_help_says_what_it_runs_and_touches(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rate-limited bench [NAME] [OPTIONS]")
    assert "utilization.py" not in out.splitlines()[0]
    flat = " ".join(out.split())
    assert "installs rate_limited 0.4.0 from PyPI into benchmarks/.venv04" in flat
    assert "replaces its own section of benchmarks/RESULTS.md" in flat
    assert re.search(r"^  utilization  \* How close", out, re.M)  # it installs 0.4
    assert re.search(r"^  stores         What a store costs", out, re.M)  # it does not
    assert cli.main(["bench", "utilization", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rate-limited bench utilization [OPTIONS]")
    assert "Options of benchmarks/utilization.py:" in out and "--write" in out


def test_bench_help_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.bench, "_bench_dirs", lambda: [tmp_path / "benchmarks"])
    assert cli.main(["bench", "-h"]) == 0
    assert "run this from a git clone" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from rate_limited import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rate_limited {__version__}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--help"], ["demo", "mock-provider", "bench", ".venv04"], id="main"),
        pytest.param(
            ["demo", "--help"], ["127.0.0.1", "rate_limited_demo.db.key", "resumes"], id="demo"
        ),
        pytest.param(
            ["mock-provider", "--help"],
            ["usage: rate-limited mock-provider", "statistics", "on stderr"],
            id="mock-provider",
        ),
    ],
)
def test_help_says_what_each_command_does_and_touches(
    argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in expected:
        assert text in out


def test_the_resume_command_repeats_the_options_that_matter() -> None:
    parser = argparse.ArgumentParser()
    cli_demo.add_arguments(parser)
    args = parser.parse_args(["--async", "--fresh", "--tpm", "1e5", "--rpm", "10.5"])
    assert cli_demo.resume_command(args) == (
        "rate-limited demo --rpm 10.5 --tpm 100000 --async --store rate_limited_demo.db"
    )


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out
    assert cli.main(["demo", "--requests", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--bogus"])


def test_the_console_script_is_declared() -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert 'rate-limited = "rate_limited.cli:main"' in pyproject
    assert os.path.exists(Path(cli.__file__).parent.with_name("__main__.py"))
