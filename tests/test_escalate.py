"""``escalate=``: each attempt after a failed validation (or an error permanent for that
model) runs with the next rung's arguments, at that model's quota and price."""

from __future__ import annotations

from typing import Any

import pytest

from rate_limited import Budget, ConfigurationError, Resource, Runner
from rate_limited.testing import FakeClock

PRICES = {"small": 0.01, "large": 0.1}
LADDER = [{"model": "small"}, {"model": "large"}]


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class Models:
    """``small`` fails the way it is told to; ``large`` answers."""

    def __init__(self, small: Any) -> None:
        self.small = small
        self.seen: list[str] = []

    async def __call__(self, prompt: str, model: str) -> dict[str, str]:
        self.seen.append(model)
        if model == "small" and isinstance(self.small, BaseException):
            raise self.small
        return {"model": model, "answer": self.small if model == "small" else "good"}


def budget() -> Budget:
    return Budget(
        10.0,
        cost=lambda call, result: PRICES[call.kwargs["model"]],  # the attempt's model
        max_cost=lambda call: PRICES[call.kwargs["model"]] * 2,
    )


def make(function: Any, **options: Any) -> Runner:
    per_model = Resource("rpm", 100, 60, partition=lambda call: call.kwargs["model"])
    return Runner(
        function,
        [per_model],
        clock=FakeClock(),
        progress=False,
        escalate=LADDER,
        budget=budget(),
        **options,
    )


def test_an_invalid_answer_escalates_and_is_billed_at_each_model() -> None:
    models = Models("bad")
    runner = make(models, validation=lambda result: result["answer"] == "good")
    runner.schedule("q", model="whatever")  # the first rung's model replaces it
    result = runner.run()
    assert models.seen == ["small", "large"]
    outcome = result.outcomes[0]
    assert outcome.model == "large" and outcome.attempts == 2
    assert outcome.cost == pytest.approx(0.11)
    partitions = runner._ledger.partitions(0.0)
    assert partitions[("rpm", "small")][0] == 1 and partitions[("rpm", "large")][0] == 1


@pytest.mark.parametrize(
    ("error", "escalates"),
    [
        pytest.param(HttpError(400), True, id="400-context-too-long"),
        pytest.param(HttpError(404), True, id="404-model-not-found"),
        pytest.param(HttpError(500), False, id="500-transient"),
        pytest.param(HttpError(401), False, id="401-auth-is-every-models"),
    ],
)
def test_errors_permanent_for_a_model_escalate(error: Exception, escalates: bool) -> None:
    models = Models(error)
    runner = make(models, max_retries=1, backoff=lambda n, e: 0.0)
    runner.schedule("q", model="small")
    result = runner.run()
    if escalates:
        assert models.seen == ["small", "large"]
        assert result.outcomes[0].model == "large"
        assert result.results[0] == {"model": "large", "answer": "good"}
    else:
        assert "large" not in models.seen
        assert result.outcomes[0].model == "small"


def test_the_last_rung_retries_on_itself() -> None:
    seen: list[str] = []

    async def never_good(prompt: str, model: str) -> str:
        seen.append(model)
        return "bad"

    runner = make(never_good, validation=lambda r: r == "good", max_retries=3)
    runner.schedule("q", model="small")
    result = runner.run()
    assert seen == ["small", "large", "large", "large"]
    assert result.outcomes[0].status.value == "failed"


def test_the_store_key_holds_the_ladder(tmp_path: Any) -> None:
    store = str(tmp_path / "runs.db")
    one = make(Models("bad"), store=store)
    two = Runner(Models("bad"), clock=FakeClock(), store=store, escalate=[{"model": "small"}])
    three = make(Models("bad"), store=store)
    keys = [r.schedule("q", model="small").key for r in (one, two, three)]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    for runner in (one, two, three):
        runner.close()


@pytest.mark.parametrize(
    "ladder",
    [
        pytest.param([], id="empty"),
        pytest.param({"model": "x"}, id="a-dict"),
        pytest.param(["x"], id="not-dicts"),
        pytest.param("gpt-4o", id="a-string"),
    ],
)
def test_bad_ladders_are_refused(ladder: Any) -> None:
    with pytest.raises(ConfigurationError, match="escalate"):
        Runner(Models("x"), escalate=ladder)


def test_a_call_out_of_retries_stays_on_the_model_that_failed() -> None:
    models = Models("bad")
    runner = make(models, validation=lambda result: result["answer"] == "good", max_retries=0)
    runner.schedule("q", model="small")
    outcome = runner.run().outcomes[0]
    assert models.seen == ["small"]
    assert outcome.model == "small" and outcome.status.value == "failed"
