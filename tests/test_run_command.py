"""``rate-limited run``: a JSONL file of requests online or by batch, checked line by line
before anything is sent, resumable after Ctrl-C with no request sent twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rate_limited import cli
from rate_limited.testing import BatchSettings, MockProvider
from rate_limited.testing._wire import body_hash

ROOT = Path(__file__).resolve().parents[1]


def body(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": f"question {i}"}],
    }


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockProvider]:
    settings = BatchSettings(validating_seconds=0, seconds_per_request=0, finalizing_seconds=0)
    with MockProvider(output_tokens=6, batch=settings) as mp:
        monkeypatch.setenv("OPENAI_BASE_URL", mp.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield mp


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch", [pytest.param(False, id="online"), pytest.param(True, id="batch")]
)
def test_lines_of_both_forms_complete_in_input_order(
    provider: MockProvider, tmp_path: Path, batch: bool
) -> None:
    """400 lines, bodies and Batch-API request lines, come back in input order."""
    rows: list[Any] = [{**body(i), "metadata": {"row": i}} for i in range(200)]
    rows += [
        {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}
        for i in range(200, 400)
    ]
    source = write(tmp_path / "requests.jsonl", rows)
    output = tmp_path / "results.jsonl"
    argv = ["run", str(source), "-o", str(output), "--rpm", "100000", "--tpm", "10000000"]
    assert cli.main([*argv, "--no-progress", *(["--batch"] if batch else [])]) == 0
    results = read(output)
    assert [r["custom_id"] for r in results] == [f"line-{i + 1}" for i in range(200)] + [
        f"id-{i}" for i in range(200, 400)
    ]
    assert results[5]["metadata"] == {"row": 5}
    contents = [r["response"]["body"]["choices"][0]["message"]["content"] for r in results]
    assert all(text.startswith(f"question {i}") for i, text in enumerate(contents))
    if batch:
        assert provider.stats().admitted == 0
        assert provider.batch_stats().requests_submitted == 400
    else:
        assert provider.stats().admitted == 400
    assert (tmp_path / "results.jsonl.db").exists()  # the store, next to the output


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        pytest.param([body(0), "{not json"], "line 2: not valid JSON", id="json"),
        pytest.param([body(0), [1, 2]], "line 2: expected a JSON object", id="object"),
        pytest.param([{"messages": []}], 'line 1: the request names no "model"', id="model"),
        pytest.param([{"model": "m"}], 'needs "messages"', id="messages"),
        pytest.param(
            [{"custom_id": "a", "body": body(0)}, {"custom_id": "a", "body": body(1)}],
            "line 2: custom_id 'a' is already on line 1",
            id="duplicate",
        ),
        pytest.param(
            [{"custom_id": "a", "url": "/v1/completions", "body": body(0)}],
            "line 1: url '/v1/completions' is not one of",
            id="url",
        ),
        pytest.param(
            [
                body(0),
                {"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "e", "input": "x"}},
            ],
            "one endpoint per file",
            id="endpoints",
        ),
        pytest.param([{**body(0), "stream": True}], '"stream" is not supported', id="stream"),
    ],
)
def test_a_bad_line_is_named_before_anything_is_sent(
    provider: MockProvider,
    tmp_path: Path,
    rows: list[Any],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write(tmp_path / "requests.jsonl", rows)
    assert cli.main(["run", str(source), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert provider.stats().requests == 0


def test_estimate_sends_nothing(
    provider: MockProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "requests.jsonl", [body(i) for i in range(10)])
    assert cli.main(["run", str(source), "--estimate", "--batch"]) == 0
    out = capsys.readouterr().out
    assert "gpt-4o-mini: 10 requests" in out
    assert "up to 80 output tokens" in out
    assert "(Batch API)" in out
    assert provider.stats().requests == 0


@pytest.mark.slow
def test_ctrl_c_then_rerun_sends_no_request_twice(tmp_path: Path) -> None:
    """A subprocess is interrupted (SIGINT) once the provider has admitted 200 of its
    1,000 requests; the same command again finishes the file. The provider's log of
    request bodies shows each request admitted exactly once."""
    source = write(tmp_path / "requests.jsonl", [body(i) for i in range(1000)])
    output = tmp_path / "results.jsonl"
    with MockProvider(output_tokens=6, latency=0.05, rpm=12_000) as mp:
        command = [sys.executable, "-m", "rate_limited", "run", str(source), "-o", str(output)]
        command += ["--rpm", "12000", "--tpm", "10000000", "--no-progress", "--claim-ttl", "2"]
        env = {"OPENAI_BASE_URL": mp.base_url, "OPENAI_API_KEY": "sk-test", "PATH": ""}
        with subprocess.Popen(
            command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        ) as first:
            deadline = time.monotonic() + 60
            while mp.stats().admitted < 200 and first.poll() is None:
                assert time.monotonic() < deadline, "the run never got going"
                threading.Event().wait(0.01)
            first.send_signal(signal.SIGINT)
            _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        assert "Interrupted" in err
        partial = read(output)
        done = sum(1 for r in partial if r["response"] is not None)
        assert 0 < done < 1000
        second = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr[-2000:]
        admitted = Counter(e.body_hash for e in mp.request_log if e.status == 200)
    assert len(admitted) == 1000
    assert set(admitted.values()) == {1}  # 0 duplicate requests
    assert all(r["response"] is not None for r in read(output))


@pytest.mark.slow
def test_kill_9_leaves_the_finished_results_on_disk_and_a_rerun_completes(
    tmp_path: Path,
) -> None:
    """A subprocess is killed (SIGKILL: no cleanup at all) once its sidecar holds 100
    results; those results are on disk, and the same command again finishes the file in
    input order without sending any of them again (counted at the provider). Requests in
    flight when the process died were answered to no one: only those may be sent twice,
    at most ``--max-concurrent`` of them. The rerun takes them over once the killed run's
    claims on them expire: ``--claim-ttl 2`` seconds, not the default minute."""
    source = write(tmp_path / "requests.jsonl", [body(i) for i in range(500)])
    output = tmp_path / "results.jsonl"
    sidecar = tmp_path / "results.jsonl.partial"
    with MockProvider(output_tokens=6, latency=0.05, rpm=12_000) as mp:
        command = [sys.executable, "-m", "rate_limited", "run", str(source), "-o", str(output)]
        command += ["--rpm", "12000", "--tpm", "10000000", "--no-progress", "--claim-ttl", "2"]
        env = {"OPENAI_BASE_URL": mp.base_url, "OPENAI_API_KEY": "sk-test", "PATH": ""}
        with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL) as first:
            deadline = time.monotonic() + 120
            while first.poll() is None:
                lines = sidecar.read_text().count("\n") if sidecar.exists() else 0
                if lines >= 100:
                    break
                assert time.monotonic() < deadline, "no results reached the sidecar"
                threading.Event().wait(0.01)
            first.kill()
            first.wait(timeout=60)
        assert first.returncode == -signal.SIGKILL
        assert not output.exists()
        kept = {r["custom_id"]: r for r in read(sidecar) if r["response"] is not None}
        assert len(kept) >= 100
        second = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr[-2000:]
        admitted = Counter(e.body_hash for e in mp.request_log if e.status == 200)
    assert len(admitted) == 500
    assert sum(admitted.values()) - 500 <= 64  # only what was in flight at the kill
    for custom_id in kept:  # nothing on disk was sent again
        assert admitted[body_hash(body(int(custom_id.split("-")[1]) - 1))] == 1
    final = read(output)
    assert [r["custom_id"] for r in final] == [f"line-{i}" for i in range(1, 501)]
    for row in final:
        if row["custom_id"] in kept:
            kept_row = {k: v for k, v in kept[row["custom_id"]].items() if k != "request"}
            assert row == kept_row
    assert not sidecar.exists()  # complete: the sidecar is gone


def test_the_sidecar_answers_only_the_lines_as_they_are_now(tmp_path: Path) -> None:
    """A row of the sidecar counts for its line only if the request is the same: an
    edited line, a failure and a line torn by a crash are sent again."""
    from rate_limited.cli.run import Sidecar, read_requests

    source = write(tmp_path / "requests.jsonl", [body(i) for i in range(3)])
    lines = read_requests(source, "/v1/chat/completions", None)
    ok = {"response": {"status_code": 200, "body": {}}, "error": None}
    failed = {"response": None, "error": {"type": "APIError", "message": "x"}}
    rows = [
        {"custom_id": "line-1", **ok, "request": lines[0].request_hash},
        {"custom_id": "line-2", **ok, "request": "an edited request"},
        {"custom_id": "line-3", **failed, "request": lines[2].request_hash},
    ]
    path = tmp_path / "out.jsonl.partial"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"custom_id": "line-')
    assert list(Sidecar(path).answered(lines)) == ["line-1"]
