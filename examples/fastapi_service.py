"""A FastAPI service whose online requests share one API key with a background batch.

One ``Runner`` does both: ``POST /batch`` schedules a batch and starts it in the
background (``runner.start()``), and every ``POST /answer`` is one online call
(``await runner.call(...)``) through the same ledger. Online calls have priority 1, the
batch 0: a question waits only for quota to free, never behind the batch's queue, and
the key never gets more than its limits allow (no 429 storm). ``POST /answer/stream``
streams the answer's text as it is generated (``stream=True``, ``on_chunk=``).

A client that disconnects while its question waits for quota withdraws it (the call is
not sent and holds no quota); one already sent finishes and is billed.

Run it (against the MockProvider, no API key needed)::

    pip install 'rate_limited[openai]' fastapi uvicorn
    rate-limited mock-provider --port 8001 --rpm 600 &
    RATE_LIMITED_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=mock \
        uvicorn --factory examples.fastapi_service:create_app

Set ``OPENAI_API_KEY`` and leave ``RATE_LIMITED_BASE_URL`` unset to use OpenAI itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from rate_limited import RunHandle, Runner
from rate_limited.apis.openai import ChatCompletions

MODEL = os.environ.get("RATE_LIMITED_MODEL", "gpt-4o-mini")


class Question(BaseModel):
    text: str = Field(min_length=1, max_length=10_000)
    max_tokens: int = Field(default=200, ge=1, le=4_096)


class Answer(BaseModel):
    text: str
    tokens: int


class Batch(BaseModel):
    texts: list[str] = Field(min_length=1)
    max_tokens: int = Field(default=200, ge=1, le=4_096)


class BatchStatus(BaseModel):
    done: bool
    counts: dict[str, int]


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the server's ``http.disconnect`` message)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, call: Any) -> Any:
    """Await ``call`` (a ``runner.call(...)`` coroutine) unless the client goes away first:
    then the call is cancelled, which withdraws it if it was not sent yet."""
    answer = asyncio.ensure_future(call)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not answer.done():
        answer.cancel()
        raise ClientGone
    return answer.result()


def create_app(
    client: Any = None,
    *,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    **runner_options: Any,
) -> FastAPI:
    """The service, its Runner on ``client`` (default: an ``openai.AsyncOpenAI`` for
    ``RATE_LIMITED_BASE_URL``); limits left as None are read from the headers."""
    if client is None:
        client = openai.AsyncOpenAI(base_url=os.environ.get("RATE_LIMITED_BASE_URL"))
    chat = ChatCompletions(
        client, requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute
    )
    runner: Runner = chat.runner(progress=False, **runner_options)
    batches: list[RunHandle] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(runner.close)  # the batch stops; running calls finish

    app = FastAPI(title="rate_limited online + batch example", lifespan=lifespan)
    app.state.runner = runner

    @app.post("/answer")
    async def answer(question: Question, request: Request) -> Answer:
        try:
            completion = await unless_disconnected(
                request,
                runner.call(
                    model=MODEL, messages=messages(question.text), max_tokens=question.max_tokens
                ),
            )
        except ClientGone:
            raise HTTPException(499, "client closed the request") from None
        except openai.APIStatusError as exc:
            raise HTTPException(502, f"the provider answered {exc.status_code}") from exc
        usage = completion.usage
        return Answer(
            text=completion.choices[0].message.content or "",
            tokens=usage.total_tokens if usage is not None else 0,
        )

    @app.post("/answer/stream")
    async def answer_stream(question: Question) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def on_chunk(chunk: Any) -> None:  # on the Runner's loop: hand over to this one
            for choice in chunk.choices:
                if choice.delta.content:
                    loop.call_soon_threadsafe(pieces.put_nowait, choice.delta.content)

        async def produce() -> None:
            try:
                await runner.call(
                    model=MODEL,
                    messages=messages(question.text),
                    max_tokens=question.max_tokens,
                    stream=True,
                    on_chunk=on_chunk,
                )
            finally:
                pieces.put_nowait(None)

        async def text() -> AsyncIterator[str]:
            producer = asyncio.ensure_future(produce())
            try:
                while (piece := await pieces.get()) is not None:
                    yield piece
                await producer  # its error, if it failed, ends the response
            finally:
                producer.cancel()  # the client went away: withdraw the call

        return StreamingResponse(text(), media_type="text/plain; charset=utf-8")

    @app.post("/batch")
    async def start_batch(batch: Batch) -> BatchStatus:
        if batches and not batches[-1].done():
            raise HTTPException(409, "a batch is already running")
        for text in batch.texts:
            runner.schedule(model=MODEL, messages=messages(text), max_tokens=batch.max_tokens)
        batches.append(runner.start())
        return BatchStatus(done=False, counts={"pending": len(batch.texts)})

    @app.get("/batch")
    async def batch_status() -> BatchStatus:
        if not batches:
            raise HTTPException(404, "no batch was started")
        handle = batches[-1]
        if handle.done():  # the RunResult (and a new batch for the Runner)
            return BatchStatus(done=True, counts=handle.result().counts())
        return BatchStatus(done=False, counts=handle.snapshot().counts())

    return app
