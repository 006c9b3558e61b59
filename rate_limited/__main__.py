"""``python -m rate_limited``: the ``rate-limited`` command (``demo``, ``mock-provider``,
``bench``), for environments where the console script is not on the PATH."""

from __future__ import annotations

from rate_limited.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
