"""Presets for Anthropic's API (the ``anthropic`` SDK).

::

    import anthropic
    from rate_limited.apis.anthropic import Messages

    claude = Messages(anthropic.Anthropic(), requests_per_minute=50,
                      input_tokens_per_minute=40_000, output_tokens_per_minute=8_000)
    runner = claude.runner()
    runner.schedule(model="claude-haiku-4-5", max_tokens=512,
                    messages=[{"role": "user", "content": "Hello"}])
    results, exceptions = runner.run()

Importing this module does not import ``anthropic``.
"""

from __future__ import annotations

from rate_limited.apis.anthropic._messages import AsyncMessages, Messages
from rate_limited.apis.common import RequestTooLargeError

__all__ = ["AsyncMessages", "Messages", "RequestTooLargeError"]
