"""What the Dask tests and benchmark send to Dask's workers (importable there by name)."""

from __future__ import annotations

from typing import Any

from rate_limited.runner import Runner


def make_runner(base_url: str, ledger: str, store: str, rpm: float, tpm: float) -> Runner:
    """A ChatCompletions Runner sharing ``ledger`` and ``store`` (built on the worker)."""
    import openai

    from rate_limited.apis.openai import ChatCompletions

    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=120)
    chat = ChatCompletions(client, requests_per_minute=rpm, tokens_per_minute=tpm, ledger=ledger)
    return chat.runner(max_concurrent=16, progress=False, store=store)


def row_to_kwargs(row: Any) -> dict[str, Any]:
    """One chat request per row: its text, a small max_tokens."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Row {row['id']}: {row['text']}"}],
        "max_tokens": int(row["max_tokens"]),
    }
