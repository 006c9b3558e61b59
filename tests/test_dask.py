"""rate_limited.dask.apply on a real LocalCluster (worker processes) sharing the Redis ledger
and store, against the MockProvider: complete, exact results aligned to the input, 0 429s."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator

import pytest

from rate_limited import LedgerWarning
from rate_limited.exceptions import ConfigurationError
from rate_limited.testing import MockProvider
from tests.dask_jobs import answers_row, make_runner, reply_with_row_id, row_to_kwargs
from tests.shared import ROOT
from tests.stores.conftest import redis_url  # noqa: F401 - the session's redis-server

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

RPM, TPM = 6_000, 30_000


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
        make = functools.partial(
            make_runner,
            mp.base_url,
            f"{base}/0?name=dask-{name}&lease=5",
            f"{base}/0?prefix=dask-{name}",
            RPM,
            TPM,
        )
        result = apply(ddf, make, row_to_kwargs)
        assert list(result.divisions) == list(ddf.divisions)
        out = result.compute()
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
