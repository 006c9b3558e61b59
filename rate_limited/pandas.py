"""DataFrames in and out: one call per row, one row per call.

``runner.apply(df, row_to_kwargs)`` (or ``df.rate_limited.apply(runner, row_to_kwargs)``
once this module is imported) schedules one call per row with the keyword arguments
``row_to_kwargs(row)`` returns, runs them, and returns a DataFrame aligned to ``df.index``
with each call's ``result``, ``status``, ``error``, ``attempts``, ``latency``,
``from_store``, ``semantic_key`` / ``semantic_text`` / ``semantic_similarity``,
``cost_usd`` and ``model`` (see ``outcomes_frame``) and ``usage_<resource>``;
``RunResult.to_pandas()`` gives the same table for any run.

Every row is scheduled before anything runs. A row that cannot be (it needs more than a
whole quota, or a usage extractor fails on it) is named by its index label in the
error, and the rows scheduled so far are dropped again, so the same Runner takes the
corrected frame: ``runner.apply(df.drop(index=error.rows), ...)``. The result keeps the
frame's own index either way. The run's ``RunResult`` is ``runner.last_result``
afterwards, for ``.plot()``; it is not put in the frame's ``attrs``, which pandas
deep-copies on every operation (a result holds the client it called).

Rerunning the same cell resumes instead of starting over: if the runner still holds an
interrupted batch of exactly these calls, ``apply`` runs that batch again (only the
unfinished calls are sent), and after a complete run it returns that run's outcomes
without sending anything (use a new Runner to call again); with a ``store=``, a fresh
runner or kernel gets the finished rows back from the store without calling again.

pandas is optional (``pip install 'rate_limited[pandas]'``) and imported only here.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rate_limited._escalate import scheduled_kwargs
from rate_limited._frames import outcomes_frame, pandas_module
from rate_limited._status import RunnerState
from rate_limited.exceptions import ConfigurationError, QuotaExceededError

if TYPE_CHECKING:
    import pandas

    from rate_limited.calls import Call
    from rate_limited.outcomes import RunResult

__all__ = ["apply", "outcomes_frame"]


class Applier(Protocol):
    """What ``apply`` needs of a Runner (a protocol: the Runner's ``apply()`` calls this
    module, which so does not import it)."""

    scheduled_calls: list[Call]
    last_result: RunResult | None

    @property
    def state(self) -> RunnerState: ...

    def schedule(self, *args: Any, **kwargs: Any) -> Call: ...

    def run(self) -> RunResult: ...


#: Per Runner, the result of its last completed ``apply()``: the same cell run again
#: after it completed sends nothing. Weak: it does not keep a Runner alive.
_last_apply: weakref.WeakKeyDictionary[Applier, RunResult] = weakref.WeakKeyDictionary()


def apply(
    runner: Applier,
    frame: pandas.DataFrame,
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
) -> pandas.DataFrame:
    """One call per row of ``frame`` with ``row_to_kwargs(row)`` as its keyword arguments;
    returns the outcomes as a DataFrame aligned to ``frame.index`` (see the module doc)."""
    pd = pandas_module()
    if not isinstance(frame, pd.DataFrame):
        raise ConfigurationError(f"apply() takes a pandas DataFrame, got {type(frame).__name__}.")
    if not callable(row_to_kwargs):
        raise ConfigurationError(
            "row_to_kwargs must be a function of a row (a pandas Series) returning the "
            f"call's keyword arguments as a dict; got {row_to_kwargs!r}."
        )
    runner.state.check_can_start()  # closed, or a run going on: say so before scheduling
    labels: list[Any] = []
    wanted: list[Mapping[str, Any]] = []
    for label, row in frame.iterrows():
        kwargs = row_to_kwargs(row)
        if not isinstance(kwargs, Mapping):
            raise ConfigurationError(
                f"row_to_kwargs must return a dict of keyword arguments; for row {label!r} "
                f"it returned {type(kwargs).__name__}: {kwargs!r}."
            )
        labels.append(label)
        wanted.append(kwargs)
    pending = runner.scheduled_calls
    if pending and not _same_calls(pending, wanted):
        raise ConfigurationError(
            f"This runner holds {len(pending)} scheduled calls that are not these rows' "
            "calls; run() them first (or use another Runner) before apply()."
        )
    finished = _last_apply.get(runner)
    if not pending and finished is not None and _same_calls(finished.calls, wanted):
        # The same cell again after it completed: nothing left to send.
        runner.last_result = finished
        return outcomes_frame(finished.outcomes, index=frame.index)
    if not pending:
        _schedule_rows(runner, labels, wanted)
    result = runner.run()
    if result.interrupted or result.budget is not None:  # the same cell again resumes
        _last_apply.pop(runner, None)
    else:
        _last_apply[runner] = result
    return outcomes_frame(result.outcomes, index=frame.index)


#: Rows described one by one in the error for rows too large; the rest are counted.
_ROWS_SHOWN = 5


def _schedule_rows(runner: Applier, labels: list[Any], wanted: list[Mapping[str, Any]]) -> None:
    """Schedule one call per row, or none: on any error the rows scheduled so far are
    dropped and the error names the row (every row, when several are too large)."""
    too_large: list[tuple[Any, QuotaExceededError]] = []
    try:
        for label, kwargs in zip(labels, wanted, strict=True):
            try:
                runner.schedule(**kwargs)
            except QuotaExceededError as exc:
                too_large.append((label, exc))  # go on: name them all at once
            except ConfigurationError as exc:
                raise ConfigurationError(f"Row {label!r} of the DataFrame: {exc}") from exc
    except BaseException:
        runner.scheduled_calls = []
        raise
    if not too_large:
        return
    runner.scheduled_calls = []
    described = [
        f"row {label!r} needs {exc.needed:,.10g} of {exc.resource!r} (quota {exc.quota:,.10g})"
        for label, exc in too_large[:_ROWS_SHOWN]
    ]
    if len(too_large) > _ROWS_SHOWN:
        described.append(f"and {len(too_large) - _ROWS_SHOWN:,} more")
    count = "1 row" if len(too_large) == 1 else f"{len(too_large):,} rows"
    verb = "needs" if len(too_large) == 1 else "need"
    first = too_large[0][1]
    raise QuotaExceededError(
        f"{count} of the {len(labels):,} {verb} more than a whole quota, so could never run: "
        f"{'; '.join(described)}. Nothing was scheduled. Drop those rows "
        "(df.drop(index=error.rows)) or lower their usage (e.g. max_tokens), then apply() "
        "again.",
        resource=first.resource,
        needed=first.needed,
        quota=first.quota,
        rows=[label for label, _ in too_large],
    ) from first


def _same_calls(calls: Sequence[Any], wanted: Sequence[Mapping[str, Any]]) -> bool:
    if len(calls) != len(wanted):
        return False
    return all(
        not c.args and _equal(scheduled_kwargs(c), dict(w))
        for c, w in zip(calls, wanted, strict=True)
    )


def _equal(a: Any, b: Any) -> bool:
    """Equality for arguments read from DataFrame rows: NaN equals NaN, arrays compare by
    value, containers recursively (a row read twice gives new, equal objects)."""
    if a is b:
        return True
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        same = a == b
        if isinstance(same, bool):
            return same
        import numpy  # an array's == is elementwise

        return bool(numpy.array_equal(a, b, equal_nan=True))
    except Exception:
        return False


def _register_accessor() -> None:
    pd = pandas_module()

    @pd.api.extensions.register_dataframe_accessor("rate_limited")
    class RateLimitedAccessor:
        """``df.rate_limited.apply(runner, row_to_kwargs)``: see ``rate_limited.pandas``."""

        def __init__(self, frame: pandas.DataFrame) -> None:
            self._frame = frame

        def apply(
            self,
            runner: Applier,
            row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
        ) -> pandas.DataFrame:
            return apply(runner, self._frame, row_to_kwargs)


with contextlib.suppress(ImportError):  # no pandas: apply() says what to install
    _register_accessor()
