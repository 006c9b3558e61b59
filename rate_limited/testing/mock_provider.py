"""MockProvider: a local HTTP server that speaks OpenAI's and Anthropic's wire formats.

It is the package's testing seam: the real ``openai`` and ``anthropic`` clients work
against it unmodified (``base_url=mp.base_url``, or ``mp.anthropic_base_url`` for
Anthropic), and it enforces rate limits the way the providers document them, with its
own code — it never imports the package's ledger, so it catches that ledger lying.

Endpoints: ``POST /v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``,
``/v1/messages`` (Anthropic) and ``GET /v1/models``; the Batch APIs (OpenAI's
``/v1/files`` and ``/v1/batches``, Anthropic's ``/v1/messages/batches``: see
``_batch_routes`` and ``_batch_jobs``, with their documented limits, on a clock that
``BatchSettings.time_scale`` speeds up or a ``FakeClock`` drives); unknown paths get a
404, bodies the real API would refuse a 400, a missing API key a 401 (``Authorization: Bearer`` for
OpenAI, ``x-api-key`` for Anthropic). Streaming is refused with a 400.

The rules, each documented where it lives:

* Tokens (``_tokens``): each ``\\w+|[^\\w\\s]`` match costs ceil(len/4); 4 per message,
  3 per prompt, 85 per image or other media part; ``count_tokens`` is public.
* Limits (``_limits``, ``_buckets``): token buckets of capacity = the per-minute limit,
  refilled continuously at limit/60 per second, one set per model. An OpenAI request is
  admitted if 1 request and ``prompt + max_tokens * n`` tokens fit (``max_completion_tokens``
  wins over ``max_tokens``; ``default_max_tokens`` when both are absent; embeddings cost
  the prompt only). An Anthropic request needs 1 request, its prompt in the input bucket
  and ``max_tokens`` in the output bucket. Over the limit: 429 with ``retry-after`` (whole
  seconds, rounded up; OpenAI also ``retry-after-ms``); a request larger than a whole
  bucket gets a 429 with ``x-should-retry: false``. Every answer past the request checks
  (200, 429, 500) carries the provider's rate-limit headers for each limited bucket, as
  of the request's arrival (Anthropic's token counts rounded to the thousand).
* Settlement, each wire format by its provider's documented rule unless
  ``refund_unused_output`` says otherwise for both:

  - OpenAI keeps what it reserved: "Your rate limit is calculated as the maximum of
    max_tokens and the estimated number of tokens based on the character count of your
    request" (platform.openai.com/docs/guides/rate-limits), so the token bucket stays
    charged ``prompt + max_tokens * n`` (``refund_unused_output=False``).
  - Anthropic hands the unused output back: "OTPM rate limits are estimated based on
    max_tokens at the beginning of each request, and the estimate is adjusted at the end
    of the request to reflect the actual number of output tokens used"
    (docs.anthropic.com/en/api/rate-limits), so the output bucket ends up charged the
    actual output tokens (``refund_unused_output=True``).
* Faults (``_faults``): only admitted requests are faulted, and they keep everything
  admission charged (no refund), as a provider that failed mid-way has billed already.
* Billing (``_billing``): ``billed_usd()`` prices the answered requests of its log at the
  providers' list prices, by its own arithmetic, never the package's price table.
* Answers (``_outputs``): heavy-tailed lengths capped at ``max_tokens``, text that starts
  with the last user message (or its ``prompt_digest``) and whose ``count_tokens`` is the
  reported completion tokens, all drawn from a per-request seeded rng (``_app``).

Run it from code (``with MockProvider(rpm=60) as mp: ...``) or from a shell:
``rate-limited mock-provider --rpm 60`` (``rate_limited.cli.mock_provider``).
``transport()`` answers in-process instead, on the caller's own event loop and without a
socket: with ``clock=FakeClock().time`` and a Runner on that ``FakeClock``, a minute of
rate limits (latency included) costs no real time.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any

from ._app import MockApp
from ._batch_jobs import BatchSettings, BatchStats
from ._billing import billed_usd
from ._faults import Faults
from ._http import HttpRequest, HttpServer, raise_open_files_limit
from ._limits import Family, Limits, RateLimiter
from ._outputs import OutputModel, OutputTokens, ReplyMode, prompt_digest
from ._stats import MockProviderStats, RequestLogEntry, StatsRecorder
from ._tokens import count_tokens

__all__ = [
    "BatchSettings",
    "BatchStats",
    "Faults",
    "Limits",
    "MockProvider",
    "MockProviderStats",
    "RequestLogEntry",
    "count_tokens",
    "prompt_digest",
]

#: Models listed by ``GET /v1/models`` (any model name is accepted by the endpoints).
DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
)


#: What each provider documents about unused output (see the module docstring).
DOCUMENTED_REFUNDS: Mapping[Family, bool] = {"openai": False, "anthropic": True}


class _Keep(enum.Enum):
    KEEP = "keep"


_KEEP = _Keep.KEEP


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class MockProvider:
    """A rate-limited fake OpenAI/Anthropic API on 127.0.0.1, served from its own thread.

    Limits are per minute and per model, None meaning unlimited: ``rpm`` (each API family
    has its own request bucket), ``tpm`` (OpenAI), ``input_tpm`` and ``output_tpm``
    (Anthropic); ``model_limits`` gives some models limits of their own, and
    ``per_model=False`` makes the others share one set of buckets.
    ``refund_unused_output`` (None: each provider's documented rule, see the module
    docstring) says whether unused output goes back to the bucket at the answer. ``clock``
    replaces ``time.monotonic`` for the buckets (e.g. ``FakeClock().time``, with a client on
    that clock's loop). Answers take ``latency`` +
    ``latency_per_token`` * output tokens + uniform [0, ``jitter``) seconds and have
    ``output_tokens`` tokens (fixed, drawn by a callable, or lognormal around
    ``median_output_tokens`` when None), all reproducible from ``seed``. ``batch`` sets
    the batch endpoints' limits and timing (``BatchSettings``), ``batch_clock`` their
    clock (default: ``clock``, else ``time.monotonic``; e.g. ``FakeClock().time``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rpm: float | None = None,
        tpm: float | None = None,
        input_tpm: float | None = None,
        output_tpm: float | None = None,
        model_limits: Mapping[str, Limits] | None = None,
        latency: float = 0.0,
        latency_per_token: float = 0.0,
        jitter: float = 0.0,
        output_tokens: OutputTokens = None,
        median_output_tokens: float = 100.0,
        reply: ReplyMode = "echo",
        default_max_tokens: int = 4096,
        faults: Faults | None = None,
        seed: int = 0,
        api_key: str | None = None,
        refund_unused_output: bool | None = None,
        per_model: bool = True,
        clock: Callable[[], float] | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dimensions: int = 16,
        log_requests: bool = True,
        batch: BatchSettings | None = None,
        batch_clock: Callable[[], float] | None = None,
    ) -> None:
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        self._host = host
        self._requested_port = port
        self._port = 0
        self._stats = StatsRecorder(log_requests=log_requests)
        now = clock if clock is not None else time.monotonic
        self._limiter = RateLimiter(
            Limits(rpm=rpm, tpm=tpm, input_tpm=input_tpm, output_tpm=output_tpm),
            model_limits,
            now=now,
            per_model=per_model,
        )
        refunds: dict[Family, bool] = dict(DOCUMENTED_REFUNDS)
        if refund_unused_output is not None:
            refunds = dict.fromkeys(refunds, bool(refund_unused_output))
        #: Whether each wire format hands unused output back at the answer.
        self.refunds: Mapping[Family, bool] = refunds
        self._app = MockApp(
            limiter=self._limiter,
            stats=self._stats,
            outputs=OutputModel(
                output_tokens=output_tokens,
                median_output_tokens=median_output_tokens,
                reply=reply,
                latency=latency,
                latency_per_token=latency_per_token,
                jitter=jitter,
            ),
            faults=faults or Faults(),
            seed=seed,
            default_max_tokens=default_max_tokens,
            models=models,
            api_key=api_key,
            embedding_dimensions=embedding_dimensions,
            refund_unused_output=refunds,
            clock=now,
            batch_settings=batch,
            batch_clock=batch_clock,
        )
        settings = self._app.batches.settings
        # Room for the largest batch upload the limits allow, so the limits answer it.
        largest = max(settings.openai_max_file_bytes, settings.anthropic_max_bytes)
        self._server = HttpServer(self._app.handle, max_body=max(64 << 20, largest + (1 << 20)))
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> MockProvider:
        """Start serving in a background daemon thread; returns once it is listening.

        It also raises the process's soft limit of open files to 4096 where it is lower,
        so one process can hold both ends of hundreds of connections.
        """
        if self._state is _State.RUNNING:
            raise RuntimeError("MockProvider is already running")
        if self._state is _State.STOPPED:
            raise RuntimeError("a stopped MockProvider cannot be restarted; create a new one")
        raise_open_files_limit(4096)
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="MockProvider", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._state = _State.STOPPED
            raise failure[0]
        self._state = _State.RUNNING
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._port = loop.run_until_complete(
                self._server.start(self._host, self._requested_port)
            )
        except BaseException as exc:  # e.g. the port is taken: re-raised by start()
            failure.append(exc)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._server.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Stop serving: end open connections and requests in work, join the thread."""
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> MockProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if not self._port:
            raise RuntimeError("MockProvider is not started; call start() or use `with`")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``/``AsyncOpenAI``: ``http://HOST:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for ``anthropic.Anthropic``/``AsyncAnthropic`` (no ``/v1``)."""
        return self.url

    def transport(self, sdk: ModuleType | None = None) -> Any:
        """An ``httpx`` async transport that answers in-process, on the event loop of the
        client using it (its latency an ``asyncio.sleep`` there); no need to ``start()``::

            http = openai.DefaultAsyncHttpxClient(transport=mp.transport(openai))
            client = openai.AsyncOpenAI(base_url="http://mock/v1", http_client=http)

        ``sdk``: the SDK module whose client will use it (``openai``, ``anthropic``): an SDK
        that ships its own copy of httpx needs a transport of that copy (default: httpx).
        With ``clock=FakeClock().time`` and the Runner on that FakeClock, the buckets, the
        latency and the client's timeouts are all virtual."""
        httpx: Any
        if sdk is not None:
            base = sdk.DefaultAsyncHttpxClient.__mro__[1]
            httpx = sys.modules[base.__module__.split(".")[0]]
        else:
            import httpx
        app = self._app

        async def handle(request: Any) -> Any:
            body = await request.aread()
            answer = await app.handle(
                HttpRequest(
                    method=request.method,
                    path=request.url.path,
                    query=request.url.query.decode(),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                )
            )
            if answer is None:  # a dropped connection
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            headers = [("content-type", answer.content_type), *answer.headers]
            return httpx.Response(answer.status, headers=headers, content=answer.body)

        return httpx.MockTransport(handle)

    # -- limits and faults at runtime --------------------------------------------------

    def limits(self, model: str | None = None) -> Limits:
        """The limits in force (for ``model``, if it has limits of its own)."""
        return self._limiter.limits(model)

    def set_limits(
        self,
        *,
        rpm: float | _Keep | None = _KEEP,
        tpm: float | _Keep | None = _KEEP,
        input_tpm: float | _Keep | None = _KEEP,
        output_tpm: float | _Keep | None = _KEEP,
        model: str | None = None,
    ) -> None:
        """Change some limits now (None: unlimited; omitted: unchanged).

        With ``model``, that model gets limits of its own (starting from the shared ones).
        Buckets keep what is in use: lowering a limit below it leaves a debt to refill.
        """
        given = {"rpm": rpm, "tpm": tpm, "input_tpm": input_tpm, "output_tpm": output_tpm}
        current = self._limiter.limits(model)
        values = {name: getattr(current, name) for name in given}
        values.update({k: v for k, v in given.items() if not isinstance(v, _Keep)})
        self._limiter.set_limits(Limits(**values), model)

    def refill(self) -> None:
        """Fill every bucket, as if the server had been idle for a minute."""
        self._limiter.refill()

    def buckets(self) -> dict[str, tuple[float, float]]:
        """``{bucket: (available now, limit)}``, e.g. ``"openai.tokens[gpt-4o]"`` (a
        consistent snapshot, safe from any thread: for samplers and tests)."""
        return self._limiter.levels()

    @property
    def faults(self) -> Faults:
        """The fault probabilities in force."""
        return self._app.faults

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the fault probabilities (None: no faults) for requests from now on."""
        self._app.faults = faults or Faults()

    # -- what it saw -------------------------------------------------------------------

    def stats(self) -> MockProviderStats:
        """A snapshot of the counters (thread-safe)."""
        return self._stats.snapshot()

    @property
    def request_log(self) -> list[RequestLogEntry]:
        """A copy of the log of every request, in the order outcomes were decided."""
        return self._stats.log()

    def billed_usd(self, prices: Mapping[str, tuple[float, float]] | None = None) -> float:
        """USD the answered requests would have cost at the providers' list prices (or
        ``prices``: model -> (input, output) USD per million tokens), by the mock's own
        arithmetic over its request log and its ended batches' answers, those at half
        price (see ``rate_limited.testing._billing``)."""
        return billed_usd(self._stats.log(), prices, self._app.batches.billed_usage())

    def reset_stats(self) -> None:
        """Clear counters, peaks and the request log (the buckets are left as they are)."""
        self._stats.reset()
        self._app.batches.reset_stats()

    def batch_stats(self) -> BatchStats:
        """What the batch endpoints saw: files uploaded, batches created and cancelled."""
        return self._app.batches.stats()

    @property
    def batch_settings(self) -> BatchSettings:
        """The batch endpoints' limits and timing."""
        return self._app.batches.settings

    def __repr__(self) -> str:
        where = self.url if self._state is _State.RUNNING else self._state.value
        return f"<MockProvider {where} {self.limits()}>"
