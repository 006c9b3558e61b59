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

The Runner is assembled from bases in modules of their own: ``schedule()``'s per-call
work (``rate_limited._scheduling``), ``start()`` and ``snapshot()``
(``rate_limited._starting``), where its engines run and how a run's end becomes its
RunResult (``rate_limited._runs``), and the online calls (``rate_limited._online``).
``as_completed()`` yields the outcomes as the calls finish (``rate_limited._completed``);
``call()`` / ``call_sync()`` run one online call through the same quotas, ahead of the
batch's waiting calls (``rate_limited._online``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from rate_limited._checkpoint import close_store
from rate_limited._clock import Clock
from rate_limited._config import RunnerConfig, Setting
from rate_limited._demand import demand_of
from rate_limited._engine import Engine
from rate_limited._feedback import FeedbackSource
from rate_limited._loop_thread import LoopThread, finish_running_calls, stop_run
from rate_limited._loopwatch import is_async_callable
from rate_limited._money import Money, split_budget
from rate_limited._online import OnlineCaller, OnlineCalls
from rate_limited._policy import Validator, retry_if_transient
from rate_limited._priorities import Priorities
from rate_limited._redact import get_logger
from rate_limited._scheduling import Scheduler, declares, make_schedule
from rate_limited._starting import RunStarter
from rate_limited._status import RunnerState
from rate_limited.budget import Budget
from rate_limited.calls import Call, Result
from rate_limited.exceptions import (
    warn,
)
from rate_limited.handle import RunHandle, SigintGuard
from rate_limited.ledgers import open_ledger
from rate_limited.outcomes import RunResult
from rate_limited.resources import Resource
from rate_limited.stores.base import Store

if TYPE_CHECKING:
    import pandas

    from rate_limited._estimate import Estimate
    from rate_limited.semantic import SemanticCache
    from rate_limited.semantic._step import SemanticStep

__all__ = ["Runner", "RunnerState"]

logger = get_logger("rate_limited")

T = TypeVar("T")


class Runner(Scheduler, OnlineCaller, RunStarter):
    """Runs calls of ``function`` as fast as ``resources`` allow, and never faster."""

    # The settings, read-only: RunnerConfig was validated once and engines read it.
    max_concurrent: Setting[int] = Setting()
    max_retries: Setting[int] = Setting()
    validators: Setting[tuple[Callable[[Any], Any], ...]] = Setting()
    progress_interval: Setting[float] = Setting()
    long_wait_warning_seconds: Setting[float | None] = Setting()
    retry_if: Setting[Callable[[BaseException], bool]] = Setting()
    backoff: Setting[Callable[[int, BaseException | None], float]] = Setting()
    timeout: Setting[float | None] = Setting()
    clock: Setting[Clock] = Setting()
    name: Setting[str] = Setting()
    store: Setting[Store | None] = Setting()
    refresh: Setting[bool] = Setting()
    retry_failed: Setting[bool] = Setting()
    event_loop: Setting[Literal["own", "current"]] = Setting()
    rate_limit_patience: Setting[float | None] = Setting()

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
        budget: Budget | None = None,
        escalate: Sequence[Mapping[str, Any]] | None = None,
        ledger: str | None = None,
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
            budget: a ``rate_limited.Budget``: at most that many US dollars spent (see
                ``rate_limited.budget``); a Budget in ``resources`` is the same. A preset
                prices its calls; your own function needs ``Budget(cost=, max_cost=)``.
            escalate: the quality-cost ladder, e.g. ``[{"model": "gpt-4o-mini"},
                {"model": "gpt-4o"}]``: each attempt after a failed validation (or an
                error permanent for that model) runs with the next rung's keyword
                arguments (see ``rate_limited._escalate``).
            ledger: where the quotas' usage is kept. None (default): in this Runner.
                ``"redis://host:6379/0?name=team-key"``: in Redis, shared by every Runner
                (any process, any machine) given the same URL and name, so that together
                they stay within one quota (``&lease=20``: seconds after which a dead
                process's reservations come back). See ``rate_limited.ledgers.redis``.
                A preset made with ``ledger=`` (``ChatCompletions(client, ledger=...)``)
                gives its own when this is None.
        """
        resources, budget = split_budget(resources, budget)
        if ledger is None and isinstance(function, FeedbackSource):
            # A preset made with ledger=...: ``Runner(chat, chat.resources)`` shares it as
            # ``chat.runner()`` does.
            preset_ledger = getattr(function, "ledger", None)
            ledger = preset_ledger if isinstance(preset_ledger, str) else None
        #: The validated settings (``Runner.max_concurrent`` and the like read them).
        self.config = RunnerConfig.build(locals())  # the arguments above, by name
        self.function = function
        self._runs_on_loop = is_async_callable(function)
        self.logger = get_logger(f"rate_limited.Runner.{self.name}")
        #: The semantic cache bound to the store (None: no semantic cache).
        self.semantic_cache = semantic_cache
        self._semantic: SemanticStep | None = None
        if semantic_cache is not None:
            from rate_limited.semantic._step import SemanticStep

            self._semantic = SemanticStep.bind(semantic_cache, self.store, refresh=self.refresh)
        #: Calls of the current batch, in schedule order.
        self.scheduled_calls: list[Call] = []
        self._extractors = [
            (r, r.arguments_usage_extractor, r.max_results_usage_estimator)
            for r in self.config.resources
        ]
        demand = functools.partial(demand_of, self._extractors) if self._extractors else None
        self._money = Money(function, budget, escalate, self.store, demand)
        self._state = RunnerState.IDLE
        self._loop_thread: LoopThread | None = None
        self._engine: Engine | None = None  # on the Runner's own loop thread
        self._caller_engine: Engine | None = None  # event_loop="current"
        self._active_engine: Engine | None = None  # the one the last run used
        #: The RunResult of the last run that ended (``run()``, ``start()``, ``apply()``):
        #: ``runner.last_result.plot()`` / ``.to_pandas()`` after an ``apply()``.
        self.last_result: RunResult | None = None
        self._active_future: concurrent.futures.Future[Any] | asyncio.Task[Any] | None = None
        self._run_seq = 0  # numbers the runs, so that a stop reaches the right one
        # One ledger for the Runner's life, whichever loop its engine runs on.
        self._ledger = open_ledger(ledger, self.config.resources, owner=self.name)
        close_ledger = getattr(self._ledger, "close", None)
        if close_ledger is not None:  # a shared ledger: its lease ends with the Runner
            weakref.finalize(self, close_ledger)
        if self.store is not None and self.config.owns_store:
            # A Runner dropped without close() still flushes and closes the store it
            # opened (after its loop's finalizer, made later, has stopped the loop).
            index = None if self._semantic is None else self._semantic.index
            weakref.finalize(self, close_store, self.store, owned=True, checkpoints=(), index=index)
        # The engines on the Runner's loop (the batch's, the online calls') take turns by
        # priority; the online calls' engine is made by the first call().
        self._priorities = Priorities(self._ledger)
        self._online: OnlineCalls | None = None
        # The handle of the last start() (weak: it holds the Runner), for as_completed().
        self._active_handle: weakref.ref[RunHandle] | None = None
        self._listeners_lock = threading.Lock()
        #: schedule() and call() take ``priority=`` unless the function has its own.
        self._takes_priority = not declares(function, "priority")
        self._start_lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._function_identity = ""
        if self.store is not None:
            from rate_limited._keys import function_identity

            self._function_identity = function_identity(function)
        #: schedule() has work beyond creating the Call and its demand (keys, prices).
        self._slow_schedule = self.store is not None or self._money.active
        self._inline_schedule = not self._slow_schedule
        self.schedule = make_schedule(self, function)  # type: ignore[method-assign]

    @property
    def resources(self) -> list[Resource]:
        """The quotas, in the order of each call's demand (a copy: they are fixed)."""
        return list(self.config.resources)

    @property
    def budget(self) -> Budget | None:
        """The spending limit (None: none); raise ``budget.usd`` to go on after a stop."""
        return self._money.budget

    @property
    def state(self) -> RunnerState:
        """``IDLE``, ``RUNNING`` or ``CLOSED``."""
        return self._state

    def _set_state(self, state: RunnerState) -> None:
        self._state = state
        # schedule()'s fast path: nothing to compute but the demand, no run to join.
        self._inline_schedule = state is RunnerState.IDLE and not self._slow_schedule

    # -- scheduling --------------------------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Call:
        """Schedule a call: ``runner.schedule(x, y=1)`` where you would call ``f(x, y=1)``.

        Returns the Call handle; ``run()`` runs it. (Each Runner replaces this method with
        a wrapper carrying the wrapped function's signature and docstring.)
        """
        return self._schedule(args, kwargs)

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

    def estimate(self) -> Estimate:
        """What the scheduled calls not yet finished will need, before ``run()``: calls,
        prompt tokens, maximum output tokens, ``cost_min`` / ``cost_max`` in USD and the
        least time the quotas allow (see ``rate_limited._estimate``). Shows as a table
        in a notebook."""
        from rate_limited._estimate import estimate

        return estimate(self, self._money.spend)

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
        """Deprecated name of ``snapshot()`` (too close to ``handle.result()``, which waits)."""
        warn("runner.results() is now runner.snapshot()", DeprecationWarning)
        return self.snapshot()

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
        running = self._state is RunnerState.RUNNING
        self._set_state(RunnerState.CLOSED)
        self._close_online(timeout)
        if running:
            stop_run(self._active_engine, self._active_future)
        if self._engine is not None:
            finish_running_calls(self._engine, timeout)
        if self._finalizer is not None:
            self._finalizer()
        for engine in (self._engine, self._caller_engine):
            if engine is not None:  # what calls finishing after their run had to say
                for category, text in engine.take_notices()[0]:
                    warn(text, category)
        if self._semantic is not None:
            self._semantic.flush()
        if self.store is not None:
            engines = (self._engine, self._caller_engine)
            close_store(
                self.store,
                owned=self.config.owns_store,
                checkpoints=[e.checkpoint for e in engines if e is not None],
                index=None if self._semantic is None else self._semantic.index,
            )
        close_ledger = getattr(self._ledger, "close", None)
        if close_ledger is not None:
            close_ledger()

    @property
    def _ledger_is_local(self) -> bool:
        """Whether this Runner's quotas live in its own process (no ``ledger=`` URL)."""
        return not hasattr(self._ledger, "holder")

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._state is RunnerState.CLOSED
            else f"{len(self.scheduled_calls)} scheduled"
        )
        return f"<Runner {self.name} ({state})>"

    # -- what apply() gives, known before anything runs (rate_limited.dask) ---------------------
    @property
    def frame_columns(self) -> tuple[str, ...]:
        """The columns ``apply()`` gives, in order, as far as this Runner decides them:
        ``result`` ... ``semantic_similarity``, ``cost_usd`` when it prices its calls (an
        API preset, a Budget), ``model`` when it has an ``escalate=`` ladder (calls with a
        ``model`` argument add it otherwise), a ``usage_<resource>`` per resource. Nothing
        is called to find them (``rate_limited.dask`` builds a lazy frame's schema)."""
        from rate_limited._frames import outcomes_frame

        columns = list(outcomes_frame(()).columns)
        if self._money.spend is not None:  # a SpendControl always has prices
            columns.append("cost_usd")
        if self._money.ladder is not None:
            columns.append("model")
        return (*columns, *(f"usage_{resource.name}" for resource in self.resources))

    @property
    def shares_quota(self) -> bool:
        """Whether the quotas live outside this process (``ledger="redis://..."``), shared
        by every Runner given the same ledger, rather than in this Runner alone."""
        return not self._ledger_is_local
