"""The in-memory ledger's per-call path, compiled for its resources.

What: ``compile_per_call(ledger, meters, rules)`` returns ``try_reserve`` and ``settle``
functions that do what ``InMemoryLedger.try_reserve`` (not deferred) and ``settle`` do,
for a ledger with no partitioned resource, written out for its number of resources and
their settle rules: straight-line code, one block per meter, no loop and no list built
by appending.

Why: they run once per call each, and for a quick call they are a large part of what the
package costs (issue 11: the realistic async benchmark must run 2x faster than 0.4). On
two resources, the loops over the meters, the lists grown per call, and a call per meter
to ``Meter.held`` and to ``Meter.settle`` cost ~4.7k of ~52k instructions per call, all
of the package included (callgrind, ``benchmarks/instructions.py``); the compiled pair
costs a tenth of that. This is how ``collections.namedtuple`` and ``dataclasses`` make
their methods: source built from a template and ``exec``-ed once. The source holds
nothing from the user: only indexes, the meters' names ``m0``, ``m1``, ... and the rules,
which are ``"actual"`` or ``"reserved"`` (checked here).

How it stays right:

* The generated functions check, on each call, that the ledger is still the one they were
  compiled for: its rules unchanged (a provider's headers may switch one, see
  ``rate_limited.ledgers._reports``) and no meter tracked for the provider's reports
  (then admission records marks, which only the ledger's own methods do). Otherwise, and
  for a reservation they did not make the way they would (deferred, another rule), they
  call the ledger's methods: the compiled path is only ever the usual case of them.
* A meter is read through the fields every meter keeps for this (``Meter.level``, exact
  before ``Meter.stale_at``, else ``refresh(now)`` first), so the window and refill rules
  stay in ``rate_limited._meters``; billing is the meter's own ``bill``. What is written
  out is the ledger's own arithmetic: a reservation's estimate held and released
  (``Meter.reserved``), and the two settle rules, as ``Meter.settle`` states them.
* ``tests/test_ledger_compiled.py`` runs the compiled pair and the methods on two ledgers
  side by side (random demands, results, times, rules, one to four resources of each
  refill) and compares every return value and every meter after each step.

The code objects are cached by shape (number of meters, rules); binding them to a
ledger's meters makes two closures, so an engine asks for them once per run and the
ledger keeps no reference to them (no cycle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited._meters import EPS
from rate_limited.ledgers._reservation import Reservation

if TYPE_CHECKING:
    from rate_limited._meters import Meter
    from rate_limited.ledgers.base import Demand, Settle

__all__ = ["compile_per_call"]

ReserveFunction = Callable[["Demand", float], "Reservation | None"]
SettleFunction = Callable[["Reservation", "Sequence[float]", float], "list[float]"]

# -- the template: one block per meter ``i`` (``{i}``), by rule where the rule matters -------
_FIT = """\
    a{i}, e{i}, _ = demand[{i}]
    if now >= m{i}.stale_at:
        m{i}.refresh(now)
    t{i} = m{i}.level + m{i}.reserved
    c{i} = a{i} + e{i}
    q = m{i}.quota
    if q - t{i} < c{i} - EPS * q:
        return None
"""
_HOLD = {
    "actual": """\
    b{i} = m{i}.bill(a{i}, now) if a{i} else None
    m{i}.reserved += e{i}
""",
    "reserved": """\
    b{i} = m{i}.bill(c{i}, now)
""",
}
_SETTLE = {
    "actual": """\
    a, e, _ = demand[{i}]
    x{i} = results_usage[{i}]
    if e:
        r = m{i}.reserved - e
        m{i}.reserved = r if r > 0.0 else 0.0
    if x{i}:
        m{i}.bill(x{i}, now)
    if a:
        x{i} = a + x{i}
""",
    "reserved": """\
    a, e, _ = demand[{i}]
    x{i} = results_usage[{i}]
    if x{i} > e:
        m{i}.bill(x{i} - e, now)
    else:
        x{i} = e
    if a:
        x{i} = a + x{i}
""",
}


@functools.lru_cache(maxsize=64)
def _factory(rules: tuple[Settle, ...]) -> Callable[..., tuple[ReserveFunction, SettleFunction]]:
    """The function that binds the compiled pair for ``rules`` (one per meter) to a
    ledger and its meters."""
    for rule in rules:
        if rule not in _HOLD:  # never a user's text in the source
            raise ValueError(f"unknown settle rule {rule!r}")
    indexes = range(len(rules))
    meters = ", ".join(f"m{i}" for i in indexes)
    held = ", ".join(f"t{i} + c{i}, m{i}.corrected" for i in indexes)
    billed = ", ".join(f"b{i}" for i in indexes)
    settled = ", ".join(f"x{i}" for i in indexes)
    source = "".join(
        [
            f"def bind(ledger, meters, rules, {meters}):\n",
            "  def try_reserve(demand, now):\n",
            "    if ledger._tracks or ledger._rules is not rules:\n",
            "        return ledger.try_reserve(demand, now)\n",
            *(_FIT.format(i=i) for i in indexes),
            *(_HOLD[rule].format(i=i) for i, rule in enumerate(rules)),
            f"    return Reservation(meters, demand, [{billed}], [{held}], None, now, rules)\n",
            "  def settle(reservation, results_usage, now):\n",
            "    if (\n",
            "        reservation.rules is not rules\n",
            "        or ledger._rules is not rules\n",
            "        or reservation.deferred\n",
            "        or reservation.meters is not meters\n",
            "        or ledger._tracks\n",
            "    ):\n",
            "        return ledger.settle(reservation, results_usage, now)\n",
            "    demand = reservation.demand\n",
            *(_SETTLE[rule].format(i=i) for i, rule in enumerate(rules)),
            f"    return [{settled}]\n",
            "  return try_reserve, settle\n",
        ]
    )
    # The template's blocks are indented for the inner functions (4 spaces), "bind" by 2.
    namespace: dict[str, Any] = {"EPS": EPS, "Reservation": Reservation}
    exec(compile(source, f"<rate_limited compiled ledger {rules}>", "exec"), namespace)
    bind: Callable[..., tuple[ReserveFunction, SettleFunction]] = namespace["bind"]
    bind.__doc__ = source  # what was compiled, for whoever debugs it
    return bind


def compile_per_call(
    ledger: Any, meters: list[Meter], rules: tuple[Settle, ...]
) -> tuple[ReserveFunction, SettleFunction]:
    """``try_reserve(demand, now)`` and ``settle(reservation, results_usage, now)`` for
    ``ledger`` (an ``InMemoryLedger``: not named, it imports this module), whose
    resources are unpartitioned, with ``meters`` (the ledger's own list,
    which its reservations share) and its current ``rules``."""
    return _factory(rules)(ledger, meters, rules, *meters)
