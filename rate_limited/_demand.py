"""A call's demand on the resources, worked out once, at ``schedule()``.

A call's *demand* is computed from its arguments: per resource, its arguments usage, its
results estimate and its partition key (``rate_limited.ledgers.base.Demand``). A call
that needs more than a whole quota can never run: ``QuotaExceededError`` at
``schedule()``, naming the resource. An extractor that raises or returns something that is
not a usage is a ``ConfigurationError`` naming the resource and the extractor.

Demands are *interned*: calls with equal needs share one tuple (the requests resource of
a million calls needs ``(1.0, 0.0, None)`` a million times), which keeps the Calls of a
big batch small and leaves the garbage collector fewer objects to look at. A Runner also
remembers the last demand it computed (``DemandMemo``): a call whose every entry equals
the last call's (arguments usage, estimate, the same partition key object) gets that
tuple back without one being built or looked up. The memo saves only the building: the
extractors, the partition and the quota check still run for every call, so a changed
``resource.quota`` or partition key is seen by the next ``schedule()``.

**Compiled for the Runner's resources.** ``demand_of`` walks the resources in a loop;
``compile_demand`` makes the same function written out for a Runner's resources (which
of them have an arguments extractor, which an estimator), as
``rate_limited.ledgers._compiled`` does for the ledger and for the same reason: it runs
once per ``schedule()``, and the loop, its unpacking and its tests of what each resource
has cost about as much as the rest of scheduling a call (measured with
``benchmarks/instructions.py --only-schedule``: 14.2k instructions per call on two
resources with the loop, 12.6k compiled). The source holds no user text (indexes and the
names below only); a resource given a partition after the Runner was made, which the
compiled function checks first, goes the general way. ``tests/test_demand.py`` compares
the two on random extractor results, errors included.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Sequence
from numbers import Real
from typing import Any

from rate_limited._redact import describe
from rate_limited.calls import Call
from rate_limited.exceptions import ConfigurationError, QuotaExceededError
from rate_limited.resources import Resource

__all__ = ["CallDemand", "DemandMemo", "Extractors", "compile_demand", "demand_of"]

#: A call's demand as this module makes it (``Call.demand``): an interned tuple of
#: per-resource (arguments usage, results estimate, partition key) tuples.
CallDemand = tuple[tuple[float, float, Hashable], ...]

#: Demands and their entries as first made, for calls that need the same (see the module
#: docstring); emptied when it grows past ``_INTERN_MAX`` (the estimates vary per call).
_interned: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_INTERN_MAX = 4096
_INF = math.inf
#: A need above the quota by less than this factor is rounding: it fits (the ledger's slack).
_SLACK = 1 + 1e-9
_ARGUMENTS = "arguments_usage_extractor"
_ESTIMATOR = "max_results_usage_estimator"

#: Per resource: the resource, its arguments usage extractor, its results estimator.
Extractors = Sequence[
    tuple[Resource, Callable[[Call], float] | None, Callable[[Call], float] | None]
]


class DemandMemo:
    """The last demand ``demand_of`` computed with ``extractors`` (one Runner's): the
    next call that needs the same gets it back (module docstring). One attribute,
    replaced whole, so a thread scheduling meanwhile reads an old demand or a new one."""

    __slots__ = ("extractors", "last")

    def __init__(self, extractors: Extractors) -> None:
        self.extractors = extractors
        self.last: tuple[tuple[float, float, Hashable], ...] | None = None


def demand_of(extractors: Extractors, call: Call, memo: DemandMemo | None = None) -> CallDemand:
    """``call``'s demand: per resource (arguments usage, results estimate, partition key).

    This runs once per scheduled call, so the usual case is inline: a usage that is a
    finite non-negative float or int, a quota it fits in, no partition (or a str one), and
    a demand the last call had (``memo``: nothing built) or some earlier call had (one
    lookup of the whole, the entries only when it is new). The quota and the partition
    are read from the resource every time: a changed ``resource.quota`` applies to the
    next ``schedule()``.
    """
    # The last demand, while every entry so far equals its own (then none is built).
    previous = None if memo is None or memo.extractors is not extractors else memo.last
    equal = 0  # how many leading entries equal previous's (not in ``demand``)
    demand: list[tuple[float, float, Hashable]] = []
    shared = True
    for resource, args_extractor, estimator in extractors:
        # The two extractors' blocks below are one step written twice, on purpose: a
        # shared helper (as before issue 11) cost a call each, per resource, per call.
        args_usage = estimate = 0.0
        if args_extractor is not None:
            try:
                value = args_extractor(call)
            except ConfigurationError:
                raise  # already says what is wrong (e.g. a preset's RequestTooLargeError)
            except Exception as exc:
                raise _failed(exc, call, resource, _ARGUMENTS) from exc
            kind = type(value)
            if kind is int and value >= 0:  # the usual cases first (an int is finite)
                args_usage = float(value)
            elif kind is float and 0.0 <= value < _INF:
                args_usage = value
            else:
                args_usage = _checked(value, call, resource, _ARGUMENTS)
        if estimator is not None:
            try:
                value = estimator(call)
            except ConfigurationError:
                raise
            except Exception as exc:
                raise _failed(exc, call, resource, _ESTIMATOR) from exc
            kind = type(value)
            if kind is int and value >= 0:  # the usual cases first (an int is finite)
                estimate = float(value)
            elif kind is float and 0.0 <= value < _INF:
                estimate = value
            else:
                estimate = _checked(value, call, resource, _ESTIMATOR)
        if resource.partition is None:
            key: Hashable = None
            quota: float = resource.quota
        else:
            key = _partition(resource, call)
            quota = resource.quota_for(key)
            if key is not None and type(key) is not str:
                shared = False  # the cache holds no user object; equal keys: the same key
        needed = args_usage + estimate
        if needed > quota and needed > quota * _SLACK:  # the ledger's rounding slack
            raise _too_big(call, resource, needed, quota)
        if previous is not None:
            # The same key object (``is``): an equal key of another type (1, 1.0, True)
            # is another key (see above), and the memo needs no hashing.
            last_args, last_estimate, last_key = previous[equal]
            if args_usage == last_args and estimate == last_estimate and key is last_key:
                equal += 1
                continue
            demand += previous[:equal]  # the entries before this one were equal
            previous = None
        demand.append((args_usage, estimate, key))
    if previous is not None:
        return previous  # every entry equal: the last call's demand, as it is
    if not shared:
        result = tuple(
            _interned.get(entry) or _intern(entry)
            if entry[2] is None or type(entry[2]) is str
            else entry
            for entry in demand
        )
    else:
        result = _shared(tuple(demand))
    if memo is not None and memo.extractors is extractors:
        memo.last = result
    return result


def _shared(whole: tuple[tuple[float, float, Hashable], ...]) -> CallDemand:
    """The interned demand equal to ``whole`` (every key None or a str), made if new."""
    interned = _interned.get(whole)
    if interned is None:
        interned = _intern(tuple(_interned.get(entry) or _intern(entry) for entry in whole))
    return interned


def _remember(memo: DemandMemo, whole: tuple[tuple[float, float, Hashable], ...]) -> CallDemand:
    """``_shared(whole)``, remembered as ``memo``'s last demand (compiled demands)."""
    result = memo.last = _shared(whole)
    return result


def _too_big(call: Call, resource: Resource, needed: float, quota: float) -> QuotaExceededError:
    return QuotaExceededError(
        f"Call {call!r} exceeds resource quota of {resource.name!r}: it needs "
        f"{needed:g} but the whole quota is {quota:g}, so it could never run. Raise "
        "the quota, lower the call's usage (e.g. max_tokens) or split the call.",
        resource=resource.name,
        needed=needed,
        quota=quota,
    )


def _intern(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """``value``, kept as the one to share from now on (the caller found no equal one
    in ``_interned``): see the module docstring."""
    if len(_interned) >= _INTERN_MAX:
        _interned.clear()
    _interned[value] = value
    return value


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


def _failed(exc: Exception, call: Call, resource: Resource, what: str) -> ConfigurationError:
    """The error for an extractor of ``resource`` that raised ``exc`` on ``call``."""
    return ConfigurationError(
        f"{what} of resource {resource.name!r} raised {describe(exc, call)} for "
        f"{call!r}. Check the arguments passed to schedule() (the extractor reads them "
        "with call.get_argument(name))."
    )


def _checked(value: object, call: Call, resource: Resource, what: str) -> float:
    """``value`` (what an extractor of ``resource`` returned) as a usage, or a clear error
    (``demand_of`` has already taken the usual float and int)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < _INF:
        raise ConfigurationError(
            f"{what} of resource {resource.name!r} returned {value!r} for {call!r}; "
            "usage must be a finite, non-negative number."
        )
    return float(value)


# -- compiled ----------------------------------------------------------------------------------
#: One extractor's result as a usage (``demand_of``'s usual cases, then ``_checked``):
#: ``{fn}`` the extractor's name in the compiled code, ``{var}`` the usage's, ``{what}``
#: which extractor it is (for the errors).
_USAGE = """\
    try:
        value = {fn}(call)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise failed(exc, call, r{i}, {what}) from exc
    kind = type(value)
    if kind is int and value >= 0:
        {var} = float(value)
    elif kind is float and 0.0 <= value < INF:
        {var} = value
    else:
        {var} = checked(value, call, r{i}, {what})
"""
_FITS = """\
    quota = r{i}.quota
    needed = {needed}
    if needed > quota and needed > quota * SLACK:
        raise too_big(call, r{i}, needed, quota)
"""


@functools.lru_cache(maxsize=64)
def _factory(shape: tuple[tuple[bool, bool], ...]) -> Callable[..., Callable[[Call], CallDemand]]:
    """What binds a compiled demand to a Runner's resources, for ``shape``: per resource,
    whether it has an arguments extractor and whether it has an estimator."""
    indexes = range(len(shape))
    lines = [
        "def bind(extractors, memo, " + ", ".join(f"r{i}, x{i}, y{i}" for i in indexes) + "):\n",
        "  def demand(call):\n",
        "    if " + " or ".join(f"r{i}.partition is not None" for i in indexes) + ":\n",
        "        return demand_of(extractors, call, memo)\n",
    ]
    # A usage without its extractor is 0.0 in every demand made with these extractors
    # (here or by ``demand_of``): nothing to add, and nothing to compare with the memo's.
    same: list[str] = []
    for i, (arguments, estimator) in enumerate(shape):
        if arguments:
            lines.append(_USAGE.format(fn=f"x{i}", var=f"a{i}", i=i, what="ARGUMENTS"))
            same.append(f"last[{i}][0] == a{i}")
        else:
            lines.append(f"    a{i} = 0.0\n")
        if estimator:
            lines.append(_USAGE.format(fn=f"y{i}", var=f"e{i}", i=i, what="ESTIMATOR"))
            same.append(f"last[{i}][1] == e{i}")
        else:
            lines.append(f"    e{i} = 0.0\n")
        if arguments or estimator:  # else it needs 0, which fits any quota
            needed = " + ".join(
                name for name, has in ((f"a{i}", arguments), (f"e{i}", estimator)) if has
            )
            lines.append(_FITS.format(i=i, needed=needed))
        same.append(f"last[{i}][2] is None")
    entries = ", ".join(f"(a{i}, e{i}, None)" for i in indexes)
    lines += [
        "    last = memo.last\n",
        f"    if last is not None and {' and '.join(same)}:\n",
        "        return last\n",
        f"    return remember(memo, ({entries},))\n",
        "  return demand\n",
    ]
    source = "".join(lines)
    namespace: dict[str, Any] = {
        "ARGUMENTS": _ARGUMENTS,
        "ESTIMATOR": _ESTIMATOR,
        "ConfigurationError": ConfigurationError,
        "INF": _INF,
        "SLACK": _SLACK,
        "checked": _checked,
        "demand_of": demand_of,
        "failed": _failed,
        "remember": _remember,
        "too_big": _too_big,
    }
    exec(compile(source, "<rate_limited compiled demand>", "exec"), namespace)
    bind: Callable[..., Callable[[Call], CallDemand]] = namespace["bind"]
    bind.__doc__ = source  # what was compiled, for whoever debugs it
    return bind


def compile_demand(extractors: Extractors, memo: DemandMemo) -> Callable[[Call], CallDemand]:
    """``demand_of(extractors, call, memo)`` as a function of ``call``, written out for
    ``extractors`` (see the module docstring). ``memo`` must be for ``extractors``."""
    if memo.extractors is not extractors:
        raise ValueError("the memo was made for other extractors")
    shape = tuple((args is not None, estimate is not None) for _, args, estimate in extractors)
    flat: list[Any] = []
    for entry in extractors:
        flat += entry
    return _factory(shape)(extractors, memo, *flat)
