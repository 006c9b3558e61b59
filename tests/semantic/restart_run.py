"""One "kernel": a fresh process that runs a batch of chat calls through the ChatCompletions
preset with a semantic cache, and prints what each call got, as JSON.

``python -m tests.semantic.restart_run STORE BASE_URL PROMPT...``
"""

from __future__ import annotations

import json
import sys

import openai

from rate_limited.apis.openai import ChatCompletions
from rate_limited.semantic import SemanticCache
from tests.semantic.fakes import WordEmbedder


def main(store: str, base_url: str, prompts: list[str]) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=10.0)
    chat = ChatCompletions(client, requests_per_minute=6000, tokens_per_minute=1_000_000)
    with chat.runner(
        store=store, semantic_cache=SemanticCache(embed=WordEmbedder()), progress=False
    ) as runner:
        for prompt in prompts:
            runner.schedule(
                model="gpt-4o-mini",
                max_tokens=12,
                messages=[
                    {"role": "system", "content": "Answer in one word."},
                    {"role": "user", "content": prompt},
                ],
            )
        result = runner.run()
    rows = [
        {
            "key": o.key,
            "answer": o.result.choices[0].message.content if o.result is not None else None,
            "from_store": o.from_store,
            "semantic_key": o.semantic.key if o.semantic else None,
            "semantic_text": o.semantic.text if o.semantic else None,
        }
        for o in result.outcomes
    ]
    client.close()
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
