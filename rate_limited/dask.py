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

What a worker process that dies mid-run costs: the calls it had in flight (at most its
Runners' ``max_concurrent`` each), which the provider received and whose answers died with
it, are sent again by the partitions' re-runs, at once (its claims' holder is proven
ended, ``rate_limited._holder``); every outcome it stored is taken from the store, also
those of the partitions it had finished (Dask runs them again: their frames were in its
memory). Measured: benchmarks/RESULTS.md, "Dask LocalCluster".

``make_runner`` is pickled to the workers, so it must be a module-level function (or a
``functools.partial`` of one), not a lambda; it is called once per partition, and once on
the client by ``apply`` itself (nothing is sent then) to learn the result's columns. The
Runner it returns should have a shared ledger: with a ledger of its own, each partition
would believe it owns the whole quota (a ``LedgerWarning`` says so).

**One SDK client per worker process, not per partition.** A client made in
``make_runner`` is made again for every partition: a connection pool each (new
handshakes), open until it is collected (a Runner does not close the client it is given).
``per_process(openai.OpenAI)`` (``rate_limited._per_process``) gives each process one,
made by the first partition there and reused by the others and by the worker's threads;
``dask_client.run(openai_client.close)`` closes them on every worker, and they end with
the process anyway. A ``functools.cache`` in a notebook would not do: it is pickled by
name, and a worker cannot find it in its own ``__main__``.

**The result's schema.** Dask needs every partition's columns and dtypes before any runs
(its ``meta``). The columns are the Runner's (``Runner.frame_columns``: ``result`` ...
``semantic_similarity``, ``cost_usd`` when it prices its calls, ``model`` with an
``escalate=`` ladder, a ``usage_<resource>`` column per resource), and ``model`` when the
calls have a ``model`` argument, as ``row_to_kwargs`` says for Dask's sample row (kept
when ``row_to_kwargs`` fails on the sample's made-up values): the columns ``runner.apply``
gives a pandas frame of the same rows. ``columns=`` gives them instead.
``Runner.apply`` infers each partition's dtypes from its values (a partition whose calls
all succeeded has an ``error`` column of None); here every partition is cast to one
schema, so that the lazy frame's accessors work and partitions concatenate alike:
``result`` and the text columns are ``object``, ``status`` is a categorical of every
``Status`` value, the numbers are ``float64`` (NaN for None), ``attempts`` ``int64`` and
``from_store`` ``bool``.

**A column the schema lacks is an error, not a column dropped.** A warning on a Dask
worker never reaches the client, so a partition whose outcomes have a column the schema
lacks raises a ``ConfigurationError`` naming it, which ``.compute()`` raises on the
client. Calls with a ``model`` argument when the sample row gave none are found before
anything is sent; any other column (a stored outcome's usage of a resource this Runner
does not have) after the run, whose outcomes the shared store keeps.

Dask is optional: ``pip install 'rate_limited[dask]'``, imported only here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._per_process import PerProcess, per_process
from rate_limited.exceptions import ConfigurationError, LedgerWarning

if TYPE_CHECKING:
    import pandas

    from rate_limited.runner import Runner

__all__ = ["PerProcess", "apply", "per_process"]


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
    *,
    columns: Sequence[str] | None = None,
) -> Any:
    """One call per row of the Dask DataFrame ``ddf``, each partition on a Dask worker.

    ``make_runner()`` builds the Runner on the worker (share its quota and store through
    ``redis://`` URLs); ``row_to_kwargs(row)`` gives each call's keyword arguments. Returns
    a lazy Dask DataFrame aligned to ``ddf`` with the columns of ``Runner.apply`` (see the
    module docstring for their dtypes); ``.compute()`` runs it. ``make_runner`` is called
    once here, on the client, to learn those columns: a ``make_runner`` that does not
    return a Runner, or a ``row_to_kwargs`` that does not return a dict, is a
    ``ConfigurationError`` now, before any partition runs. Without ``columns``, a
    partition whose outcomes have a column those lack fails with a
    ``ConfigurationError`` naming it; ``columns``: the result's columns instead of those
    worked out here (others are left out, missing ones are NaN/None).
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
    if columns is not None and (
        isinstance(columns, str) or not all(isinstance(c, str) for c in columns)
    ):
        raise ConfigurationError(
            f"columns must be a list of column names, got {columns!r}: e.g. "
            "columns=[*runner.frame_columns, 'model']."
        )
    meta = _meta(ddf, make_runner, row_to_kwargs, columns)
    chosen = columns is not None
    return ddf.map_partitions(_run_partition, make_runner, row_to_kwargs, meta, chosen, meta=meta)


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
    columns: Sequence[str] | None,
) -> pandas.DataFrame:
    """The result's empty frame (its columns and dtypes, see the module docstring), from a
    Runner made here: the columns depend on its resources, prices and calls. Nothing is
    scheduled, so nothing is sent."""
    runner = _runner_from(make_runner)
    try:
        if not runner.shares_quota and runner.resources:
            warnings.warn(
                "make_runner() returns a Runner with a ledger of its own: every Dask "
                "partition will believe it owns the whole quota. Give it "
                "ledger='redis://...?name=...' so that the workers share one quota.",
                LedgerWarning,
                stacklevel=3,
            )
        names = list(runner.frame_columns)
    finally:
        runner.close()
    if columns is not None:
        names = list(columns)
    elif "model" not in names and _sample_has_model(ddf, row_to_kwargs):
        usage = [i for i, name in enumerate(names) if name.startswith("usage_")]
        names.insert(usage[0] if usage else len(names), "model")
    pd = _pandas()
    return pd.DataFrame(
        {name: pd.Series(dtype=_dtype(name)) for name in names}, index=ddf._meta.index
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
    chosen: bool,
) -> pandas.DataFrame:
    """One Dask task: a Runner for this partition, applied to it, then closed; the frame
    is cast to the result's schema (``meta``). Unless the user ``chosen`` its columns, a
    column the schema lacks is an error (see the module docstring)."""
    if not chosen and "model" not in meta.columns:
        _refuse_models(partition, row_to_kwargs)  # before anything is sent
    runner = _runner_from(make_runner)
    try:
        frame = runner.apply(partition, row_to_kwargs)
        stored = runner.store is not None and runner.store.shares_work
    finally:
        runner.close()
    extra = [name for name in frame.columns if name not in meta.columns]
    if extra and not chosen:
        kept = (
            "Its outcomes are in the shared store: the next apply() takes them from it "
            "instead of sending them again."
            if stored
            else "Its outcomes were not kept: give make_runner's Runner a shared store= "
            "(redis://...) so that a partition run again takes them from it."
        )
        raise ConfigurationError(
            f"A partition's outcomes have the column(s) {extra}, which the result's "
            f"schema ({list(meta.columns)}) lacks: Dask fixes the schema before any "
            f"partition runs. {kept} Give apply(..., columns=[...]) the columns you want "
            "(e.g. columns=[*runner.frame_columns, "
            f"{', '.join(repr(name) for name in extra)}])."
        )
    return frame.reindex(columns=meta.columns).astype(meta.dtypes.to_dict())


def _refuse_models(
    partition: pandas.DataFrame,
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
) -> None:
    """The result has no ``model`` column (Dask's sample row gave no ``model``): a
    partition whose calls have one would lose it. Said before any call is sent."""
    for label, row in partition.iterrows():
        kwargs = row_to_kwargs(row)
        if isinstance(kwargs, Mapping) and isinstance(kwargs.get("model"), str):
            raise ConfigurationError(
                f"Row {label!r}'s call has a model argument ({kwargs['model']!r}), but the "
                "result has no 'model' column: row_to_kwargs gave none for Dask's sample "
                "row (made-up values), from which apply() worked out the columns before "
                "any partition ran. Nothing was sent. Give apply(..., columns=[...]) the "
                "columns, e.g. columns=[*runner.frame_columns, 'model'] (or make "
                "row_to_kwargs give a model for any row)."
            )
