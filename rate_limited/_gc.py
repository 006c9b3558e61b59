"""Pausing the cyclic garbage collector around bulk allocations.

Building 100,000 result lists, or decoding 100,000 stored responses, makes CPython's
collector run again and again over the growing heap (it triggers on allocation counts).
``bulk_allocation()`` turns it off while the objects are made; afterwards it moves them to
the oldest generation in one step (``gc.freeze(); gc.unfreeze()``, O(1)) so that the young
collections that follow do not walk them either. They stay collectable. The previous state
is restored: code that had disabled the collector keeps it off.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["bulk_allocation"]


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
        gc.freeze()
        gc.unfreeze()
        gc.enable()
