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
``functools.partial`` of one), not a lambda; it is called once per partition, and once on
the client by ``apply`` itself (nothing is sent then) to learn the result's columns. The
Runner it returns should have a shared ledger: with a ledger of its own, each partition
would believe it owns the whole quota (a ``LedgerWarning`` says so).

**The result's schema.** Dask needs every partition's columns and dtypes before any runs
(its ``meta``). The columns are the Runner's: those ``Runner.apply`` gives an empty frame
(``result`` ... ``semantic_similarity``), then ``cost_usd`` when the Runner prices its
calls (an API preset), ``model`` when its calls have a ``model`` argument (as
``row_to_kwargs`` gives for Dask's sample row, or an ``escalate=`` ladder; kept when
``row_to_kwargs`` fails on the sample's made-up values) and a
``usage_<resource>`` column per resource: the columns ``runner.apply`` gives a pandas
frame of the same rows. ``Runner.apply`` infers each partition's dtypes from its values
(a partition whose calls all succeeded has an ``error`` column of None); here every
partition is cast to one schema, so that the lazy frame's accessors work and partitions
concatenate alike: ``result`` and the text columns are ``object``, ``status`` is a
categorical of every ``Status`` value, the numbers are ``float64`` (NaN for None),
``attempts`` ``int64`` and ``from_store`` ``bool``.

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
    a lazy Dask DataFrame aligned to ``ddf`` with the columns of ``Runner.apply`` (see the
    module docstring for their dtypes); ``.compute()`` runs it. ``make_runner`` is called
    once here, on the client, to learn those columns: a ``make_runner`` that does not
    return a Runner, or a ``row_to_kwargs`` that does not return a dict, is a
    ``ConfigurationError`` now, before any partition runs.
    """
    dd = _dask_dataframe()
    if not isinstance(ddf, dd.DataFrame):
        raise ConfigurationError(
            f"ddf must be a dask.dataframe.DataFrame, got {type(ddf).__name__}; for a pandas "
            "DataFrame use runner.apply(df, row_to_kwargs)."
        )
    for name, value in (("make_runner", make_runner), ("row_to_kwargs", row_to_kwargs)):
        if not callable(value):
            raise ConfigurationError(
                f"{name} must be a function, got {type(value).__name__}: {value!r}. "
                "make_runner() returns the Runner a partition runs on; row_to_kwargs(row) "
                "returns the keyword arguments of the row's call."
            )
    meta = _meta(ddf, make_runner, row_to_kwargs)
    return ddf.map_partitions(_run_partition, make_runner, row_to_kwargs, meta, meta=meta)


def _runner_from(make_runner: Callable[[], Runner]) -> Runner:
    """``make_runner()``, which must be a Runner."""
    from rate_limited.runner import Runner

    runner = make_runner()
    if not isinstance(runner, Runner):
        raise ConfigurationError(
            f"make_runner() must return a rate_limited Runner (e.g. chat.runner(...) or "
            f"Runner(fn, resources, ledger=...)); {make_runner!r} returned "
            f"{type(runner).__name__}: {runner!r}."
        )
    return runner


def _meta(
    ddf: Any,
    make_runner: Callable[[], Runner],
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
) -> pandas.DataFrame:
    """The result's empty frame (its columns and dtypes, see the module docstring), from a
    Runner made here: the columns depend on its resources, prices and calls. Nothing is
    scheduled, so nothing is sent."""
    runner = _runner_from(make_runner)
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
        columns = [c for c in frame.columns if not c.startswith("usage_")]
        money = runner._money
        if money.spend is not None and money.spend.source is not None:
            columns.append("cost_usd")
        if money.ladder is not None or _sample_has_model(ddf, row_to_kwargs):
            columns.append("model")
        columns += [f"usage_{resource.name}" for resource in runner.resources]
    finally:
        runner.close()
    pd = _pandas()
    return pd.DataFrame(
        {name: pd.Series(dtype=_dtype(name)) for name in columns}, index=ddf._meta.index
    )


def _sample_has_model(
    ddf: Any, row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]]
) -> bool:
    """Whether the calls have a ``model`` argument (an ``Outcome.model``), as
    ``row_to_kwargs`` says for Dask's sample row (made-up values: nothing is computed).
    A function that fails on made-up values keeps the column: a column of None is better
    than a column lost."""
    sample = ddf._meta_nonempty
    if sample.empty:  # pragma: no cover - Dask's sample has rows
        return True
    try:
        kwargs = row_to_kwargs(sample.iloc[0])
    except Exception:
        return True
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(
            f"row_to_kwargs must return a dict of keyword arguments; for a sample row of "
            f"the frame it returned {type(kwargs).__name__}: {kwargs!r}."
        )
    return isinstance(kwargs.get("model"), str)


def _pandas() -> Any:
    import pandas

    return pandas


def _dtype(column: str) -> Any:
    """The dtype of a result column (see the module docstring)."""
    if column == "status":
        from rate_limited._status import Status

        return _pandas().CategoricalDtype([status.value for status in Status])
    if column in _NUMBERS or column.startswith("usage_"):
        return "float64"
    return _FIXED.get(column, "object")


#: Result columns that are numbers (NaN where the outcome has None).
_NUMBERS = frozenset({"latency", "semantic_similarity", "cost_usd"})
#: Result columns of a fixed dtype other than float64 and object.
_FIXED = {"attempts": "int64", "from_store": "bool"}


def _run_partition(
    partition: pandas.DataFrame,
    make_runner: Callable[[], Runner],
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
    meta: pandas.DataFrame,
) -> pandas.DataFrame:
    """One Dask task: a Runner for this partition, applied to it, then closed; the frame
    is cast to the result's schema (``meta``)."""
    runner = _runner_from(make_runner)
    try:
        frame = runner.apply(partition, row_to_kwargs)
    finally:
        runner.close()
    return frame.reindex(columns=meta.columns).astype(meta.dtypes.to_dict())
