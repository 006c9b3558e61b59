"""``Runner``: wrap a callable, declare its quotas, ``schedule()`` calls, ``run()`` them.

The Runner owns an asyncio event loop running in a background daemon thread, started on
the first run and reused by every later one (the engine, its ledger and its thread pool
live there). So the same blocking ``run()`` works in a script, in a Jupyter cell and
inside a running event loop, and ``run_coro()`` is the same thing for async code.

``run()`` is ``start().result()``: ``start()`` returns a ``RunHandle`` at once (a
background run, e.g. in a notebook) and ``result()`` waits for it.

Ctrl-C / "interrupt kernel": ``run()`` installs its own SIGINT handler before it starts
the batch (and restores the previous one after), because Python 3.11+'s ``asyncio.run``
handler only cancels the main task, which a blocking call never notices. The handler asks
the engine to stop: admission stops and ``run()`` returns the partial ``RunResult``
(``interrupted=True``) at once. Calls already started, sync threads and coroutines alike,
were paid for: they stay ``running`` on the Runner's loop, their results are kept (and
stored) when they arrive, and the next ``run()`` waits for them instead of sending them
again; ``close()`` (and, with a store, the end of the program) waits for them too. A
second Ctrl-C abandons them and says how many.

A Runner lives as long as its unfinished ``Call`` objects are held (each refers to it until
its run has ended), so dropping the variable that held the Runner does not break the calls
scheduled through it, nor a run going on in the background.

After a run that was not interrupted, the Runner starts a new batch: the next ``run()``
returns only calls scheduled after it, as in rate_limited 0.4.

``as_completed()`` yields the outcomes as the calls finish (``rate_limited._completed``);
``call()`` / ``call_sync()`` run one online call through the same quotas, ahead of the
batch's waiting calls (``rate_limited._online``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

from rate_limited._clock import Clock, MonotonicClock
from rate_limited._completed import AsCompleted, Subscribe
from rate_limited._engine import Engine, is_async_callable
from rate_limited._feedback import FeedbackSource, LedgerControl
from rate_limited._gc import bulk_allocation
from rate_limited._ledger import Ledger
from rate_limited._online import ONLINE_PRIORITY, OnlineCalls, Priorities
from rate_limited._policy import (
    Validator,
    exponential_backoff,
    normalize_validators,
    retry_if_transient,
)
from rate_limited._redact import describe, get_logger
from rate_limited.calls import Call, CallOwner, Result
from rate_limited.exceptions import (
    ConfigurationError,
    QuotaExceededError,
    RateLimitedWarning,
    RunnerClosedError,
    StoreError,
    StoreWarning,
    warn,
)
from rate_limited.handle import RunHandle, SigintGuard
from rate_limited.outcomes import RunResult, Status
from rate_limited.progress import Progress, check_progress, make_progress
from rate_limited.resources import Resource
from rate_limited.stores.base import Store

if TYPE_CHECKING:
    import pandas

    from rate_limited.semantic import SemanticCache
    from rate_limited.semantic._step import SemanticStep

__all__ = ["Runner"]

logger = get_logger("rate_limited")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, clock: Clock, name: str) -> None:
        self.loop = clock.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            self.loop.call_soon_threadsafe(callback, *args)


def _shutdown(loop_thread: _LoopThread | None, engine: Engine | None) -> None:
    """Stop the loop thread and the pool; safe to call twice, from any thread.

    At the end of the program, calls still running after an interrupt are waited for
    first when their results can be stored (``_wait_at_exit``). Coroutines still running
    are cancelled, not dropped half-way.
    """
    if loop_thread is None or loop_thread.loop.is_closed():
        if engine is not None and engine.pool is not None:
            engine.pool.shutdown()
        return
    loop = loop_thread.loop
    in_loop_thread = threading.current_thread() is loop_thread.thread
    if engine is not None and not in_loop_thread:
        if not threading.main_thread().is_alive():  # finalizers run at exit: the end
            _wait_at_exit(engine)
        if engine.running_calls:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(engine.abandon_and_wait(), loop).result(5)
    if engine is not None and engine.pool is not None:
        engine.pool.shutdown(wait=1.0)  # idle threads exit at once; busy ones finish later
    if not in_loop_thread:  # close async generators left open (an SDK's stream), as asyncio.run
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(5)
    loop_thread.call_soon(loop.stop)
    if not in_loop_thread:
        loop_thread.thread.join(timeout=5)
        if not loop_thread.thread.is_alive():
            loop.close()


#: Seconds the end of the program waits for calls still running (with a store).
EXIT_WAIT_SECONDS = 30.0


def _wait_at_exit(engine: Engine) -> None:
    """At the end of the program: wait for the calls still running after an interrupt,
    so that their paid-for results reach the store (Ctrl-C stops waiting)."""
    if engine.store is None or not engine.running_calls:
        return
    print(
        f"rate_limited: waiting up to {EXIT_WAIT_SECONDS:.0f} s for {engine.running_calls} "
        "call(s) still running, so that their results are stored (Ctrl-C abandons them)",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    try:
        while engine.running_calls and time.monotonic() < deadline:
            time.sleep(0.02)
    except KeyboardInterrupt:
        return
    if engine.store is not None:
        with contextlib.suppress(Exception):
            loop = engine.loop
            asyncio.run_coroutine_threadsafe(_flush(engine), loop).result(5)


async def _flush(engine: Engine) -> None:
    engine._flush_store(final=True)


class Runner(CallOwner):
    """Runs calls of ``function`` as fast as ``resources`` allow, and never faster."""

    def __init__(
        self,
        function: Callable[..., Any],
        resources: Iterable[Resource] = (),
        max_concurrent: int = 64,
        max_retries: int = 5,
        validation_function: Callable[[Result], bool] | None = None,
        progress_interval: float = 0.1,
        long_wait_warning_seconds: float | None = 2.0,
        *,
        validation: Validator | Iterable[Validator] | None = None,
        retry_if: Callable[[BaseException], bool] = retry_if_transient,
        backoff: Callable[[int, BaseException | None], float] | None = None,
        timeout: float | None = None,
        progress: object = None,
        clock: Clock | None = None,
        name: str | None = None,
        store: str | os.PathLike[str] | Store | None = None,
        key: Callable[[Call], str] | None = None,
        refresh: bool = False,
        ttl: float | None = None,
        retry_failed: bool = True,
        event_loop: Literal["own", "current"] = "own",
        rate_limit_patience: float | None = 600.0,
        semantic_cache: SemanticCache | None = None,
    ) -> None:
        """Wrap ``function`` (sync or async callable: function, partial, lambda, method).

        Args:
            function: what each scheduled call calls.
            resources: the quotas, as ``Resource`` objects (names must be unique).
            max_concurrent: most calls in flight at once.
            max_retries: retries after a failed attempt (so ``max_retries + 1`` attempts).
                An HTTP 429 does not count: the provider refused the request, so it is
                sent again when the ledger (corrected by the 429) says it fits.
            validation_function: rate_limited 0.4's single validator (kept as an alias).
            progress_interval: least seconds between two progress updates.
            long_wait_warning_seconds: say so when every call waits this long for quota
                (None: never).
            validation: a validator or a list of them; each gets the value and returns
                True if it is valid. An invalid value is a ``ValidationError``, retried.
            retry_if: which exceptions are retried (default: all but permanent errors,
                see ``rate_limited.retry_if_transient``).
            backoff: ``(errors, exception) -> seconds`` before retrying an error (default:
                ``exponential_backoff()``, 0.25 s doubling to 8 s, full jitter). A failed
                validation is retried at once. A 429's ``Retry-After`` pauses every call.
            timeout: seconds one attempt may take; past it, the attempt fails with
                ``CallTimeoutError`` and is retried (None: no limit).
            progress: None (automatic), True, False, ``"tqdm"``, ``"log"`` or a Progress.
            clock: where time comes from (``rate_limited.testing.FakeClock`` in tests).
            name: shown in logs and thread names (default: the function's name).
            store: where finished calls are kept, so that a rerun (even in a new process)
                and any runner sharing the store get them back without calling again:
                ``"runs.db"`` / ``"sqlite:///runs.db"``, ``"redis://host:6379/0"``,
                ``"memory://"`` or a ``Store``. None (default): kept in this Runner only.
            key: ``key(call) -> str`` identifies a call in the store (default: a hash of
                the function and its arguments, secrets such as API keys left out).
            refresh: ignore stored outcomes (the calls run again and overwrite them).
            ttl: seconds after which a stored outcome no longer counts.
            retry_failed: run calls that failed in an earlier run again (default True).
            event_loop: ``"own"`` (default): the engine runs on the Runner's own loop in a
                background thread. ``"current"``: an async function runs on the loop that
                calls ``run()`` (a notebook's), made re-entrant with nest_asyncio; use it
                when your async client is bound to that loop (e.g. an aiohttp session made
                in a cell). Sync functions always use the Runner's own loop.
            rate_limit_patience: seconds of nothing but HTTP 429s (no attempt answered
                otherwise) after which the run gives up: the calls still waiting fail
                with ``RateLimitedTooLongError`` (None: never give up).
            semantic_cache: a ``rate_limited.semantic.SemanticCache``: a call asked before
                in other words (and identical in everything else) takes the stored answer
                of the earlier call instead of being sent. Needs ``store=``; off with
                ``refresh=True`` (fresh answers are still indexed) or None (default).
        """
        if not callable(function):
            raise ConfigurationError(
                f"function must be callable (the API call to run), got "
                f"{type(function).__name__}: {function!r}."
            )
        self.function = function
        self.resources = _check_resources(resources)
        self.max_concurrent = _check_int(max_concurrent, "max_concurrent", minimum=1)
        self.max_retries = _check_int(max_retries, "max_retries", minimum=0)
        self.validators = normalize_validators(validation, validation_function)
        self.progress_interval = _check_seconds(progress_interval, "progress_interval", zero=True)
        self.long_wait_warning_seconds = (
            None
            if long_wait_warning_seconds is None
            else _check_seconds(long_wait_warning_seconds, "long_wait_warning_seconds", zero=True)
        )
        self.timeout = None if timeout is None else _check_seconds(timeout, "timeout")
        self.rate_limit_patience = (
            None
            if rate_limit_patience is None
            else _check_seconds(rate_limit_patience, "rate_limit_patience")
        )
        if not callable(retry_if):
            raise ConfigurationError(f"retry_if must be a callable, got {retry_if!r}.")
        if backoff is not None and not callable(backoff):
            raise ConfigurationError(f"backoff must be a callable, got {backoff!r}.")
        self.retry_if = retry_if
        self.backoff = backoff if backoff is not None else exponential_backoff()
        check_progress(progress)  # validate now; each run builds its own display
        self._progress_spec = progress
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"clock must have a new_event_loop() method (e.g. FakeClock()), got {clock!r}."
            )
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.name = name or _function_name(function)
        if event_loop not in ("own", "current"):
            raise ConfigurationError(f"event_loop must be 'own' or 'current', got {event_loop!r}.")
        if event_loop == "current" and clock is not None and not isinstance(clock, MonotonicClock):
            raise ConfigurationError(
                "event_loop='current' runs on the caller's loop, whose time is real; it "
                "cannot be combined with another clock= (e.g. FakeClock)."
            )
        #: Where the engine runs: the Runner's own loop thread, or the caller's loop.
        self.event_loop = event_loop
        self._runs_on_loop = is_async_callable(function)
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be a callable key(call) -> str, got {key!r}.")
        if ttl is not None:
            _check_seconds(ttl, "ttl")
        self._key = key
        self.refresh = bool(refresh)
        self.retry_failed = bool(retry_failed)
        #: The store finished calls are kept in (None: this Runner only).
        self.store: Store | None = None
        self._owns_store = False
        if store is not None:
            from rate_limited.stores import Store as StoreClass
            from rate_limited.stores import open_store

            if isinstance(store, StoreClass):
                if ttl is not None:
                    raise ConfigurationError(
                        "ttl= applies when the Runner opens the store from a URL or path; "
                        "for a Store object, pass ttl= to open_store() instead."
                    )
                self.store = store
            else:
                self._owns_store = True
                self.store = open_store(store, ttl=ttl)
        elif ttl is not None:
            raise ConfigurationError("ttl= needs a store= to expire outcomes from.")
        self.logger = get_logger(f"rate_limited.Runner.{self.name}")
        #: The semantic cache bound to the store (None: no semantic cache).
        self.semantic_cache = semantic_cache
        self._semantic = self._bind_semantic_cache(semantic_cache)

        #: Calls of the current batch, in schedule order.
        self.scheduled_calls: list[Call] = []
        self._extractors = [
            (r, r.arguments_usage_extractor, r.max_results_usage_estimator) for r in self.resources
        ]
        self._loop_thread: _LoopThread | None = None
        self._engine: Engine | None = None  # on the Runner's own loop thread
        self._caller_engine: Engine | None = None  # event_loop="current"
        self._active_engine: Engine | None = None  # the one the last run used
        #: The RunResult of the last run that ended (``run()``, ``start()``, ``apply()``):
        #: ``runner.last_result.plot()`` / ``.to_pandas()`` after an ``apply()``.
        self.last_result: RunResult | None = None
        #: The result of the last completed ``apply()`` (rerunning that cell sends nothing).
        self._last_apply: RunResult | None = None
        self._active_future: concurrent.futures.Future[tuple[bool, float]] | None = None
        self._run_seq = 0  # numbers the runs, so that a stop reaches the right one
        # One ledger for the Runner's life, whichever loop its engine runs on.
        self._ledger = Ledger(self.resources)
        # The engines on the Runner's loop (the batch's, the online calls') take turns by
        # priority; the online calls' engine is made by the first call().
        self._priorities = Priorities(self._ledger)
        self._online: OnlineCalls | None = None
        # The handle of the last start() (weak: it holds the Runner), for as_completed().
        self._active_handle: weakref.ref[RunHandle] | None = None
        self._listeners_lock = threading.Lock()
        #: schedule() and call() take ``priority=`` unless the function has its own.
        self._takes_priority = not _declares(function, "priority")
        self._running = False
        self._start_lock = threading.Lock()
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._function_identity = ""
        if self.store is not None:
            from rate_limited._keys import function_identity

            self._function_identity = function_identity(function)
        #: schedule() has work beyond creating the Call (usage extraction, keys).
        self._slow_schedule = bool(self._extractors) or self.store is not None
        self.schedule = self._make_schedule(function)  # type: ignore[method-assign]

    # -- scheduling --------------------------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Call:
        """Schedule a call: ``runner.schedule(x, y=1)`` where you would call ``f(x, y=1)``.

        Returns the Call handle; ``run()`` runs it. (Each Runner replaces this method with
        a wrapper carrying the wrapped function's signature and docstring.)
        """
        return self._schedule(args, kwargs)

    def _schedule(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        if self._closed:
            raise RunnerClosedError("This Runner was closed; create a new Runner to schedule.")
        priority = self._pop_priority(kwargs, 0)
        calls = self.scheduled_calls
        call = Call(self.function, args, kwargs, len(calls), self)
        if priority:
            call.priority = priority
        if self._extractors:
            call.demand = self._demand_of(call)
        if self.store is not None:
            call.key = self._key_of(call)
        if self._semantic is not None:
            self._semantic.check(call)  # a text= that can't split the call: an error now
        calls.append(call)
        engine = self._active_engine
        if self._running and engine is not None:
            try:
                on_its_loop = asyncio.get_running_loop() is engine.loop
            except RuntimeError:
                on_its_loop = False
            if on_its_loop:
                engine.enqueue(call)
            else:
                with contextlib.suppress(RuntimeError):  # loop closed: next run() has it
                    engine.loop.call_soon_threadsafe(engine.enqueue, call)
        return call

    def _pop_priority(self, kwargs: dict[str, Any], default: int) -> int:
        """``priority=`` taken out of the call's keyword arguments (unless the function
        declares a ``priority`` parameter of its own: then it is the function's)."""
        if not self._takes_priority or "priority" not in kwargs:
            return default
        priority = kwargs.pop("priority")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigurationError(
                f"priority must be an int (larger goes first; schedule() defaults to 0, "
                f"call() to {ONLINE_PRIORITY}), got {priority!r}."
            )
        return priority

    def _demand_of(self, call: Call) -> tuple[tuple[float, float, Hashable], ...]:
        demand = []
        for resource, args_extractor, estimator in self._extractors:
            name = resource.name
            args_usage = _usage(args_extractor, call, name, "arguments_usage_extractor")
            estimate = _usage(estimator, call, name, "max_results_usage_estimator")
            if resource.partition is None:
                key: Hashable = None
                quota: float = resource.quota
            else:
                key = _partition(resource, call)
                quota = resource.quota_for(key)
            needed = args_usage + estimate
            if needed > quota * (1 + 1e-9):  # the ledger's rounding slack
                raise QuotaExceededError(
                    f"Call {call!r} exceeds resource quota of {name!r}: it needs {needed:g} "
                    f"but the whole quota is {quota:g}, so it could never run. Raise the "
                    "quota, lower the call's usage (e.g. max_tokens) or split the call.",
                    resource=name,
                    needed=needed,
                    quota=quota,
                )
            demand.append((args_usage, estimate, key))
        return tuple(demand)

    def _bind_semantic_cache(self, cache: SemanticCache | None) -> SemanticStep | None:
        if cache is None:
            return None
        from rate_limited.semantic import SemanticCache
        from rate_limited.semantic._step import SemanticStep

        if not isinstance(cache, SemanticCache):
            raise ConfigurationError(
                f"semantic_cache must be a rate_limited.semantic.SemanticCache or None, got "
                f"{cache!r}."
            )
        if self.store is None:
            raise ConfigurationError(
                "semantic_cache= answers calls with the stored outcomes of earlier ones, so it "
                "needs a store: pass store='runs.db' (kept across kernel restarts), "
                "'redis://...' or 'memory://' (this process only)."
            )
        return SemanticStep(cache, self.store, lookups=not self.refresh)

    def _key_of(self, call: Call) -> str:
        if self._key is not None:
            try:
                key = self._key(call)
            except Exception as exc:
                raise ConfigurationError(
                    f"key= raised {describe(exc, call)} for {call!r}."
                ) from exc
            if not isinstance(key, str) or not key:
                raise ConfigurationError(
                    f"key= must return a non-empty str, got {key!r} for {call!r}."
                )
            return key
        from rate_limited._keys import call_key

        return call_key(self.function, call.args, call.kwargs)

    def _make_schedule(self, function: Callable[..., Any]) -> Callable[..., Call]:
        """A ``schedule`` for this instance that looks like ``function`` to IDEs and
        ``help()``; nothing shared (the class, the function) is modified."""
        runner_ref = weakref.ref(self)  # no cycle: a dropped Runner stops its thread at once

        def schedule(*args: Any, **kwargs: Any) -> Call:
            runner = runner_ref()
            if runner is None:
                raise RunnerClosedError(
                    "This Runner no longer exists: nothing referred to it any more (no "
                    "variable, no Call it scheduled), so it was closed. Keep a reference, "
                    "e.g. runner = Runner(...), while you schedule and run calls."
                )
            # The common case inline (this is the whole per-call cost of scheduling).
            if (
                runner._slow_schedule
                or runner._running
                or runner._closed
                or (kwargs and "priority" in kwargs and runner._takes_priority)
            ):
                return runner._schedule(args, kwargs)
            calls = runner.scheduled_calls
            call = Call(function, args, kwargs, len(calls), runner)
            calls.append(call)
            return call

        qualname = getattr(function, "__qualname__", None) or _function_name(function)
        module = getattr(function, "__module__", None) or "[Module not found]"
        try:
            signature: inspect.Signature | None = inspect.signature(function)
        except (TypeError, ValueError):
            signature = None
        schedule.__doc__ = (
            f"Schedule a call to {qualname} in {module}\n"
            "Returns the Call handle - call run() to get results\n\n"
            f"{_function_name(function)}{signature if signature is not None else '(...)'}\n"
            "Docstring:\n\n"
            f"{getattr(function, '__doc__', None) or '[Docstring not found]'}"
        )
        annotations = dict(getattr(function, "__annotations__", None) or {})
        annotations["return"] = None  # as in 0.4 (a copy: the function is left untouched)
        schedule.__annotations__ = annotations
        schedule.__wrapped__ = function  # type: ignore[attr-defined]
        if signature is not None:
            schedule.__signature__ = signature.replace(  # type: ignore[attr-defined]
                return_annotation=Call
            )
        schedule.__qualname__ = f"{type(self).__qualname__}.schedule"
        return schedule

    # -- running -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every scheduled call that has not finished; block until done or interrupted.

        Returns ``RunResult`` (unpacks as ``results, exceptions``), in schedule order.
        Works the same in a script, a notebook and inside a running event loop. Ctrl-C
        (or "interrupt kernel") returns the partial result at once; ``run()`` again
        resumes. Raises only for misuse (a closed or running Runner) or an error of the
        engine itself (e.g. the system refusing threads); a call's errors are in the result.
        """
        # SIGINT is ours before the batch starts: a Ctrl-C at any instant stops the run,
        # and no KeyboardInterrupt can leave run() while the batch goes on without it.
        with SigintGuard() as guard:
            return self.start()._result_guarded(None, guard)

    async def run_coro(self) -> RunResult:
        """``run()`` for async code: ``results, exceptions = await runner.run_coro()``.

        Cancelling the awaiting task stops the run (as an interrupt does) and re-raises.
        """
        return await self.start()

    def start(self) -> RunHandle:
        """Start running the scheduled calls in the background and return at once.

        ``handle.result()`` blocks for the RunResult, ``await handle`` awaits it,
        ``handle.stop()`` stops and returns the partial result, ``handle.results()``
        shows what has finished so far. Calls scheduled meanwhile join the run.
        """
        if self.event_loop == "current" and self._runs_on_loop:
            try:
                caller_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                caller_loop = None  # a plain script: nothing is bound to a loop of its own
            if caller_loop is not None:
                return self._start_on(caller_loop)
        loop_thread = self._loop_thread
        if loop_thread is not None and threading.current_thread() is loop_thread.thread:
            raise RuntimeError(
                "run() was called from inside the Runner's own loop (from the function it "
                "runs); schedule() more calls instead, they join the current run."
            )
        with self._start_lock:  # two threads calling run() at once: one run, one error
            engine, loop_thread = self._ensure_engine()
            self._running = True
            self._active_engine = engine
            self._run_seq += 1
            run_id = self._run_seq
        calls = self.scheduled_calls
        submitted = False
        try:
            # Built here, in the caller's thread: a notebook display lands in its cell.
            progress = make_progress(self._progress_spec)
            future = loop_thread.submit(self._run_batch(engine, calls, progress, run_id))
            submitted = True
        finally:
            if not submitted:  # once submitted, only the batch itself says it has ended
                self._running = False
        self._active_future = future

        def request_abandon() -> concurrent.futures.Future[int]:
            return asyncio.run_coroutine_threadsafe(engine.abandon_and_wait(), engine.loop)

        return self._new_handle(
            engine,
            RunHandle(
                future,
                calls,
                request_stop=lambda: loop_thread.call_soon(engine.request_stop, run_id),
                finish=self._result,
                snapshot=self.results,
                request_abandon=request_abandon,
            ),
        )

    def _start_on(self, loop: asyncio.AbstractEventLoop) -> RunHandle:
        """``event_loop="current"``: run the engine as a task on the caller's running loop,
        made re-entrant by nest_asyncio, so async clients bound to that loop work."""
        import nest_asyncio

        nest_asyncio.apply(loop)
        with self._start_lock:
            self._check_can_start()
            engine = self._caller_engine
            if engine is None or engine.loop is not loop:
                engine = self._caller_engine = self._new_engine(loop)
            self._running = True
            self._active_engine = engine
            self._run_seq += 1
            run_id = self._run_seq
        calls = self.scheduled_calls
        submitted = False
        try:
            progress = make_progress(self._progress_spec)
            task = loop.create_task(self._run_batch(engine, calls, progress, run_id))
            submitted = True
        finally:
            if not submitted:
                self._running = False

        def request_stop() -> None:
            loop.call_soon_threadsafe(engine.request_stop, run_id)

        def request_abandon() -> concurrent.futures.Future[int]:
            return asyncio.run_coroutine_threadsafe(engine.abandon_and_wait(), loop)

        return self._new_handle(
            engine,
            RunHandle(
                task,
                calls,
                request_stop=request_stop,
                finish=self._result,
                snapshot=self.results,
                request_abandon=request_abandon,
            ),
        )

    def _new_handle(self, engine: Engine, handle: RunHandle) -> RunHandle:
        handle._subscribe = self._subscriber(engine)
        self._active_handle = weakref.ref(handle)
        return handle

    def _subscriber(self, engine: Engine) -> Subscribe:
        """Adds final listeners to ``engine`` (from any thread; it reads them on its loop)."""
        lock = self._listeners_lock

        def subscribe(listener: Callable[[Call], None]) -> Callable[[], None]:
            with lock:
                engine.final_listeners = (*engine.final_listeners, listener)

            def unsubscribe() -> None:
                with lock:
                    engine.final_listeners = tuple(
                        other for other in engine.final_listeners if other is not listener
                    )

            return unsubscribe

        return subscribe

    def as_completed(self) -> AsCompleted:
        """The outcomes of a run as its calls finish: ``for outcome in
        runner.as_completed():`` (or ``async for`` in async code).

        Iterating starts the run (or joins the one ``start()`` started); the calls already
        final come first (from an interrupted run, or the store), then each call the moment
        it ends, every call once. Ctrl-C works as in ``run()``: the run stops and the loop
        ends after what has finished; leaving the loop early stops a run it started.
        Afterwards ``.result`` is the RunResult ``run()`` would have returned.
        """
        handle = None if self._active_handle is None else self._active_handle()
        if self._running and handle is not None and not handle.done():
            return handle.as_completed()

        def start() -> tuple[RunHandle, Subscribe]:
            handle = self.start()
            assert handle._subscribe is not None
            return handle, handle._subscribe

        return AsCompleted(start, owns_run=True)

    # -- online calls ------------------------------------------------------------------------
    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run one call now and return its value: ``await runner.call(x, y=1)`` where you
        would ``await f(x, y=1)`` (or call ``f``, for a sync function).

        The call goes through the same quotas as the batch (running or not), billed by the
        same rules, with the same retries, validation and timeouts; it raises the last
        error if it fails for good. ``priority=`` (default 1) puts it ahead of waiting
        calls of a lower priority (the batch's are 0 unless scheduled otherwise).
        Cancelling the awaiting task (a client that disconnects) withdraws the call: if it
        was not sent yet its reservation is released, else it finishes and is billed.
        Online calls run on the Runner's own loop thread (``event_loop="current"`` is for
        batch runs), in an engine of their own with its own ``max_concurrent`` slots.
        """
        online, call = self._online_call(args, kwargs)
        future = asyncio.run_coroutine_threadsafe(online.call(call), online.engine.loop)
        return await asyncio.wrap_future(future)

    #: ``call()``, by the name async libraries use.
    acall = call

    def call_sync(self, *args: Any, **kwargs: Any) -> Any:
        """``call()`` for blocking code (a thread of a web server, a script): returns the
        value or raises the last error. Ctrl-C withdraws the call and raises."""
        loop_thread = self._loop_thread
        if loop_thread is not None and threading.current_thread() is loop_thread.thread:
            raise RuntimeError(
                "call_sync() was called from the Runner's own loop (from the function it "
                "runs), where it would wait for itself; use `await runner.call(...)`."
            )
        online, call = self._online_call(args, kwargs)
        future = asyncio.run_coroutine_threadsafe(online.call(call), online.engine.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def _online_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[OnlineCalls, Call]:
        if self._closed:
            raise RunnerClosedError("This Runner was closed; create a new Runner to call.")
        priority = self._pop_priority(kwargs, ONLINE_PRIORITY)
        call = Call(self.function, args, kwargs, 0, self)
        call.priority = priority
        if self._extractors:
            call.demand = self._demand_of(call)
        if self.store is not None:
            call.key = self._key_of(call)
        return self._ensure_online(), call

    def _ensure_online(self) -> OnlineCalls:
        with self._start_lock:
            if self._online is None:
                _, loop_thread = self._ensure_loop_and_engine()
                engine = self._new_engine(loop_thread.loop, online=True)
                self._online = OnlineCalls(engine)
                loop_thread.call_soon(self._priorities.join, engine)
            return self._online

    async def _run_batch(
        self, engine: Engine, calls: list[Call], progress: Progress | None, run_id: int
    ) -> tuple[bool, float]:
        started = engine.loop.time()
        try:
            interrupted = await engine.run(calls, progress, run_id)
        finally:
            self._running = False
        return interrupted, engine.loop.time() - started

    def _result(self, calls: list[Call], interrupted: bool, elapsed: float) -> RunResult:
        # Paused collector: 100k new lists would trigger full passes over every Call.
        with bulk_allocation(len(calls)):
            succeeded = Status.SUCCEEDED
            results = [c.result if c.status is succeeded else None for c in calls]
            # A call's own list when it has exceptions (as in 0.4), else a new empty one.
            exceptions = [c._exceptions or [] for c in calls]
        if interrupted:
            done = sum(1 for c in calls if c.status.is_final)
            running = sum(1 for c in calls if c.status is Status.RUNNING)
            self.logger.warning(
                "Interrupted: %d of %d calls finished%s; run() again to resume the rest.",
                done,
                len(calls),
                f" and {running} already sent are still running (their results will be "
                "kept; Ctrl-C again abandons them)"
                if running
                else "",
            )
        elif calls is self.scheduled_calls:
            # Complete: the next run() starts a new batch. Calls scheduled after the engine
            # had finished (a background run) were not part of this run: they carry over.
            ran = len(calls)
            while ran and calls[ran - 1].status is Status.PENDING and not calls[ran - 1].attempts:
                ran -= 1
            later = calls[ran:]
            for index, call in enumerate(later):
                call.index = index
            self.scheduled_calls = later
            if later:
                calls = calls[:ran]
                del results[ran:], exceptions[ran:]
        if not interrupted:
            # Every call of the run is final: none needs the Runner to live any more, and
            # last_result (which holds them) must not make a reference cycle through it.
            function = self.function
            for call in calls:
                call._source = function
        result = RunResult(results, exceptions, calls, interrupted, elapsed)
        result.resources = tuple(self.resources)
        engine = self._active_engine
        if engine is not None:
            result.started_at = engine.stats.started_at
            notices, result.store_failures = engine.take_notices()
            for category, text in notices:
                warn(text, category)
        self.last_result = result
        return result

    def _check_can_start(self) -> None:
        if self._closed:
            raise RunnerClosedError("This Runner was closed; create a new Runner to run.")
        if self._running:
            raise RuntimeError(
                "This Runner is already running (a run() or start() has not ended); wait "
                "for it, or stop it with handle.stop()."
            )

    def _ensure_engine(self) -> tuple[Engine, _LoopThread]:
        self._check_can_start()
        return self._ensure_loop_and_engine()

    def _ensure_loop_and_engine(self) -> tuple[Engine, _LoopThread]:
        if self._loop_thread is None or self._engine is None:
            loop_thread = _LoopThread(self.clock, name=f"rate_limited-{self.name}")
            self._loop_thread = loop_thread
            self._engine = self._new_engine(loop_thread.loop)
            self._finalizer = weakref.finalize(self, _shutdown, loop_thread, self._engine)
            loop_thread.call_soon(self._priorities.join, self._engine)
        return self._engine, self._loop_thread

    def _new_engine(self, loop: asyncio.AbstractEventLoop, online: bool = False) -> Engine:
        engine = Engine(
            self.function,
            self.resources,
            loop,
            max_concurrent=self.max_concurrent,
            max_retries=self.max_retries,
            retry_if=self.retry_if,
            backoff=self.backoff,
            validators=self.validators,
            timeout=self.timeout,
            name=self.name,
            long_wait_seconds=self.long_wait_warning_seconds,
            progress_interval=self.progress_interval,
            store=self.store,
            refresh=self.refresh,
            retry_failed=self.retry_failed,
            function_name=self._function_identity,
            ledger=self._ledger,
            rate_limit_patience=self.rate_limit_patience,
            semantic=None if online else self._semantic,
        )
        if isinstance(self.function, FeedbackSource):
            self.function.attach_ledger(LedgerControl(engine))
        return engine

    def apply(
        self,
        frame: pandas.DataFrame,
        row_to_kwargs: Callable[[pandas.Series], Mapping[str, Any]],
    ) -> pandas.DataFrame:
        """One call per row of ``frame``; returns a DataFrame aligned to ``frame.index``.

        ``row_to_kwargs(row)`` gives the call's keyword arguments. The result has one row
        per input row: ``result``, ``status``, ``error``, ``attempts``, ``latency``,
        ``from_store`` and ``usage_<resource>``. Rerunning after an interrupt resumes.
        Every row is scheduled before anything runs: a row that cannot be scheduled (one
        that needs more than a whole quota, say) is named in the error and nothing is
        kept, so the Runner is ready for the corrected frame. The run's RunResult is
        ``runner.last_result`` afterwards (``.plot()``, ``.to_pandas()``).
        """
        from rate_limited.pandas import apply

        return apply(self, frame, row_to_kwargs)

    def results(self) -> RunResult:
        """A snapshot of the current batch, readable while a run is going (from any thread):
        what has finished so far, in schedule order."""
        calls = list(self.scheduled_calls)
        results = [c.result if c.status is Status.SUCCEEDED else None for c in calls]
        exceptions = [list(c._exceptions or ()) for c in calls]
        done = all(c.status.is_final for c in calls)
        result = RunResult(results, exceptions, calls, interrupted=not done)
        result.resources = tuple(self.resources)
        if self._active_engine is not None:
            result.started_at = self._active_engine.stats.started_at
        return result

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Stop the background loop and its threads; the Runner cannot run afterwards.

        A run still going is stopped. Calls still running (say, after a Ctrl-C), in
        threads or coroutines, get up to ``timeout`` seconds to finish, so that their
        paid-for results are kept (and stored); Ctrl-C while it waits, or the timeout,
        abandons them (a warning says how many). A store that can't be written to is not
        an error here: a ``StoreWarning`` says what was not stored (unless a run's warning
        already did).
        """
        self._closed = True
        self._close_online(timeout)
        self._stop_running_batch()
        self._wait_for_running_calls(timeout)
        if self._finalizer is not None:
            self._finalizer()
        for engine in (self._engine, self._caller_engine):
            if engine is not None:  # what calls finishing after their run had to say
                for category, text in engine.take_notices()[0]:
                    warn(text, category)
        if self._semantic is not None:
            self._semantic.flush()
        if self.store is not None:
            self._close_store()

    def _close_online(self, timeout: float) -> None:
        """Online calls not sent fail with RunnerClosedError; those running are abandoned."""
        online, loop_thread = self._online, self._loop_thread
        if online is None or loop_thread is None or loop_thread.loop.is_closed():
            return
        count = 0
        with contextlib.suppress(Exception):
            count = loop_thread.submit(online.close()).result(timeout)
        if count:
            warn(
                f"close() abandoned {count} online call(s) still running: they may have been "
                "billed, and their callers got RunnerClosedError.",
                RateLimitedWarning,
            )

    def _wait_for_running_calls(self, timeout: float) -> None:
        engine = self._engine
        if engine is None or engine.loop.is_closed() or not engine.running_calls:
            return
        abandoned: list[concurrent.futures.Future[int]] = []

        def abandon() -> None:
            if not abandoned:
                coro = engine.abandon_and_wait()
                abandoned.append(asyncio.run_coroutine_threadsafe(coro, engine.loop))

        deadline = time.monotonic() + timeout
        with SigintGuard() as guard:  # Ctrl-C here: stop waiting for them
            guard.attach(abandon)
            while engine.running_calls and not abandoned and time.monotonic() < deadline:
                time.sleep(0.02)  # the engine's loop settles (and stores) them meanwhile
            if engine.running_calls:
                abandon()
        count = abandoned[0].result(10) if abandoned else 0
        if count:
            warn(
                f"close() abandoned {count} call(s) still running after {timeout:g} s or a "
                "Ctrl-C: they may have been billed, and their results are lost.",
                RateLimitedWarning,
            )

    def _close_store(self) -> None:
        """Flush (and close, if the Runner opened it) the store; a flush that fails is
        reported by a StoreWarning for what no run has reported yet, never raised."""
        store = self.store
        assert store is not None
        try:
            if self._owns_store:
                if self._semantic is not None:
                    self._semantic.index.close()
                store.close()
            else:
                store.flush()
        except StoreError as exc:
            reported: set[str] = set()
            for engine in (self._engine, self._caller_engine):
                if engine is not None:
                    reported |= engine._reported_unstored
            unreported = [key for key in store.pending_keys() if key not in reported]
            if unreported:
                warn(
                    f"{len(unreported)} finished call(s) could not be written to the store "
                    f"{store!r} when the Runner closed ({describe(exc)}): a later process "
                    "would call the API again for them.",
                    StoreWarning,
                )

    def _stop_running_batch(self, timeout: float = 5.0) -> None:
        """On close(): stop a run still going and let it end, so that its handle returns
        the partial result instead of waiting for a loop that is gone."""
        engine, future = self._active_engine, self._active_future
        if not self._running or engine is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            engine.loop.call_soon_threadsafe(engine.request_stop)
        if future is None or engine.loop is not getattr(self._loop_thread, "loop", None):
            return  # event_loop="current": the caller's loop ends the task by itself
        with contextlib.suppress(Exception):
            future.result(timeout)
        if not future.done():
            future.set_exception(
                RunnerClosedError("The Runner was closed before its run could stop.")
            )

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.scheduled_calls)} scheduled"
        return f"<Runner {self.name} ({state})>"


# -- argument checks -----------------------------------------------------------------------------
def _function_name(function: Callable[..., Any]) -> str:
    name = getattr(function, "__name__", None)
    if name is None and hasattr(function, "func"):  # functools.partial
        name = getattr(function.func, "__name__", None)
    return name or type(function).__name__


def _declares(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` has a parameter called ``name`` (not through ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )


def _check_resources(resources: Iterable[Resource]) -> list[Resource]:
    if isinstance(resources, Resource):
        raise ConfigurationError(
            "resources must be a list of Resource objects; wrap a single one: [resource]."
        )
    try:
        items = list(resources)
    except TypeError:
        raise ConfigurationError(
            f"resources must be a list of Resource objects, got {type(resources).__name__}."
        ) from None
    names: set[str] = set()
    for item in items:
        if not isinstance(item, Resource):
            raise ConfigurationError(
                f"resources must contain Resource objects, got {type(item).__name__}: {item!r}."
            )
        if item.name in names:
            raise ConfigurationError(
                f"Two resources are named {item.name!r}; give each resource a unique name."
            )
        names.add(item.name)
    return items


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _check_seconds(value: object, name: str, zero: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if (
        not ok
        or math.isnan(number)
        or math.isinf(number)
        or number < 0
        or (number == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{name} must be a number of seconds {bound}, got {value!r}.")
    return number


def _partition(resource: Resource, call: Call) -> Hashable:
    """The partition key of ``call`` for ``resource`` (a clear error if it cannot be one)."""
    assert resource.partition is not None
    try:
        key: Hashable = resource.partition(call)
        hash(key)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"partition of resource {resource.name!r} raised {type(exc).__name__}: {exc} for "
            f"{call!r}; it must return a hashable key (e.g. the model's name)."
        ) from exc
    return key


def _usage(
    extractor: Callable[[Call], float] | None, call: Call, resource: str, what: str
) -> float:
    if extractor is None:
        return 0.0
    try:
        value = extractor(call)
    except ConfigurationError:
        raise  # already says what is wrong (e.g. a preset's RequestTooLargeError)
    except Exception as exc:
        raise ConfigurationError(
            f"{what} of resource {resource!r} raised {describe(exc, call)} for "
            f"{call!r}. Check the arguments passed to schedule() (the extractor reads them "
            "with call.get_argument(name))."
        ) from exc
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < math.inf:
        raise ConfigurationError(
            f"{what} of resource {resource!r} returned {value!r} for {call!r}; "
            "usage must be a finite, non-negative number."
        )
    return float(value)
