"""The semantic cache in a Runner: looked up before admission, indexed after success.

Most tests wrap a plain function (``ask``) that records what it was sent, with the
deterministic ``WordEmbedder``: texts with the same words score 1.0.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rate_limited import ConfigurationError, PermanentError, Runner, SemanticCacheWarning
from rate_limited.semantic import SemanticCache
from rate_limited.stores import MemoryStore
from tests.semantic.fakes import WordEmbedder


class Asker:
    """The Runner's function: answers ``prompt`` and records each request."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []
        self.fail: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, prompt: str, model: str = "m", temperature: float = 0.0) -> str:
        with self._lock:
            self.sent.append((prompt, model, temperature))
        if prompt in self.fail:
            raise PermanentError(f"refused: {prompt}")
        return f"{model}@{temperature}: {prompt}"


@pytest.fixture
def embedder() -> WordEmbedder:
    return WordEmbedder()


@pytest.fixture
def ask() -> Asker:
    return Asker()


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    made: list[Runner] = []
    yield made
    for runner in made:
        runner.close()


def make_runner(
    runners: list[Runner], ask: Asker, embedder: Any, store: Any = None, **options: Any
) -> Runner:
    cache = options.pop("cache", None) or SemanticCache(embed=embedder, text="prompt")
    runner = Runner(
        ask,
        store=store if store is not None else MemoryStore(),
        semantic_cache=cache,
        progress=False,
        backoff=lambda errors, exc: 0.0,
        **options,
    )
    runners.append(runner)
    return runner


def test_a_question_asked_again_in_other_words_is_not_sent(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    store = MemoryStore()
    first = make_runner(runners, ask, embedder, store)
    first.schedule("What is the capital of France?")
    paid = first.run().outcomes[0]
    second = make_runner(runners, ask, embedder, store)
    second.schedule("what is the capital of France")
    second.schedule("What is the capital of Spain?")
    result = second.run()
    assert [p for p, _, _ in ask.sent] == [
        "What is the capital of France?",
        "What is the capital of Spain?",
    ]
    hit, miss = result.outcomes
    assert hit.result == "m@0.0: What is the capital of France?"
    assert hit.semantic is not None and miss.semantic is None
    assert hit.semantic.key == paid.key
    assert hit.semantic.text == "What is the capital of France?"
    assert hit.semantic.similarity == pytest.approx(1.0)
    assert hit.from_store and hit.usage == {} and hit.attempts == 0
    frame = result.to_pandas()
    assert frame["semantic_similarity"].iloc[0] == pytest.approx(1.0)
    assert frame["semantic_text"].iloc[0] == "What is the capital of France?"
    assert frame["semantic_key"].isna().iloc[1]


def test_paraphrases_within_one_run_are_sent_once(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    runner = make_runner(runners, ask, embedder)
    prompts = ["Capital of France?", "capital of   France", "Capital of Spain?", "France capital"]
    for prompt in prompts:
        runner.schedule(prompt)
    result = runner.run()
    # "France capital" has the same words in another order: the word-order guard refuses it.
    assert sorted(p for p, _, _ in ask.sent) == sorted(
        ["Capital of France?", "Capital of Spain?", "France capital"]
    )
    assert result.results[1] == "m@0.0: Capital of France?"
    follower = result.outcomes[1].semantic
    assert follower is not None and follower.key == result.outcomes[0].key
    assert not result.outcomes[1].from_store
    assert [o.semantic is not None for o in result.outcomes] == [False, True, False, False]


def test_a_follower_is_sent_when_its_leader_fails(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    ask.fail.add("Capital of France?")
    runner = make_runner(runners, ask, embedder)
    runner.schedule("Capital of France?")
    runner.schedule("capital of France")
    result = runner.run()
    assert [p for p, _, _ in ask.sent] == ["Capital of France?", "capital of France"]
    assert result.results == [None, "m@0.0: capital of France"]
    assert result.outcomes[1].semantic is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"model": "other"}, id="model"),
        pytest.param({"temperature": 0.7}, id="temperature"),
    ],
)
def test_a_call_differing_in_anything_else_is_never_served(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder, change: dict[str, Any]
) -> None:
    store = MemoryStore()
    first = make_runner(runners, ask, embedder, store)
    first.schedule("Capital of France?")
    first.run()
    second = make_runner(runners, ask, embedder, store)
    second.schedule("Capital of France?", **change)  # same text, other parameters
    second.schedule("capital of France", **change)
    result = second.run()
    assert len(ask.sent) == 2  # the first, then one of the two (the other follows it)
    assert ask.sent[1][0] == "Capital of France?"
    assert result.outcomes[0].semantic is None
    assert result.outcomes[1].semantic is not None  # follows the call of its own scope
    assert result.outcomes[1].semantic.key == result.outcomes[0].key


def test_refresh_turns_lookups_off_but_still_indexes(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    store = MemoryStore()
    fresh = make_runner(runners, ask, embedder, store, refresh=True)
    fresh.schedule("Capital of France?")
    fresh.schedule("capital of France")
    fresh.run()
    assert len(ask.sent) == 2
    later = make_runner(runners, ask, embedder, store)
    later.schedule("CAPITAL of France!")
    result = later.run()
    assert len(ask.sent) == 2
    assert result.outcomes[0].semantic is not None


def test_no_semantic_cache_means_no_lookup(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    store = MemoryStore()
    make_runner(runners, ask, embedder, store).schedule("Capital of France?")
    runners[-1].run()
    plain = Runner(ask, store=store, semantic_cache=None, progress=False)
    runners.append(plain)
    plain.schedule("capital of France")
    plain.run()
    assert len(ask.sent) == 2 and embedder.calls == 1


def test_exact_store_hits_are_not_looked_up(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    store = MemoryStore()
    make_runner(runners, ask, embedder, store).schedule("Capital of France?")
    runners[-1].run()
    embedded = len(embedder.texts)
    again = make_runner(runners, ask, embedder, store)
    again.schedule("Capital of France?")
    result = again.run()
    assert len(embedder.texts) == embedded  # answered by the exact store first
    assert result.outcomes[0].from_store and result.outcomes[0].semantic is None


def test_duplicate_texts_are_embedded_once_in_batches(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    runner = make_runner(runners, ask, embedder)
    for i in range(20):
        runner.schedule(f"Question number {i}")
        runner.schedule(f"Question number {i}", temperature=1.0)
    runner.run()
    assert len(embedder.texts) == 20
    assert embedder.calls == 3  # batch_size 8
    assert len(ask.sent) == 40  # distinct numbers: the number guard keeps them apart


def test_a_failing_embedder_sends_the_calls_with_a_warning(
    runners: list[Runner], ask: Asker
) -> None:
    def broken(texts: list[str]) -> list[list[float]]:
        raise RuntimeError("embedding service down")

    runner = make_runner(runners, ask, broken)
    runner.schedule("Capital of France?")
    runner.schedule("capital of France")
    with pytest.warns(SemanticCacheWarning, match="embedding service down"):
        result = runner.run()
    assert len(ask.sent) == 2
    assert result.results == ["m@0.0: Capital of France?", "m@0.0: capital of France"]
    assert all(o.semantic is None for o in result.outcomes)


@pytest.mark.parametrize(
    "vectors",
    [
        pytest.param(lambda texts: [[0.0, 0.0]] * len(texts), id="zero-vectors"),
        pytest.param(lambda texts: [[1.0]], id="too-few"),
        pytest.param(lambda texts: "nonsense", id="not-vectors"),
    ],
)
def test_an_embedder_returning_garbage_sends_the_calls_with_a_warning(
    runners: list[Runner], ask: Asker, vectors: Any
) -> None:
    runner = make_runner(runners, ask, vectors)
    runner.schedule("Capital of France?")
    runner.schedule("capital of France")
    with pytest.warns(SemanticCacheWarning, match="embedder failed"):
        runner.run()
    assert len(ask.sent) == 2


def test_an_index_that_fails_leaves_only_in_run_matching(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(runners, ask, embedder)
    assert runner._semantic is not None

    def down(*args: Any) -> Any:
        raise ConnectionError("index unreachable")

    monkeypatch.setattr(runner._semantic.index, "search", down)
    runner.schedule("Capital of France?")
    runner.schedule("capital of France")
    with pytest.warns(SemanticCacheWarning, match="index unreachable"):
        result = runner.run()
    assert len(ask.sent) == 1
    assert result.outcomes[1].semantic is not None


def test_a_text_function_that_cant_split_a_call_fails_at_schedule(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    cache = SemanticCache(embed=embedder, text=lambda call: "nowhere")
    runner = make_runner(runners, ask, embedder, cache=cache)
    with pytest.raises(ConfigurationError, match="is not one of the arguments"):
        runner.schedule("Capital of France?")


def test_the_semantic_cache_needs_a_store(ask: Asker, embedder: WordEmbedder) -> None:
    with pytest.raises(ConfigurationError, match="needs a store"):
        Runner(ask, semantic_cache=SemanticCache(embed=embedder, text="prompt"))
    with pytest.raises(ConfigurationError, match="SemanticCache or None"):
        Runner(ask, store="memory://", semantic_cache="yes")  # type: ignore[arg-type]


def test_stats_count_hits_and_the_usage_they_saved(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    from rate_limited import Resource

    calls = Resource("calls", 100, 60, arguments_usage_extractor=lambda call: 1)
    runner = make_runner(runners, ask, embedder, resources=[calls])
    for prompt in ["Capital of France?", "capital of France", "CAPITAL OF FRANCE", "Spain?"]:
        runner.schedule(prompt)
    runner.run()
    engine = runner._active_engine
    assert engine is not None and engine.stats.semantic is not None
    stats = engine.stats.semantic
    assert (stats.looked_up, stats.hits, stats.saved) == (4, 2, {"calls": 2.0})


def test_stopping_during_the_lookup_sends_nothing(
    runners: list[Runner], ask: Asker, embedder: WordEmbedder
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(texts: list[str]) -> list[list[float]]:
        entered.set()
        release.wait(10)
        return embedder(texts)

    runner = make_runner(runners, ask, slow)
    runner.schedule("Capital of France?")
    handle = runner.start()
    assert entered.wait(10)
    result = handle.stop(timeout=10)
    release.set()
    assert result.interrupted and ask.sent == []
    assert runner.run().results == ["m@0.0: Capital of France?"]


def test_the_dashboard_counts_hits_and_what_they_saved(ask: Asker, embedder: WordEmbedder) -> None:
    pytest.importorskip("ipywidgets")
    from rate_limited import Resource
    from rate_limited._dashboard import DashboardProgress

    dashboard = DashboardProgress(display=False)
    calls = Resource("calls", 100, 60, arguments_usage_extractor=lambda call: 1)
    cache = SemanticCache(embed=embedder, text="prompt")
    with Runner(
        ask, [calls], store="memory://", semantic_cache=cache, progress=dashboard
    ) as runner:
        for prompt in ["Capital of France?", "capital of France", "Capital of Spain?"]:
            runner.schedule(prompt)
        runner.run()
    state = dashboard.state()
    assert state["semantic_hits"] == 1 and state["semantic_saved"] == {"calls": 1.0}
    assert "1 answered by the semantic cache (saved 1 calls)" in state["text"]["counts"]
