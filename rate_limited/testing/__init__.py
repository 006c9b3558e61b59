"""Test helpers for users and for this package's own tests.

* ``FakeClock``: virtual time for a Runner (``Runner(..., clock=FakeClock())``), so that
  quota windows of minutes or days cost no real time in a test.
"""

from __future__ import annotations

from rate_limited.testing.clock import FakeClock

__all__ = ["FakeClock"]
