"""rate_limited.dask.apply on a real LocalCluster (worker processes) sharing the Redis ledger
and store, against the MockProvider: complete, exact results aligned to the input, 0 429s."""

from __future__ import annotations

import functools
import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from rate_limited import LedgerWarning, Status
from rate_limited.exceptions import ConfigurationError
from rate_limited.testing import MockProvider
from tests.dask_jobs import (
    answers_row,
    make_chat_runner,
    make_nothing,
    make_runner,
    make_text_runner,
    model_for_most_rows,
    reply_with_row_id,
    row_to_kwargs,
    thread_stacks,
    x_kwargs,
)
from tests.shared import ROOT, wait_for
from tests.stores.conftest import redis_url  # noqa: F401 - the session's redis-server

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

RPM, TPM = 6_000, 30_000
#: Seconds a test on a LocalCluster may take (pytest-timeout), setup and teardown
#: included. Most of it is not the job: on a 2-core machine under the suite's load (load
#: average 15-34) starting the cluster took up to 26 s, closing it 13 s (its nannies kill
#: the worker processes after 4 s, also after a plain Dask job), and the job up to 94 s,
#: of which ~18 s before its first request (each worker process imports openai: ~10 s
#: alone under that load). Unloaded: 1 s, 1.5 s and 16 s.
CLUSTER_TIMEOUT = 300
#: Seconds a job on the cluster may take before the test fails showing where every worker
#: is (``result_or_stacks``): twice the slowest seen, under ``CLUSTER_TIMEOUT`` with its
#: setup and teardown (pytest-timeout's dump would show only this process, waiting).
DEADLINE = 200.0


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    # the worker processes import tests.dask_jobs by name, and verify the shared store
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("RATE_LIMITED_STORE_SECRET", "dask-test-secret")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        yield cluster


def result_or_stacks(future: object, ledger: str | None = None) -> object:
    """The result of the Dask ``future``; if it takes over ``DEADLINE`` s, the test fails
    with every worker process's thread stacks and Runners (a hang's evidence is there, not
    here), and what the shared ``ledger`` holds."""
    timeouts = (TimeoutError, distributed.TimeoutError)
    try:
        return future.result(timeout=DEADLINE)  # type: ignore[attr-defined]
    except timeouts:
        pass
    client = distributed.get_client()
    try:
        stacks = client.run(thread_stacks, on_error="return", callback_timeout=30)
    except timeouts:
        stacks = {"?": "the workers did not answer within 30 s (their event loops are stuck)"}
    shown = "\n\n".join(f"=== worker {address}: {text}" for address, text in stacks.items())
    if ledger is not None:
        from rate_limited.ledgers.inspect import inspect

        shown += f"\n\n=== the shared ledger:\n{inspect(ledger)}"
    pytest.fail(f"The Dask job took over {DEADLINE:g} s. The workers' threads:\n{shown}")


def compute(collection: object, ledger: str | None = None) -> object:
    """``collection.compute()`` on the cluster, showing the workers' stacks if it hangs."""
    return result_or_stacks(distributed.get_client().compute(collection), ledger)


def frame(rows: int) -> object:
    return pd.DataFrame(
        {
            "id": range(rows),
            "text": [f"word {i} " * (i % 7 + 1) for i in range(rows)],
            "max_tokens": 40,
        },
        index=pd.Index([f"row-{i}" for i in range(rows)], name="label"),
    )


@pytest.mark.slow
@pytest.mark.timeout(CLUSTER_TIMEOUT)
def test_partitions_on_worker_processes_share_one_quota(
    cluster: object,
    redis_url: str,  # noqa: F811
) -> None:
    from rate_limited.dask import apply

    rows = 600  # ~60 tokens each: 36,000 > the 30,000 a minute allows, so the ledger binds
    name = uuid.uuid4().hex[:8]
    base = redis_url.rpartition("/")[0]
    df = frame(rows)
    ddf = dd.from_pandas(df, npartitions=6)
    with MockProvider(rpm=RPM, tpm=TPM, latency=0.05, reply=reply_with_row_id) as mp:
        ledger = f"{base}/0?name=dask-{name}&lease=5"
        make = functools.partial(
            make_runner, mp.base_url, ledger, f"{base}/0?prefix=dask-{name}", RPM, TPM
        )
        result = apply(ddf, make, row_to_kwargs)
        assert list(result.divisions) == list(ddf.divisions)
        out = compute(result, ledger)
        stats = mp.stats()
    assert out.index.equals(ddf.index.compute())  # aligned to the input, row for row
    assert (out["status"] == "succeeded").all()
    for label, value in zip(out.index, out["result"], strict=True):
        assert answers_row(value, df.loc[label, "id"]), (label, value)
    assert stats.rejected == 0
    assert stats.requests == rows


def test_apply_refuses_what_is_not_a_dask_frame() -> None:
    from rate_limited.dask import apply

    with pytest.raises(ConfigurationError, match=r"runner\.apply"):
        apply(frame(3), lambda: None, row_to_kwargs)  # type: ignore[arg-type, return-value]


def test_a_runner_with_a_ledger_of_its_own_is_warned_about() -> None:
    from rate_limited import Resource, Runner
    from rate_limited.dask import apply

    def make() -> Runner:
        return Runner(lambda **kw: kw, [Resource("requests", quota=10, time_window_seconds=1)])

    ddf = dd.from_pandas(frame(4), npartitions=2)
    with pytest.warns(LedgerWarning, match="ledger='redis://"):
        apply(ddf, make, row_to_kwargs)


@pytest.fixture
def synchronous() -> Iterator[None]:
    """Partitions computed in this thread: the schema tests need no worker processes."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def ledger_url(redis_url: str) -> str:  # noqa: F811
    return f"{redis_url.rpartition('/')[0]}/0?name=dask-{uuid.uuid4().hex[:8]}"


def test_the_columns_are_those_runner_apply_gives_pandas(
    synchronous: None,
    redis_url: str,  # noqa: F811
) -> None:
    """A preset prices its calls and they name a model: ``cost_usd`` and ``model`` are
    columns of every partition, as of ``runner.apply`` on the pandas frame."""
    from rate_limited.dask import apply

    df = frame(6)
    with MockProvider(rpm=600, tpm=100_000) as mp:
        make = functools.partial(make_chat_runner, mp.base_url, ledger_url(redis_url))
        runner = make()
        try:
            expected = runner.apply(df, row_to_kwargs)
        finally:
            runner.close()
        result = apply(dd.from_pandas(df, npartitions=2), make, row_to_kwargs)
        out = result.compute()
    assert {"cost_usd", "model"} <= set(expected.columns)
    assert list(result.columns) == list(expected.columns)
    assert list(out.columns) == list(expected.columns)
    assert (out["model"] == "gpt-4o-mini").all()
    assert (out["cost_usd"] > 0).all()


def test_the_lazy_frame_has_the_dtypes_of_its_partitions(
    synchronous: None,
    redis_url: str,  # noqa: F811
) -> None:
    """Text columns are object, status a categorical of every Status: the lazy frame's
    accessors work, and what it computes has the dtypes it announced."""
    from rate_limited.dask import apply

    make = functools.partial(make_text_runner, ledger_url(redis_url))
    ddf = dd.from_pandas(pd.DataFrame({"x": range(8)}), npartitions=2)
    out = apply(ddf, make, lambda row: {"x": int(row["x"])})
    assert "cost_usd" not in out.columns and "model" not in out.columns  # not priced
    assert list(out.status.cat.categories) == [status.value for status in Status]
    failed = out[out.error.fillna("").str.contains("bad row")].compute()
    assert list(failed.index) == [3]
    assert list(failed.status) == ["failed"]
    upper = out.result.str.upper().compute()
    assert upper[0] == "TEXT 0"
    computed = out.compute()
    assert computed.dtypes.to_dict() == out.dtypes.to_dict()
    assert out.status.value_counts().compute()["succeeded"] == 7


def test_a_make_runner_without_a_runner_is_named_before_anything_runs(
    redis_url: str,  # noqa: F811
) -> None:
    from rate_limited.dask import apply

    ddf = dd.from_pandas(frame(4), npartitions=2)
    with pytest.raises(
        ConfigurationError, match=r"make_runner\(\) must return a rate_limited Runner.*int: 3"
    ):
        apply(ddf, make_nothing, row_to_kwargs)
    with pytest.raises(ConfigurationError, match="make_runner must be a function"):
        apply(ddf, "runner", row_to_kwargs)  # type: ignore[arg-type]


def test_a_row_to_kwargs_without_a_dict_is_named_before_anything_runs(
    redis_url: str,  # noqa: F811
) -> None:
    from rate_limited.dask import apply

    make = functools.partial(make_text_runner, ledger_url(redis_url))
    ddf = dd.from_pandas(pd.DataFrame({"x": range(4)}), npartitions=2)
    with pytest.raises(ConfigurationError, match=r"row_to_kwargs must return a dict.*int: 5"):
        apply(ddf, make, lambda row: 5)  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigurationError, match="row_to_kwargs must be a function"):
        apply(ddf, make, None)  # type: ignore[arg-type]


def test_runner_frame_columns_are_the_result_columns(
    redis_url: str,  # noqa: F811
) -> None:
    """The public schema the lazy frame is built from: that of ``runner.apply``."""
    with MockProvider(rpm=600, tpm=100_000) as mp:
        runner = make_chat_runner(mp.base_url, ledger_url(redis_url))
        try:
            applied = runner.apply(frame(2), row_to_kwargs)
            assert runner.shares_quota
            columns = runner.frame_columns
        finally:
            runner.close()
    assert "cost_usd" in columns and "usage_requests_per_minute" in columns
    assert [c for c in applied.columns if c != "model"] == list(columns)  # model: the rows'
    plain = make_text_runner(ledger_url(redis_url))
    try:
        assert "cost_usd" not in plain.frame_columns and "model" not in plain.frame_columns
    finally:
        plain.close()


@pytest.mark.slow
@pytest.mark.timeout(CLUSTER_TIMEOUT)
def test_calls_with_a_model_the_schema_lacks_fail_on_the_client_before_sending(
    cluster: object,
    redis_url: str,  # noqa: F811
) -> None:
    """Dask's sample row gives no model, the real rows do: ``.compute()`` raises on the
    client, naming the column and ``columns=``, and nothing was sent; with ``columns=``
    the same job runs and keeps the column."""
    from rate_limited.dask import apply

    df = frame(8)
    df["id"] = range(2, 10)  # no row is the sample's made-up id 1
    ddf = dd.from_pandas(df, npartitions=2)
    with MockProvider(rpm=600, tpm=100_000) as mp:
        make = functools.partial(make_chat_runner, mp.base_url, ledger_url(redis_url))
        lazy = apply(ddf, make, model_for_most_rows)
        assert "model" not in lazy.columns
        with pytest.raises(ConfigurationError, match=r"no 'model' column.*columns=") as caught:
            compute(lazy)
        assert "Nothing was sent" in str(caught.value)
        assert mp.stats().requests == 0
        runner = make()
        columns = [*runner.frame_columns, "model"]
        runner.close()
        out = compute(apply(ddf, make, model_for_most_rows, columns=columns))
        assert mp.stats().requests == len(df)
    assert list(out.columns) == columns
    assert (out["model"] == "gpt-4o-mini").all()


@pytest.mark.slow
@pytest.mark.timeout(CLUSTER_TIMEOUT)
def test_a_column_the_schema_lacks_is_an_error_and_the_outcomes_stay_stored(
    cluster: object,
    redis_url: str,  # noqa: F811
) -> None:
    """Outcomes stored by a Runner with another resource carry its usage: the partition
    fails on the client naming the column, and says its outcomes are in the store."""
    from rate_limited.dask import apply

    store = f"{redis_url.rpartition('/')[0]}/0?prefix=dask-{uuid.uuid4().hex[:8]}"
    df = pd.DataFrame({"x": [0, 1, 2, 4]})
    earlier = make_text_runner(ledger_url(redis_url), store, resource="calls")
    try:
        assert (earlier.apply(df, lambda row: {"x": int(row["x"])})["status"] == "succeeded").all()
    finally:
        earlier.close()
    make = functools.partial(make_text_runner, ledger_url(redis_url), store)
    lazy = apply(dd.from_pandas(df, npartitions=2), make, x_kwargs)
    with pytest.raises(ConfigurationError, match=r"\['usage_calls'\].*in the shared store"):
        compute(lazy)
    out = compute(
        apply(dd.from_pandas(df, npartitions=2), make, x_kwargs, columns=["result", "usage_calls"])
    )
    assert list(out["result"]) == ["text 0", "text 1", "text 2", "text 4"]
    assert list(out["usage_calls"]) == [1.0] * 4


def test_columns_must_be_names(redis_url: str) -> None:  # noqa: F811
    from rate_limited.dask import apply

    make = functools.partial(make_text_runner, ledger_url(redis_url))
    ddf = dd.from_pandas(pd.DataFrame({"x": range(4)}), npartitions=2)
    with pytest.raises(ConfigurationError, match="columns must be a list of column names"):
        apply(ddf, make, x_kwargs, columns="result")


@pytest.mark.slow
@pytest.mark.timeout(CLUSTER_TIMEOUT)
def test_a_worker_killed_mid_run_costs_only_its_calls_in_flight(
    cluster: object,
    redis_url: str,  # noqa: F811
) -> None:
    """SIGKILL one of the 2 worker processes mid-run: Dask runs its partitions again on
    the other (those it had finished too: their frames died with it). The outcomes the
    store has are taken from it, not paid again: the provider receives the rows plus at
    most the calls the dead worker had in flight (its 2 Runners' ``max_concurrent=16``
    each, and those answered in the loop pass the kill cut before their outcomes were
    written), every row exact, 0 429s."""
    from rate_limited.dask import apply

    rows, partitions = 1_200, 8
    name = uuid.uuid4().hex[:8]
    base = redis_url.rpartition("/")[0]
    df = frame(rows)
    client = distributed.get_client()
    with MockProvider(rpm=RPM, tpm=1_000_000, latency=0.2, jitter=0.3,
                      reply=reply_with_row_id) as mp:  # fmt: skip
        make = functools.partial(
            make_runner, mp.base_url, f"{base}/0?name=dask-{name}&lease=5",
            f"{base}/0?prefix=dask-{name}", RPM, 1_000_000,
        )  # fmt: skip
        ddf = dd.from_pandas(df, npartitions=partitions)
        future = client.compute(apply(ddf, make, row_to_kwargs))
        wait_for(lambda: mp.stats().admitted >= rows // 3, "a third of the rows sent")
        victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        out = result_or_stacks(future, f"{base}/0?name=dask-{name}")
        stats = mp.stats()
        distinct = len({entry.body_hash for entry in mp.request_log})
    assert out.index.equals(ddf.index.compute())  # aligned to the input, row for row
    assert (out["status"] == "succeeded").all()
    for label, value in zip(out.index, out["result"], strict=True):
        assert answers_row(value, df.loc[label, "id"]), (label, value)
    assert stats.rejected == 0
    assert distinct == rows  # every extra request is a row sent again ...
    assert stats.requests - rows <= 2 * 2 * 16  # ... by the dead worker's Runners, in flight
    assert out["from_store"].any()  # the partitions run again took the stored outcomes
