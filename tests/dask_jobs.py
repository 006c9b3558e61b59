"""What the Dask tests and benchmark send to Dask's workers (importable there by name)."""

from __future__ import annotations

import collections
import gc
import os
import sys
import threading
import traceback
import weakref
from typing import Any

from rate_limited.runner import Runner


def _closes(runner: Runner, client: Any) -> Runner:
    """``runner``, whose OpenAI ``client`` (its connections) is closed once the runner is
    dropped: a Runner does not own the client it is given, and a partition's Runner is
    dropped by ``rate_limited.dask`` once closed (a test's leak check would find the
    sockets otherwise)."""
    weakref.finalize(runner, client.close)
    return runner


def make_runner(base_url: str, ledger: str, store: str, rpm: float, tpm: float) -> Runner:
    """A ChatCompletions Runner sharing ``ledger`` and ``store`` (built on the worker)."""
    import openai

    from rate_limited.apis.openai import ChatCompletions

    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=120)
    chat = ChatCompletions(client, requests_per_minute=rpm, tokens_per_minute=tpm, ledger=ledger)
    return _closes(chat.runner(max_concurrent=16, progress=False, store=store), client)


def row_to_kwargs(row: Any) -> dict[str, Any]:
    """One chat request per row: its text, a small max_tokens."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Row {row['id']}: {row['text']}"}],
        "max_tokens": int(row["max_tokens"]),
    }


def reply_with_row_id(prompt: str) -> str:
    """The MockProvider's reply to a row's prompt: the row's id first (``reply=`` this).

    The mock's default echo fits the prompt into the reply's output tokens, drawn at
    random: a reply a few tokens long cuts ``"Row 1234:"`` to ``"Row"`` or ``"Row 1234"``
    (about 1 in 10,000 replies), which a check on the echo would report as a wrong result.
    An id below 10,000 is one token, and every reply has at least one: each row's answer
    names its row.
    """
    return prompt.removeprefix("Row ").partition(":")[0]


def answers_row(result: Any, row_id: int) -> bool:
    """Whether the chat completion ``result`` is the answer to the row whose id is ``row_id``."""
    words = result.choices[0].message.content.split()
    return bool(words) and words[0] == str(row_id)


def text_or_fail(x: int) -> str:
    """A plain function for the schema tests: text, or a failure for ``x == 3``."""
    if x == 3:
        raise ValueError("bad row")
    return f"text {x}"


def make_text_runner(ledger: str, store: str | None = None, resource: str = "requests") -> Runner:
    """A Runner of ``text_or_fail`` on the shared ``ledger`` (and ``store``), one attempt
    per call, its quota a resource named ``resource``."""
    from rate_limited import Resource

    return Runner(
        text_or_fail,
        [Resource(resource, quota=1_000, time_window_seconds=1)],
        ledger=ledger,
        store=store,
        max_retries=0,
        progress=False,
    )


def x_kwargs(row: Any) -> dict[str, Any]:
    """``row_to_kwargs`` of ``text_or_fail``: the row's ``x``."""
    return {"x": int(row["x"])}


def model_for_most_rows(row: Any) -> dict[str, Any]:
    """``row_to_kwargs`` whose calls name a model for every row but Dask's sample row
    (whose made-up id is 1): the schema worked out from that row has no ``model``."""
    kwargs = row_to_kwargs(row)
    if row["id"] == 1:
        del kwargs["model"]
    return kwargs


def make_chat_runner(base_url: str, ledger: str) -> Runner:
    """A ChatCompletions Runner (it prices its calls) on the shared ``ledger``."""
    import openai

    from rate_limited.apis.openai import ChatCompletions

    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    chat = ChatCompletions(
        client, requests_per_minute=600, tokens_per_minute=100_000, ledger=ledger
    )
    return _closes(chat.runner(progress=False), client)


def make_nothing() -> Any:
    """A wrong ``make_runner``: it returns no Runner."""
    return 3


def thread_stacks() -> str:
    """Every thread's stack in this process, named, then the state of each Runner alive in
    it (a test whose Dask job hangs runs it on each worker with ``client.run`` and fails
    with them: where a worker is stuck, and which calls its Runners wait for)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = [f"pid {os.getpid()}:"]
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, '?')} ({ident}):")
        parts.append("".join(traceback.format_stack(frame)).rstrip())
    runners = [obj for obj in gc.get_objects() if isinstance(obj, Runner)]
    parts += [_runner_state(runner) for runner in runners] or ["--- no Runner alive"]
    return "\n".join(parts)


def _runner_state(runner: Runner) -> str:
    """A Runner's calls by status, and what its engine waits for (private attributes:
    read for a diagnosis only, each one optional)."""
    statuses = collections.Counter(call.status.value for call in runner.scheduled_calls)
    engine = getattr(runner, "_engine", None)
    stats = getattr(engine, "stats", None)
    claims = getattr(engine, "claims", None)
    waits = {
        "in flight": getattr(engine, "running_calls", None),
        "unfinished": getattr(engine, "_unfinished", None),
        "waiting until": getattr(stats, "waiting_until", None),
        "binding": getattr(stats, "binding", None),
        "loop time": None if engine is None else engine.loop.time(),
        "waiting on claims": len(getattr(claims, "_waiting", ())),
        "claims held": len(getattr(claims, "_mine", ())),
    }
    return f"--- {runner!r}: {dict(statuses)} {waits}"
