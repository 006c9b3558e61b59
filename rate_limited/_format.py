"""How the displays write durations and amounts: short, stable, and in whole units where
fractions would only be noise.

A bucket that refills continuously holds fractions of a request (160.51 of 600), which
tell nobody anything: against a quota of ``WHOLE_UNITS_FROM`` or more, amounts are
rounded to whole units; below that (a $5 budget, say) they keep two decimals.
"""

from __future__ import annotations

import html
import math
import re

__all__ = ["WHOLE_UNITS_FROM", "format_amount", "format_seconds", "format_usd", "plain_text"]

#: Against a quota at least this large, amounts are shown in whole units.
WHOLE_UNITS_FROM = 100

_TAG = re.compile(r"<[^>]*>")


def format_seconds(seconds: float, tenths: bool = True) -> str:
    """``"4.2 s"``, ``"42 s"``, ``"3 min 12 s"``, ``"2 h 05 min"``: short, for a status line.

    ``tenths=False`` rounds short times to whole seconds too (a text that changes once a
    second, not at every update).
    """
    if math.isinf(seconds) or math.isnan(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 10 and tenths:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_amount(amount: float, quota: float | None = None) -> str:
    """``"90,000"`` for whole numbers, ``"1.25"`` otherwise (dollars, fractions); against
    a ``quota`` of ``WHOLE_UNITS_FROM`` or more, rounded to whole units (``"161"``)."""
    if quota is not None and quota >= WHOLE_UNITS_FROM:
        amount = round(amount)
    if amount == int(amount):
        return f"{int(amount):,}"
    return f"{amount:,.2f}"


def format_usd(amount: float) -> str:
    """``"$1.23"``; below a dollar, four significant digits: ``"$0.004512"``."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount:.4g}" if amount >= 0.0001 else f"${amount:.2e}"


def plain_text(markup: str) -> str:
    """The text of a line of the dashboard's own HTML (tags dropped, entities decoded)."""
    return html.unescape(_TAG.sub("", markup)).strip()
