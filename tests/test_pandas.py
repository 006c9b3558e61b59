"""DataFrames in and out: ``runner.apply(df, row_to_kwargs)`` and ``RunResult.to_pandas()``."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pd = pytest.importorskip("pandas")
openai = pytest.importorskip("openai")

import rate_limited.pandas  # noqa: E402,F401  (registers df.rate_limited)
from rate_limited import (  # noqa: E402
    ConfigurationError,
    QuotaExceededError,
    Resource,
    Runner,
    RunnerClosedError,
    Status,
)
from rate_limited.apis.openai import ChatCompletions  # noqa: E402
from rate_limited.testing import MockProvider  # noqa: E402


async def shout(text: str, times: int = 1) -> str:
    await asyncio.sleep(0)
    return text.upper() * times


def frame() -> Any:
    return pd.DataFrame({"text": ["a", "b", "c"], "times": [1, 2, 3]}, index=["x", "y", "z"])


def test_apply_returns_a_frame_aligned_to_the_index() -> None:
    runner = Runner(shout, [], progress=False)
    out = runner.apply(frame(), lambda row: {"text": row["text"], "times": int(row["times"])})
    assert list(out.index) == ["x", "y", "z"]
    assert out["result"].tolist() == ["A", "BB", "CCC"]
    assert out["status"].tolist() == ["succeeded"] * 3
    assert out["attempts"].tolist() == [1, 1, 1]
    assert set(out.columns) >= {"result", "status", "error", "attempts", "latency"}


def test_the_accessor_does_the_same() -> None:
    runner = Runner(shout, [], progress=False)
    out = frame().rate_limited.apply(runner, lambda row: {"text": row.text})
    assert out["result"].tolist() == ["A", "B", "C"]


def test_usage_and_errors_become_columns() -> None:
    async def picky(text: str) -> str:
        if text == "b":
            raise PermissionError("no b")
        return text

    requests = Resource("requests", 100, 60, arguments_usage_extractor=lambda call: 1)
    runner = Runner(picky, [requests], max_retries=1, progress=False, backoff=lambda n, e: 0)
    out = runner.apply(frame(), lambda row: {"text": row["text"]})
    assert out.loc["y", "status"] == "failed"
    assert out.loc["y", "error"] == "PermissionError: no b"
    assert out.loc["y", "attempts"] == 2
    assert out["usage_requests"].tolist() == [1.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("frame_arg", "row_to_kwargs", "match"),
    [
        pytest.param([1, 2], lambda row: {}, "takes a pandas DataFrame", id="not-a-frame"),
        pytest.param(None, "text", "row_to_kwargs must be a function", id="not-callable"),
        pytest.param(None, lambda row: [row["text"]], "must return a dict", id="not-a-dict"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    frame_arg: Any, row_to_kwargs: Any, match: str
) -> None:
    runner = Runner(shout, [], progress=False)
    with pytest.raises(ConfigurationError, match=match):
        runner.apply(frame() if frame_arg is None else frame_arg, row_to_kwargs)
    assert runner.scheduled_calls == []


def test_apply_refuses_to_mix_with_other_scheduled_calls() -> None:
    runner = Runner(shout, [], progress=False)
    runner.schedule("other")
    with pytest.raises(ConfigurationError, match="holds 1 scheduled calls"):
        runner.apply(frame(), lambda row: {"text": row["text"]})


_clients: list[Any] = []
_runners: list[Runner] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close the Runners, then the clients, a test made (a pool of keep-alive connections
    otherwise leaks into a reference cycle with its Runner, and a later collection reports
    it; a Runner's threads are done with the client once it is closed)."""
    yield
    while _runners:
        _runners.pop().close()
    while _clients:
        _clients.pop().close()


def chat_runner(provider: MockProvider, **kwargs: Any) -> Runner:
    client = openai.OpenAI(base_url=provider.base_url, api_key="test", max_retries=0)
    _clients.append(client)

    def complete(text: str) -> str:
        response = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=8
        )
        return response.choices[0].message.content or ""

    runner = Runner(complete, [], max_concurrent=16, progress=False, **kwargs)
    _runners.append(runner)
    return runner


def enrich(runner: Runner, texts: Any) -> Any:
    return runner.apply(texts, lambda row: {"text": row["text"]})


def test_a_thousand_rows_through_the_mock_provider_and_a_rerun_with_a_store(
    tmp_path: Path,
) -> None:
    texts = pd.DataFrame({"text": [f"row {i} says hello" for i in range(1000)]})
    store = str(tmp_path / "runs.db")
    with MockProvider(latency=0.001) as provider:
        first = enrich(chat_runner(provider, store=store), texts)
        assert (first["status"] == "succeeded").all()
        assert first["result"].str.startswith("row").all()
        sent = provider.stats().requests
        assert sent == 1000
        # the same cell in a fresh runner (or a restarted kernel): nothing is sent
        again = enrich(chat_runner(provider, store=store), texts)
        assert provider.stats().requests == sent
        assert again["from_store"].all()
        assert again["result"].tolist() == first["result"].tolist()


def interrupt_after(provider: MockProvider, requests: int) -> None:
    """Ctrl-C this process once the provider has answered ``requests`` requests."""
    deadline = time.monotonic() + 60
    while provider.stats().requests < requests and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGINT)


def test_rerunning_after_an_interrupt_sends_only_the_unfinished_rows() -> None:
    texts = pd.DataFrame({"text": [f"row {i}" for i in range(300)]})
    with MockProvider(latency=0.02) as provider:
        runner = chat_runner(provider)
        threading.Thread(target=interrupt_after, args=(provider, 100), daemon=True).start()
        partial = enrich(runner, texts)  # Ctrl-C during apply: a partial frame, no raise
        done = int((partial["status"] == "succeeded").sum())
        assert 0 < done < 300
        statuses = partial["status"].astype(str)
        assert set(statuses) <= {Status.SUCCEEDED.value, Status.RUNNING.value, "pending"}
        rest = enrich(runner, texts)
        assert (rest["status"] == "succeeded").all()
        assert rest["result"].str.startswith("row").all()
        # The rerun sent only what had not been sent: the rows in flight at the interrupt
        # were sync calls still in their threads, whose results were kept. The server's
        # own log shows each of the 300 prompts exactly once.
        bodies = [entry.body_hash for entry in provider.request_log]
        assert len(bodies) == 300
        assert len(set(bodies)) == 300


# -- a row that cannot run --------------------------------------------------------------------
def words(call: Any) -> float:
    return float(len(call.get_argument("text").split()))


def words_runner() -> Runner:
    tokens = Resource("tokens", 10, 60, arguments_usage_extractor=words)
    return Runner(shout, [tokens], progress=False)


def texts_frame(*texts: str) -> Any:
    return pd.DataFrame({"text": list(texts)}, index=[f"r{i}" for i in range(len(texts))])


def test_a_row_too_large_is_named_and_the_runner_takes_the_frame_without_it() -> None:
    runner = words_runner()
    df = texts_frame("a b", "too " * 11, "c")
    expected = r"row 'r1' needs 11 of 'tokens' \(quota 10\)"
    with pytest.raises(QuotaExceededError, match=expected) as info:
        runner.apply(df, lambda row: {"text": row["text"]})
    error = info.value
    assert error.rows == ["r1"]
    assert (error.resource, error.needed, error.quota) == ("tokens", 11.0, 10.0)
    assert "Nothing was scheduled" in str(error)
    assert runner.scheduled_calls == []  # nothing held back for the next apply()

    out = runner.apply(df.drop(index=error.rows), lambda row: {"text": row["text"]})
    assert list(out.index) == ["r0", "r2"]  # the frame's own labels, not 0, 1
    assert out["result"].tolist() == ["A B", "C"]
    assert out["status"].tolist() == ["succeeded"] * 2


def test_every_row_too_large_is_named_at_once() -> None:
    runner = words_runner()
    texts = ["ok"] * 3 + ["big " * 20] * 7
    with pytest.raises(QuotaExceededError) as info:
        runner.apply(texts_frame(*texts), lambda row: {"text": row["text"]})
    assert info.value.rows == [f"r{i}" for i in range(3, 10)]
    message = str(info.value)
    assert message.startswith("7 rows of the 10 need more than a whole quota")
    assert "row 'r7' needs 20" in message and "row 'r8'" not in message
    assert "and 2 more" in message
    assert runner.scheduled_calls == []


def test_an_extractor_failing_on_a_row_names_the_row() -> None:
    runner = words_runner()
    df = pd.DataFrame({"text": ["a", None, "b"]}, index=["x", "y", "z"])
    with pytest.raises(ConfigurationError, match=r"^Row 'y' of the DataFrame: .*AttributeError"):
        runner.apply(df, lambda row: {"text": row["text"]})
    assert runner.scheduled_calls == []
    assert runner.apply(df.dropna(), lambda row: {"text": row["text"]})["result"].tolist() == [
        "A",
        "B",
    ]


def test_a_row_larger_than_a_preset_limit_sends_nothing() -> None:
    with MockProvider(tpm=1000) as provider:
        client = openai.OpenAI(base_url=provider.base_url, api_key="test")
        _clients.append(client)
        chat = ChatCompletions(client, tokens_per_minute=1000)
        runner = chat.runner(progress=False)
        df = pd.DataFrame({"max_tokens": [10, 5000, 20]}, index=pd.Index([7, 8, 9], name="id"))

        def request(row: Any) -> dict[str, Any]:
            return {
                "model": "gpt-4o-mini",
                "max_tokens": int(row["max_tokens"]),
                "messages": [{"role": "user", "content": "hi"}],
            }

        with pytest.raises(QuotaExceededError, match="row 8 needs") as info:
            runner.apply(df, request)
        assert info.value.rows == [8] and info.value.resource == "tokens_per_minute"
        assert provider.stats().requests == 0
        out = runner.apply(df.drop(index=info.value.rows), request)
        assert list(out.index) == [7, 9] and out["status"].eq("succeeded").all()
        assert provider.stats().requests == 2


def test_the_run_result_of_apply_is_the_runners_last_result() -> None:
    requests = Resource("requests", 100, 60, arguments_usage_extractor=lambda call: 1)
    runner = Runner(shout, [requests], progress=False)
    assert runner.last_result is None
    out = runner.apply(frame(), lambda row: {"text": row["text"]})
    result = runner.last_result
    assert result is not None and result.counts() == {"succeeded": 3}
    assert result.results == out["result"].tolist()
    table = result.to_pandas()
    assert table["result"].tolist() == ["A", "B", "C"]
    # The same cell again sends nothing and gives the same result back.
    runner.run()  # another (empty) run in between
    again = runner.apply(frame(), lambda row: {"text": row["text"]})
    assert runner.last_result is result
    assert again["result"].tolist() == out["result"].tolist()


def test_apply_on_a_closed_runner_says_so() -> None:
    runner = Runner(shout, [], progress=False)
    runner.close()
    with pytest.raises(RunnerClosedError):
        runner.apply(frame(), lambda row: {"text": row["text"]})


def test_rerunning_a_finished_apply_cell_sends_nothing_and_nan_rows_resume() -> None:
    sent: list[str] = []

    def label(text: str, score: float) -> str:
        sent.append(text)
        return f"{text}:{'none' if math.isnan(score) else score}"

    df = pd.DataFrame({"text": ["a", "b", "c"], "score": [1.0, float("nan"), 3.0]})
    runner = Runner(label, [], progress=False)

    def row(r: object) -> dict[str, object]:
        return {"text": r["text"], "score": r["score"]}  # type: ignore[index]

    first = runner.apply(df, row)
    again = runner.apply(df, row)  # the same cell, rerun: NaN rows compare equal
    assert first["result"].tolist() == again["result"].tolist() == ["a:1.0", "b:none", "c:3.0"]
    assert sorted(sent) == ["a", "b", "c"]
