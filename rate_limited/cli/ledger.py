"""``rate-limited ledger inspect|reset redis://...``: what a shared ledger holds (levels,
reservations and their holders), or delete one (``rate_limited.ledgers.inspect``)."""

from __future__ import annotations

import sys

__all__ = ["DESCRIPTION", "ledger_command"]

DESCRIPTION = "What a shared ledger (Runner(ledger='redis://...')) holds, and who."


def ledger_command(action: str, url: str) -> int:
    """Inspect or reset the ledger at ``url``; 1 (and the error on stderr) if it fails."""
    from rate_limited.exceptions import RateLimitedError
    from rate_limited.ledgers.inspect import inspect, reset

    try:
        if action == "inspect":
            print(inspect(url))
        else:
            print(f"Deleted {reset(url)} key(s).")
    except RateLimitedError as exc:
        print(f"rate-limited ledger {action}: {exc}", file=sys.stderr)
        return 1
    return 0
