"""DataFrames out of runs: one row per call with its result, status, error and usage.

pandas is optional (``pip install 'rate_limited[pandas]'``) and imported only here, when
a DataFrame is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

    from rate_limited.outcomes import Outcome

__all__ = ["outcomes_frame"]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DataFrames need pandas: pip install 'rate_limited[pandas]'") from exc
    return pandas


def outcomes_frame(outcomes: Sequence[Outcome], index: Any = None) -> pandas.DataFrame:
    """One row per outcome: ``result``, ``status``, ``error``, ``attempts``, ``latency``,
    ``from_store`` and a ``usage_<resource>`` column per resource."""
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
        "from_store": [o.call.from_store for o in outcomes],
    }
    for name in resources:
        columns[f"usage_{name}"] = [o.usage.get(name) for o in outcomes]
    frame = pd.DataFrame(columns, index=index)
    frame["status"] = frame["status"].astype("category")
    return frame
