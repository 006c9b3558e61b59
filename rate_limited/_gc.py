"""Pausing the cyclic garbage collector around bulk allocations.

Building 100,000 result lists, or decoding 100,000 stored responses, makes CPython's
collector run again and again over the growing heap (it triggers on allocation counts).
``bulk_allocation()`` turns it off while the objects are made; afterwards it moves them to
the oldest generation in one step (``gc.freeze(); gc.unfreeze()``, O(1)) so that the young
collections that follow do not walk them either. They stay collectable. The previous state
is restored: code that had disabled the collector keeps it off, and objects frozen before
(by the process, or by a run's ``frozen_heap()``) stay frozen: the move to the oldest
generation is then skipped, since ``gc.unfreeze()`` would thaw them too.

``frozen_heap()`` does the same for a long run: a run of a million calls allocates while
the million Calls scheduled before it sit in the heap, and every full collection would
walk them all again. The heap is frozen when the run starts (``gc.freeze()``: what exists
then is left out of collections) and unfrozen when the last run going ends, so that
garbage from before the run is collected after it. A process that froze its heap itself
(e.g. before forking) is left alone.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["age_young", "bulk_allocation", "frozen_heap"]

#: Below this many calls a run does not freeze the heap (it costs nothing, but changes
#: nothing worth it either).
FREEZE_FROM = 10_000

_lock = threading.Lock()
_frozen_runs = 0  # runs going on that froze the heap


@contextlib.contextmanager
def bulk_allocation(count: int = 1000) -> Iterator[None]:
    """Pause the collector while about ``count`` objects are made (no-op below 1,000)."""
    if count < 1000 or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        age_young()
        gc.enable()


def age_young() -> None:
    """Move what the young generations hold to the oldest in one step (``gc.freeze();
    gc.unfreeze()``, O(1)): the young collections that follow do not walk it, and it does
    not count towards the next full collection either (objects promoted one by one do).
    It stays collectable. Skipped while objects are frozen (by the process, or by a run in
    another thread): ``gc.unfreeze()`` would thaw them too."""
    with _lock:
        if not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()


@contextlib.contextmanager
def frozen_heap(count: int) -> Iterator[None]:
    """Leave what exists now out of garbage collections while a run of ``count`` calls
    goes on (see the module docstring); no-op for a small run, with the collector off,
    or in a process that froze objects itself."""
    global _frozen_runs
    with _lock:
        freeze = count >= FREEZE_FROM and gc.isenabled()
        if freeze and not _frozen_runs and gc.get_freeze_count():
            freeze = False  # someone else's frozen objects: not ours to unfreeze
        if freeze:
            _frozen_runs += 1
            gc.freeze()
    try:
        yield
    finally:
        if freeze:
            with _lock:
                _frozen_runs -= 1
                if not _frozen_runs:
                    gc.unfreeze()
