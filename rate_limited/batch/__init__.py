"""The providers' Batch APIs: half the price, answers within 24 h, resumable.

::

    from rate_limited.apis.openai import ChatCompletions

    chat = ChatCompletions(openai.OpenAI())
    runner = chat.runner(batch=True, store="runs.db")   # a BatchRunner
    for prompt in prompts:
        runner.schedule(model="gpt-4o-mini", max_tokens=256,
                        messages=[{"role": "user", "content": prompt}])
    result = runner.run()        # ChatCompletion objects in schedule order, result.cost

``run()`` splits the calls into batches that fit the provider's limits, submits them,
polls, and maps every answer back to its call; the batch ids are in the store before
anything is waited on, so a Ctrl-C or a kernel restart resumes instead of paying twice.
See ``BatchRunner``.
"""

from __future__ import annotations

from rate_limited.batch._plan import Request, split
from rate_limited.batch._providers import AnthropicBatches, BatchApi, BatchState, OpenAIBatches
from rate_limited.batch._runner import BatchRunner
from rate_limited.exceptions import BatchRequestError

__all__ = [
    "AnthropicBatches",
    "BatchApi",
    "BatchRequestError",
    "BatchRunner",
    "BatchState",
    "OpenAIBatches",
    "Request",
    "split",
]
