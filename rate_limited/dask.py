"""Dask DataFrames: jobs bigger than one process, on Dask's workers, under one quota.

``rate_limited.dask.apply(ddf, make_runner, row_to_kwargs)`` runs each partition on a Dask
worker: the task calls ``make_runner()`` there (a Runner whose ``ledger=`` and ``store=``
are shared, ``redis://`` URLs), applies it to the partition (``Runner.apply``, one call per
row) and closes it. The result is a Dask DataFrame aligned to ``ddf`` (same index and
divisions) with ``Runner.apply``'s columns: ``result``, ``status``, ``error``, ...

Dask distributes the work, retries a partition whose worker died and moves data; nothing
here does that again. What makes a distributed run safe is the sharing underneath:

* the Redis ledger: every worker admits against the same quota (``rate_limited.ledgers``);
* the shared store: a partition Dask runs twice (a worker lost, speculative execution)
  takes the outcomes the first attempt stored, and calls two attempts both reach are sent
  once (``rate_limited._claims``).

``make_runner`` is pickled to the workers, so it must be a module-level function (or a
``functools.partial`` of one), not a lambda; it is called once per partition. The Runner
it returns should have a shared ledger: with a ledger of its own, each partition would
believe it owns the whole quota (a ``LedgerWarning`` says so).

Dask is optional: ``pip install 'rate_limited[dask]'``, imported only here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import ConfigurationError, LedgerWarning

if TYPE_CHECKING:
    import pandas

    from rate_limited.runner import Runner

__all__ = ["apply"]


def _dask_dataframe() -> Any:
    try:
        import dask.dataframe
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("rate_limited.dask needs Dask: pip install 'rate_limited[dask]'") from exc
    return dask.dataframe


def apply(
    ddf: Any,
    make_runner: Callable[[], Runner],
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
) -> Any:
    """One call per row of the Dask DataFrame ``ddf``, each partition on a Dask worker.

    ``make_runner()`` builds the Runner on the worker (share its quota and store through
    ``redis://`` URLs); ``row_to_kwargs(row)`` gives each call's keyword arguments. Returns
    a lazy Dask DataFrame aligned to ``ddf`` with the columns of ``Runner.apply``;
    ``.compute()`` runs it.
    """
    dd = _dask_dataframe()
    if not isinstance(ddf, dd.DataFrame):
        raise ConfigurationError(
            f"ddf must be a dask.dataframe.DataFrame, got {type(ddf).__name__}; for a pandas "
            "DataFrame use runner.apply(df, row_to_kwargs)."
        )
    if not callable(make_runner) or not callable(row_to_kwargs):
        raise ConfigurationError("make_runner and row_to_kwargs must be callables.")
    meta = _meta(ddf, make_runner, row_to_kwargs)
    columns = list(meta.columns)
    return ddf.map_partitions(_run_partition, make_runner, row_to_kwargs, columns, meta=meta)


def _meta(
    ddf: Any,
    make_runner: Callable[[], Runner],
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
) -> pandas.DataFrame:
    """The result's empty frame (its columns and dtypes), from a Runner made here: the
    columns depend on its resources. Nothing is scheduled, so nothing is sent."""
    runner = make_runner()
    try:
        if runner._ledger_is_local and runner.resources:
            warnings.warn(
                "make_runner() returns a Runner with a ledger of its own: every Dask "
                "partition will believe it owns the whole quota. Give it "
                "ledger='redis://...?name=...' so that the workers share one quota.",
                LedgerWarning,
                stacklevel=3,
            )
        frame = runner.apply(ddf._meta, row_to_kwargs)
        for resource in runner.resources:  # a usage column per resource, as rows will have
            frame[f"usage_{resource.name}"] = frame.get(f"usage_{resource.name}", 0.0)
    finally:
        runner.close()
    return frame.astype({"attempts": "int64", "from_store": "bool"})


def _run_partition(
    partition: pandas.DataFrame,
    make_runner: Callable[[], Runner],
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
    columns: list[str],
) -> pandas.DataFrame:
    """One Dask task: a Runner for this partition, applied to it, then closed."""
    runner = make_runner()
    try:
        return runner.apply(partition, row_to_kwargs).reindex(columns=columns)
    finally:
        runner.close()
