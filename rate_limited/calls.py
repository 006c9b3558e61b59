"""``Call``: one scheduled request, and the handle ``Runner.schedule()`` returns.

A Call is created once per ``schedule()`` and is small (slotted): with a million calls
scheduled, it is most of what the package keeps in memory. It carries the arguments, the
demand computed once from them, and the call's state across attempts and runs; the
``Outcome`` that ``RunResult.outcomes`` exposes is a read-only view built from it.

``get_argument(name)`` reads an argument whether it was passed positionally, by keyword,
through ``**kwargs`` or left at its default (usage extractors use it). Unlike rate_limited
0.4 it returns falsy values as given: ``n=0`` is 0 and ``temperature=0`` is 0.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from rate_limited._secret_names import is_secret_name
from rate_limited._status import PENDING, SUCCEEDED

if TYPE_CHECKING:
    from rate_limited._call_spend import CallSpend
    from rate_limited.semantic._match import SemanticMatch

__all__ = ["Call", "CallOwner", "Result"]

#: Whatever the wrapped function returns.
Result = Any

#: Shared by calls scheduled without keyword arguments (one dict less per call); read-only,
#: so that no call can change another's arguments.
_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})

#: The last arguments bound, and the result: usage extractors ask a call for several
#: arguments in a row, and a slot per call for this would cost memory. Keyed by what the
#: binding depends on (compared by identity), not by the Call, so that the cache never
#: keeps a Call (and through it its Runner) alive.
_last_bound: tuple[object, object, object, dict[str, Any]] = (None, None, None, {})

_signature_cache: dict[int, tuple[Callable[..., Any], inspect.Signature | None]] = {}


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    """inspect.signature, cached per function object (it costs ~10 µs a call)."""
    cached = _signature_cache.get(id(function))
    if cached is not None and cached[0] is function:
        return cached[1]
    try:
        sig: inspect.Signature | None = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature
        sig = None
    if len(_signature_cache) > 1024:
        _signature_cache.clear()
    _signature_cache[id(function)] = (function, sig)
    return sig


class CallOwner:
    """What schedules Calls (the Runner): each Call it makes holds it, and calls its
    ``function``."""

    function: Callable[..., Any]


class _Extras:
    """The fields of a Call that most calls never set, kept apart to keep Calls small."""

    __slots__ = ("from_store", "priority", "semantic", "spend", "time_to_first_token", "warnings")

    def __init__(self) -> None:
        self.from_store = False
        self.priority = 0
        self.time_to_first_token: float | None = None
        self.semantic: SemanticMatch | None = None
        self.warnings: list[BaseException] | None = None
        #: Its money: maximum cost, budget reservation, cost so far (``rate_limited._spend``).
        self.spend: CallSpend | None = None


class Call:
    """One scheduled call of the Runner's function, with its state across attempts.

    Attributes most users read: ``index`` (position in the run's results), ``args``,
    ``kwargs``, ``status``, ``result``, ``exceptions``, ``attempts``.
    """

    # Memory: a million scheduled calls are most of what the package holds, so the rare
    # fields share one slot (``_extras``), and the Runner that scheduled the call stands in
    # for its function (``_source``; ``function`` reads it from there).
    __slots__ = (
        "_exceptions",
        "_extras",
        "_source",
        "_usage",
        "args",
        "attempts",
        "demand",
        "finished_at",
        "index",
        "key",
        "kwargs",
        "reservation",
        "result",
        "started_at",
        "status",
    )

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        index: int = 0,
        owner: CallOwner | None = None,
    ) -> None:
        # The Runner that scheduled the call, whose function it calls: the call holds it,
        # so that it lives while the call is held, until its run has ended (then, and for
        # a Call made by hand, the function itself).
        self._source: CallOwner | Callable[..., Any] = function if owner is None else owner
        self.args = args
        self.kwargs = kwargs if kwargs else _NO_KWARGS
        #: Position of this call in the results of the run it belongs to.
        self.index = index
        self.status = PENDING  # a module constant: see rate_limited._status
        #: Attempts started, in every run so far (interrupted ones included).
        self.attempts = 0
        self.result: Result = None
        self._exceptions: list[BaseException] | None = None
        self._extras: _Extras | None = None
        #: Per resource: (arguments usage, results estimate, partition key), computed once
        #: at schedule().
        self.demand: tuple[tuple[float, float, Hashable], ...] = ()
        self.reservation: object = None
        #: Usage billed so far: None, a dict (``usage``), or, as the engine bills it,
        #: ``(names, amount, ...)`` aligned with its resources (see ``add_usage``).
        self._usage: dict[str, float] | tuple[Any, ...] | None = None
        #: Loop-clock times of the last attempt's start and of the call's end.
        self.started_at: float | None = None
        self.finished_at: float | None = None
        #: Stable key for stores and caches (set by the Runner when it has a store).
        self.key: str | None = None

    @property
    def function(self) -> Callable[..., Any]:
        """What the call calls: the Runner's function."""
        source = self._source
        return source.function if isinstance(source, CallOwner) else source

    def _more(self) -> _Extras:
        extras = self._extras
        if extras is None:
            extras = self._extras = _Extras()
        return extras

    @property
    def from_store(self) -> bool:
        """True when the outcome was read from the store instead of calling the function."""
        extras = self._extras
        return extras is not None and extras.from_store

    @from_store.setter
    def from_store(self, value: bool) -> None:
        self._more().from_store = value

    @property
    def priority(self) -> int:
        """Admission order: a larger priority goes first (``schedule()``'s default is 0,
        ``Runner.call()``'s 1); equal priorities go in schedule order."""
        extras = self._extras
        return 0 if extras is None else extras.priority

    @priority.setter
    def priority(self, value: int) -> None:
        self._more().priority = value

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from sending to the first chunk, for a streamed response (else None)."""
        extras = self._extras
        return None if extras is None else extras.time_to_first_token

    @time_to_first_token.setter
    def time_to_first_token(self, value: float | None) -> None:
        self._more().time_to_first_token = value

    @property
    def cost(self) -> float | None:
        """USD its attempts cost, from the usage their responses reported (None: not
        priced, or a response that could not be priced)."""
        extras = self._extras
        spend = None if extras is None else extras.spend
        if spend is None or spend.unknown:
            return None
        return spend.cost

    @property
    def semantic(self) -> SemanticMatch | None:
        """How the semantic cache answered it (a ``SemanticMatch``), if it did."""
        extras = self._extras
        return None if extras is None else extras.semantic

    @semantic.setter
    def semantic(self, value: SemanticMatch | None) -> None:
        self._more().semantic = value

    # -- rate_limited 0.4 -----------------------------------------------------------------
    @property
    def usage(self) -> dict[str, float] | None:
        """Usage billed for this call so far, per resource name (None: nothing billed)."""
        usage = self._usage
        if usage is None or isinstance(usage, dict):
            return usage
        billed = self._usage = dict(zip(usage[0], usage[1:], strict=True))
        return billed

    @usage.setter
    def usage(self, value: dict[str, float] | None) -> None:
        self._usage = value

    def usage_copy(self) -> dict[str, float]:
        """A new dict of the usage billed so far (``usage`` would keep one on the call)."""
        usage = self._usage
        if usage is None:
            return {}
        if isinstance(usage, dict):
            return dict(usage)
        return dict(zip(usage[0], usage[1:], strict=True))

    def add_usage(self, names: tuple[str, ...], amounts: Sequence[float]) -> None:
        """Add ``amounts`` (aligned with ``names``) to the usage billed.

        Memory: a million calls each billed once would each hold a dict; until someone
        reads ``usage``, the amounts are kept as one tuple with the (shared) names."""
        usage = self._usage
        if usage is None:
            self._usage = (names, *amounts)
        elif not isinstance(usage, dict) and usage[0] is names:
            self._usage = (names, *[a + b for a, b in zip(usage[1:], amounts, strict=True)])
        else:
            billed = self.usage
            assert billed is not None
            for name, amount in zip(names, amounts, strict=True):
                billed[name] = billed.get(name, 0.0) + amount

    @property
    def exceptions(self) -> list[BaseException]:
        """Exceptions of the failed attempts, oldest first (a new list if there are none)."""
        if self._exceptions is None:
            self._exceptions = []
        return self._exceptions

    @exceptions.setter
    def exceptions(self, value: list[BaseException]) -> None:
        self._exceptions = value

    @property
    def warnings(self) -> list[BaseException]:
        """Problems of an attempt that did not fail it, e.g. a ``UsageExtractionError``
        (the usage could not be read from a result that was kept)."""
        extras = self._more()
        if extras.warnings is None:
            extras.warnings = []
        return extras.warnings

    @property
    def exception_history(self) -> tuple[BaseException, ...]:
        """The exceptions of its failed attempts, oldest first, as a tuple that is empty
        (and allocates nothing) for a call that never failed: what the engine and the
        results read, where ``exceptions`` would create a list for every call."""
        return () if not self._exceptions else tuple(self._exceptions)

    @property
    def last_exception(self) -> BaseException | None:
        """The exception of its last failed attempt, if any."""
        return self._exceptions[-1] if self._exceptions else None

    @property
    def warning_history(self) -> tuple[BaseException, ...]:
        """``warnings`` as a tuple, empty (and allocating nothing) if there are none."""
        extras = self._extras
        return () if extras is None or not extras.warnings else tuple(extras.warnings)

    @property
    def failures(self) -> int:
        """Attempts that failed; the call is retried while ``failures <= max_retries``."""
        if not self._exceptions:
            return 0
        from rate_limited.exceptions import UsageExtractionError

        return sum(1 for e in self._exceptions if not isinstance(e, UsageExtractionError))

    @property
    def latency(self) -> float | None:
        """Seconds from the start of the last attempt to the end of the call."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def num_retries(self) -> int:
        """rate_limited 0.4 name: how many times the call was retried after a failure."""
        return self.failures

    @property
    def all_arguments_dict(self) -> dict[str, Any]:
        """Every argument passed, by parameter name (``**kwargs`` extras flattened in)."""
        global _last_bound
        last = _last_bound
        if last[0] is self.function and last[1] is self.args and last[2] is self.kwargs:
            return last[3]
        arguments = self._bind()
        _last_bound = (self.function, self.args, self.kwargs, arguments)
        return arguments

    @staticmethod
    def release_owners(calls: Iterable[Call]) -> None:
        """Each of ``calls`` holds the function instead of the Runner that scheduled it:
        a final call no longer needs its Runner alive, nor may a result holding it keep it
        so. One loop, not a method call per call: a run of a million calls ends with it."""
        # The owner of the call before, and its function: the next call's usually (no
        # isinstance, no attribute lookup: ~260 instructions a call, not ~1,280).
        owner: CallOwner | None = None
        function: Any = None
        for call in calls:
            source = call._source
            if source is owner:
                call._source = function
            elif isinstance(source, CallOwner):
                owner, function = source, source.function
                call._source = function

    @staticmethod
    def final_lists(
        calls: Iterable[Call], copy: bool = False
    ) -> tuple[list[Result], list[list[BaseException]]]:
        """``run()``'s two lists, as in 0.4: per call, its result if it succeeded (else
        None), and its own list of exceptions (``exceptions``) if it has some, else a new
        empty list; ``copy``: new lists throughout. One pass reading the slots, not two
        properties per call and not one pass per list: a million calls end a run, and
        each pass over them is a cache miss per call (measured: 15 ms against 21 ms for
        three passes over 100,000 Calls)."""
        results: list[Result] = []
        exceptions: list[list[BaseException]] = []
        add_result, add_exceptions = results.append, exceptions.append
        if copy:
            for call in calls:
                add_result(call.result if call.status is SUCCEEDED else None)
                add_exceptions([*call._exceptions] if call._exceptions else [])
        else:
            for call in calls:
                add_result(call.result if call.status is SUCCEEDED else None)
                add_exceptions(call._exceptions or [])
        return results, exceptions

    def target(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The function the call reaches and all its arguments (a partial's included)."""
        function = self.function
        if isinstance(function, functools.partial):
            return (
                function.func,
                (*function.args, *self.args),
                {**function.keywords, **self.kwargs},
            )
        return function, self.args, dict(self.kwargs)

    def _bind(self) -> dict[str, Any]:
        function, args, kwargs = self.target()
        sig = _signature(function)
        if sig is None:
            return kwargs
        bound = sig.bind(*args, **kwargs)  # TypeError: arguments don't fit
        arguments = dict(bound.arguments)
        for name, param in sig.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
                arguments.update(arguments.pop(name))
        return arguments

    def get_argument(self, name: str) -> Any:
        """The argument ``name`` as the function would see it: passed or default, else None.

        Falsy values are returned as they are (``n=0`` is 0, not the default).
        """
        arguments = self.all_arguments_dict
        if name in arguments:
            return arguments[name]
        sig = _signature(self.target()[0])
        if sig is not None:
            param = sig.parameters.get(name)
            if param is not None and param.default is not inspect.Parameter.empty:
                return param.default
        return None

    def __repr__(self) -> str:
        """Shows the arguments with secrets redacted (``api_key='***'``): reprs end up in
        logs and error messages."""
        from rate_limited._redact import REDACTED, redact, secret_values

        name = getattr(self.function, "__qualname__", None) or type(self.function).__name__
        parts = [repr(a) for a in self.args] + [
            f"{k}={REDACTED!r}" if is_secret_name(k) else f"{k}={v!r}"
            for k, v in self.kwargs.items()
        ]
        text = redact(", ".join(parts)[:2000], secret_values(self))  # shown: 200 at most
        if len(text) > 200:
            text = text[:197] + "..."
        return f"<Call #{self.index} {name}({text}) {self.status.value}>"
