"""DataFrames in and out: one call per row, one row per call.

``runner.apply(df, row_to_kwargs)`` (or ``df.rate_limited.apply(runner, row_to_kwargs)``
once this module is imported) schedules one call per row with the keyword arguments
``row_to_kwargs(row)`` returns, runs them, and returns a DataFrame aligned to ``df.index``
with each call's ``result``, ``status``, ``error``, ``attempts``, ``latency``,
``from_store``, ``semantic_key`` / ``semantic_text`` / ``semantic_similarity`` and
``usage_<resource>``; ``RunResult.to_pandas()`` gives the same table
for any run.

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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import ConfigurationError
from rate_limited.outcomes import Outcome

if TYPE_CHECKING:
    import pandas

    from rate_limited.runner import Runner

__all__ = ["apply", "outcomes_frame"]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DataFrames need pandas: pip install 'rate_limited[pandas]'") from exc
    return pandas


def outcomes_frame(outcomes: Sequence[Outcome], index: Any = None) -> pandas.DataFrame:
    """One row per outcome: ``result``, ``status``, ``error``, ``attempts``, ``latency``,
    ``from_store``, the semantic cache's match (``semantic_key``, ``semantic_text``,
    ``semantic_similarity``; None where it did not answer) and a ``usage_<resource>``
    column per resource."""
    pd = _pandas()
    resources: dict[str, None] = {}
    for outcome in outcomes:
        resources.update(dict.fromkeys(outcome.usage))
    columns: dict[str, list[Any]] = {
        "result": [o.result for o in outcomes],
        "status": [o.status.value for o in outcomes],
        "error": [
            None if o.error is None else f"{type(o.error).__name__}: {o.error}" for o in outcomes
        ],
        "attempts": [o.attempts for o in outcomes],
        "latency": [o.latency for o in outcomes],
        "from_store": [o.from_store for o in outcomes],
        "semantic_key": [None if o.semantic is None else o.semantic.key for o in outcomes],
        "semantic_text": [None if o.semantic is None else o.semantic.text for o in outcomes],
        "semantic_similarity": [
            None if o.semantic is None else o.semantic.similarity for o in outcomes
        ],
    }
    for name in resources:
        columns[f"usage_{name}"] = [o.usage.get(name) for o in outcomes]
    frame = pd.DataFrame(columns, index=index)
    frame["status"] = frame["status"].astype("category")
    return frame


def apply(
    runner: Runner,
    frame: pandas.DataFrame,
    row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
) -> pandas.DataFrame:
    """One call per row of ``frame`` with ``row_to_kwargs(row)`` as its keyword arguments;
    returns the outcomes as a DataFrame aligned to ``frame.index`` (see the module doc)."""
    pd = _pandas()
    if not isinstance(frame, pd.DataFrame):
        raise ConfigurationError(f"apply() takes a pandas DataFrame, got {type(frame).__name__}.")
    if not callable(row_to_kwargs):
        raise ConfigurationError(
            "row_to_kwargs must be a function of a row (a pandas Series) returning the "
            f"call's keyword arguments as a dict; got {row_to_kwargs!r}."
        )
    wanted: list[Mapping[str, Any]] = []
    for label, row in frame.iterrows():
        kwargs = row_to_kwargs(row)
        if not isinstance(kwargs, Mapping):
            raise ConfigurationError(
                f"row_to_kwargs must return a dict of keyword arguments; for row {label!r} "
                f"it returned {type(kwargs).__name__}: {kwargs!r}."
            )
        wanted.append(kwargs)
    pending = runner.scheduled_calls
    if pending and not _same_calls(pending, wanted):
        raise ConfigurationError(
            f"This runner holds {len(pending)} scheduled calls that are not these rows' "
            "calls; run() them first (or use another Runner) before apply()."
        )
    finished = runner._last_apply
    if not pending and finished is not None and _same_calls(finished, wanted):
        # The same cell again after it completed: nothing left to send.
        return outcomes_frame([Outcome.of(call) for call in finished], index=frame.index)
    if not pending:
        for kwargs in wanted:
            runner.schedule(**kwargs)
    result = runner.run()
    runner._last_apply = None if result.interrupted else list(result.calls)
    return outcomes_frame(result.outcomes, index=frame.index)


def _same_calls(calls: Sequence[Any], wanted: Sequence[Mapping[str, Any]]) -> bool:
    if len(calls) != len(wanted):
        return False
    return all(
        not c.args and _equal(dict(c.kwargs), dict(w)) for c, w in zip(calls, wanted, strict=True)
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
    pd = _pandas()

    @pd.api.extensions.register_dataframe_accessor("rate_limited")
    class RateLimitedAccessor:
        """``df.rate_limited.apply(runner, row_to_kwargs)``: see ``rate_limited.pandas``."""

        def __init__(self, frame: pandas.DataFrame) -> None:
            self._frame = frame

        def apply(
            self,
            runner: Runner,
            row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
        ) -> pandas.DataFrame:
            return apply(runner, self._frame, row_to_kwargs)


with contextlib.suppress(ImportError):  # no pandas: apply() says what to install
    _register_accessor()
