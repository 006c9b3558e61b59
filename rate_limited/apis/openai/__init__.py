"""Presets for OpenAI's API (the ``openai>=1`` SDK), and rate_limited 0.4's chat helper.

::

    import openai
    from rate_limited.apis.openai import ChatCompletions

    chat = ChatCompletions(openai.OpenAI(), requests_per_minute=500, tokens_per_minute=200_000)
    runner = chat.runner()                      # Runner(chat, chat.resources)
    for prompt in prompts:
        runner.schedule(model="gpt-4o-mini", max_tokens=256,
                        messages=[{"role": "user", "content": prompt}])
    results, exceptions = runner.run()          # ChatCompletion objects, in order

Leave a limit as None to read it from the ``x-ratelimit-*`` headers. Importing this
module does not import ``openai``; a preset created without a client imports it then.
"""

from __future__ import annotations

from rate_limited.apis.common import RequestTooLargeError
from rate_limited.apis.openai._presets import (
    AsyncChatCompletions,
    AsyncEmbeddings,
    AsyncResponses,
    ChatCompletions,
    Embeddings,
    Responses,
    default_max_output_tokens,
)
from rate_limited.apis.openai.chat import openai_chat_resources

__all__ = [
    "AsyncChatCompletions",
    "AsyncEmbeddings",
    "AsyncResponses",
    "ChatCompletions",
    "Embeddings",
    "RequestTooLargeError",
    "Responses",
    "default_max_output_tokens",
    "openai_chat_resources",
]
