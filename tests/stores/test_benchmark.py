"""Store speed: put+flush cost per record, and resuming a finished run with one get_many.

Runs small by default (a smoke test of the measuring code, no time is asserted); for the
real figures run, with N records (e.g. 100000)::

    RATE_LIMITED_BENCH_N=100000 python -m pytest tests/stores/test_benchmark.py -s
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from rate_limited._keys import call_key
from rate_limited.stores import StoredOutcome

from .conftest import Backend

N = int(os.environ.get("RATE_LIMITED_BENCH_N", "2000"))


def completion(i: int) -> Any:
    chat = pytest.importorskip("openai.types.chat")
    return chat.ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{i}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"Answer number {i}. " * 8},
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("str", id="str"), pytest.param("chat", id="chat")])
def test_put_flush_and_resume_speed(durable: Backend, kind: str) -> None:
    template = completion(0)
    keys = [call_key(print, (i,)) for i in range(N)]
    records = [
        StoredOutcome(
            key=key,
            status="succeeded",
            result=f"Answer number {i}. " * 8 if kind == "str" else template,
            attempts=1,
            usage={"requests": 1.0, "tokens": 90.0},
            started_at=1.0,
            finished_at=2.0,
            function="builtins.print",
        )
        for i, key in enumerate(keys)
    ]
    store = durable.open()
    start = time.perf_counter()
    for record in records:
        store.put(record)
    store.flush()
    put_seconds = time.perf_counter() - start
    store.close()

    start = time.perf_counter()
    resumed = durable.open()
    found = resumed.get_many(keys)
    get_seconds = time.perf_counter() - start
    assert len(found) == N
    print(
        f"\n{durable.name} {kind}: put+flush {put_seconds / N * 1e6:.1f} us/record; "
        f"open + get_many of {N} keys {get_seconds:.3f} s"
    )
