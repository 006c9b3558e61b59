"""``rate_limited._gc``: the collector paused around bulk allocations, and the heap a big
run starts with left out of collections while it goes on."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from rate_limited._gc import FREEZE_FROM, age_young, bulk_allocation, frozen_heap


@pytest.fixture(autouse=True)
def _nothing_frozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_big_run_freezes_the_heap_until_it_ends() -> None:
    kept = [object() for _ in range(10)]
    with frozen_heap(FREEZE_FROM):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert kept


def test_a_small_run_leaves_the_heap_alone() -> None:
    with frozen_heap(FREEZE_FROM - 1):
        assert gc.get_freeze_count() == 0


def test_the_heap_is_unfrozen_when_the_last_of_two_runs_ends() -> None:
    first = frozen_heap(FREEZE_FROM)
    second = frozen_heap(FREEZE_FROM)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # the second run goes on
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0


def test_the_heap_is_unfrozen_when_the_run_raises() -> None:
    with pytest.raises(KeyboardInterrupt), frozen_heap(FREEZE_FROM):
        raise KeyboardInterrupt
    assert gc.get_freeze_count() == 0


def test_objects_frozen_by_the_process_itself_stay_frozen() -> None:
    gc.freeze()  # e.g. before forking workers
    frozen = gc.get_freeze_count()
    with frozen_heap(FREEZE_FROM):
        pass
    assert gc.get_freeze_count() == frozen


def test_a_disabled_collector_is_left_disabled() -> None:
    gc.disable()
    try:
        with frozen_heap(FREEZE_FROM):
            assert gc.get_freeze_count() == 0
        with bulk_allocation(10_000):
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def _collectable(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector looks at (frozen ones are not)."""
    wanted = id(obj)
    return any(id(o) == wanted for o in gc.get_objects())


@pytest.mark.parametrize(
    "by_a_run", [pytest.param(False, id="the-process"), pytest.param(True, id="a-run")]
)
def test_a_bulk_allocation_keeps_frozen_objects_frozen(by_a_run: bool) -> None:
    sentinel = [object()]  # a container the collector tracks, made before the freeze
    run = frozen_heap(FREEZE_FROM)
    if by_a_run:
        run.__enter__()
    else:
        gc.freeze()  # e.g. before forking workers
    assert gc.get_freeze_count() > 0
    assert not _collectable(sentinel)
    with bulk_allocation(10_000):
        made = [[i] for i in range(10_000)]
    # Nothing thawed: the sentinel is still frozen. (Not the freeze count: frozen objects
    # that other threads free meanwhile lower it.)
    assert not _collectable(sentinel)
    assert gc.isenabled()
    assert made
    if by_a_run:
        run.__exit__(None, None, None)
        assert gc.get_freeze_count() == 0


def test_age_young_moves_the_young_generations_to_the_oldest() -> None:
    gc.collect()
    young = [[] for _ in range(300)]  # tracked objects, in the youngest generation
    assert gc.get_count()[0] >= 300
    age_young()
    assert gc.get_count()[0] < 300  # left to the oldest generation
    assert gc.get_freeze_count() == 0  # nothing stays frozen
    assert young


def test_age_young_leaves_objects_frozen_by_others_frozen() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    age_young()
    assert gc.get_freeze_count() == frozen


def test_scheduling_in_bulk_ages_the_young_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    from rate_limited import _scheduling
    from rate_limited.runner import Runner

    aged = []
    monkeypatch.setattr(_scheduling, "age_young", lambda: aged.append(1))
    with Runner(lambda x: x, progress=False) as runner:
        for i in range(3 * _scheduling._AGE_EVERY + 1):
            runner.schedule(i)
    assert len(aged) == 3  # every _AGE_EVERY calls, not per call
