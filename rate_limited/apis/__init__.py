"""Ready-made API presets: a provider's call and its rate limits in one object.

* ``rate_limited.apis.openai``: ``ChatCompletions``, ``Responses``, ``Embeddings`` for the
  ``openai>=1`` SDK, and rate_limited 0.4's ``openai_chat_resources``;
* ``rate_limited.apis.anthropic``: ``Messages`` for the ``anthropic`` SDK;
* ``rate_limited.apis.common``: ``get_requests_per_minute`` (0.4) and
  ``RequestTooLargeError``.

A preset is the Runner's function and its quotas: ``Runner(preset, preset.resources)``
or ``preset.runner()``. It estimates each call's tokens before sending it, bills what the
response's ``usage`` reports, and feeds the provider's rate-limit headers back into the
Runner's ledger (other users of the same key; limits left as None are discovered). The
SDKs are imported only when a preset has to create a client itself.
"""

from __future__ import annotations

from rate_limited.apis.common import RequestTooLargeError, get_requests_per_minute

__all__ = ["RequestTooLargeError", "get_requests_per_minute"]
