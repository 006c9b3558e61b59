"""Outcomes as a pandas DataFrame (``RunResult.to_pandas()``, ``runner.apply()``).

pandas is an optional extra: it is imported when a frame is made, with an ImportError
naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

    from rate_limited._outcome import Outcome

__all__ = ["outcomes_frame", "pandas_module"]


def pandas_module() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DataFrames need pandas: pip install 'rate_limited[pandas]'") from exc
    return pandas


def outcomes_frame(outcomes: Sequence[Outcome], index: Any = None) -> pandas.DataFrame:
    """One row per outcome: ``result``, ``status``, ``error``, ``attempts``, ``latency``,
    ``from_store``, the semantic cache's match (``semantic_key``, ``semantic_text``,
    ``semantic_similarity``; None where it did not answer), ``cost_usd`` (when the
    Runner prices its calls), ``model`` (when the calls have a ``model`` argument: with
    ``escalate=``, the model that answered) and a ``usage_<resource>`` column per
    resource."""
    pd = pandas_module()
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
    costs = [o.cost for o in outcomes]
    if any(cost is not None for cost in costs):
        columns["cost_usd"] = costs
    models = [o.model for o in outcomes]
    if any(model is not None for model in models):
        columns["model"] = models
    for name in resources:
        columns[f"usage_{name}"] = [o.usage.get(name) for o in outcomes]
    frame = pd.DataFrame(columns, index=index)
    frame["status"] = frame["status"].astype("category")
    return frame
