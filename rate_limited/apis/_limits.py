"""``LimitTracker``: what a preset knows of the provider's limits, per model, and tells the
Runners' ledgers.

Both providers limit each model separately ("Rate limits are applied separately for each
model; therefore you can use different models up to their respective limits
simultaneously", Anthropic's rate-limit docs; OpenAI: "Rate limits vary by the model being
used" and its headers describe the model's own buckets). A preset's resources are
therefore partitioned by model, and the tracker keeps, per model:

* **the limits in force**: given to the preset (``model_limits`` overriding the preset's
  own for one model), or read from the ``limit`` headers of that model's answers. A limit
  the user gave that the provider reports lower is lowered. ``quotas(name)`` is the live
  mapping the resources read a new model's quota from (``Resource(partition_quotas=...)``).
* **unknown limits** (None): until the model's first answer the ledger enforces a
  provisional quota that lets one call through (a probe; each probe failing without
  headers lets one more through), so the first requests never storm. A limit the
  provider does not report does not exist.
* **what the headers say is left**: ``remaining`` describes the bucket when the provider
  took the request; the tracker hands it to each ledger with the request's admission, so
  that the ledger compares it with what it believed at that moment (``Ledger.reconcile``).
  A 429's headers leave the refused request out: it is reported as ``refused``.
* **calls larger than a limit**: once a model's limit is known, ``note_demand`` refuses
  them at ``schedule()``; one scheduled before is let through (the quota never goes below
  the largest demand seen, or it would wait forever) and the provider refuses it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING

from rate_limited._feedback import LedgerControl
from rate_limited.apis._headers import Family, read_limits
from rate_limited.exceptions import QuotaExceededError

if TYPE_CHECKING:
    from rate_limited.ledgers.base import Reservation
    from rate_limited.resources import Resource

__all__ = ["MINUTE", "UNKNOWN_QUOTA", "LimitTracker"]

logger = logging.getLogger("rate_limited")

#: Seconds in the window of every per-minute limit.
MINUTE = 60.0
#: The declared quota of a limit not known yet (so ``schedule()`` accepts any call), and
#: the quota of a limit the provider does not have.
UNKNOWN_QUOTA = 1e15


class _Model:
    """What is known of one model's limits."""

    __slots__ = ("given", "in_force", "max_demand", "probes")

    def __init__(self, given: Mapping[str, float | None]) -> None:
        #: By header kind: the limit given (None: to discover).
        self.given = dict(given)
        #: By header kind: the limit in force (absent: not known yet; inf: none).
        self.in_force = {k: float(v) for k, v in given.items() if v is not None}
        #: By resource name: the largest demand of a call scheduled for the model.
        self.max_demand: dict[str, float] = {}
        self.probes = 0


class _Quotas(Mapping[Hashable, float]):
    """The quota of each model's meter for one resource, as the tracker knows it now."""

    def __init__(self, tracker: LimitTracker, name: str) -> None:
        self._tracker = tracker
        self._name = name

    def __getitem__(self, model: Hashable) -> float:
        return self._tracker.quota(self._name, model)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._tracker._models))

    def __len__(self) -> int:
        return len(self._tracker._models)


class LimitTracker:
    """Limits of one preset, per model: given, discovered, and fed to every ledger."""

    def __init__(
        self,
        owner: str,
        family: Family,
        limit_kinds: tuple[tuple[str, str], ...],
        given: Mapping[str, float | None],
        model_limits: Mapping[Hashable, Mapping[str, float | None]] | None = None,
    ) -> None:
        self._owner = owner
        self._family: Family = family
        #: ``(resource name, header kind)`` of each limit.
        self.limit_kinds = limit_kinds
        self._kind_of = dict(limit_kinds)
        self._given = dict(given)
        # Per model, by header kind (model_limits are keyed by resource name).
        self._model_given = {
            model: {kind: limits.get(name, self._given.get(kind)) for name, kind in limit_kinds}
            for model, limits in (model_limits or {}).items()
        }
        self._models: dict[Hashable, _Model] = {}
        self._controls: list[LedgerControl] = []
        self._warned: set[str] = set()
        self._lock = threading.RLock()
        #: The preset's declared Resources by name: a limit read from the headers becomes
        #: their quota too, so ``preset.resources`` (and plots of a run) show it.
        self.declared: dict[str, Resource] = {}

    def _state(self, model: Hashable) -> _Model:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model(self._model_given.get(model, self._given))
        return state

    # -- what is known -----------------------------------------------------------------------
    def limits_for(self, model: Hashable) -> dict[str, float | None]:
        """Limits per minute in force for ``model``, by resource name (None: unknown yet)."""
        with self._lock:
            state = self._state(model)
            return {name: state.in_force.get(kind) for name, kind in self.limit_kinds}

    @property
    def limits(self) -> dict[str, float | None]:
        """Limits per minute, by resource name: the ones given, or (for a limit to
        discover) the one read for the models used so far if they agree, else None."""
        with self._lock:
            out: dict[str, float | None] = {}
            for name, kind in self.limit_kinds:
                given = self._given.get(kind)
                if given is not None:
                    out[name] = self._in_force_everywhere(kind, given)
                    continue
                found = {s.in_force.get(kind) for s in self._models.values()}
                out[name] = found.pop() if len(found) == 1 else None
            return out

    def _in_force_everywhere(self, kind: str, given: float) -> float:
        """A given limit, or the lower one the headers reported for every model."""
        lowered = {s.in_force.get(kind, given) for s in self._models.values()}
        return lowered.pop() if len(lowered) == 1 else given

    @property
    def limits_by_model(self) -> dict[Hashable, dict[str, float | None]]:
        """``{model: {resource name: limit}}`` for the models used so far."""
        with self._lock:
            return {model: self.limits_for(model) for model in list(self._models)}

    def quotas(self, name: str) -> Mapping[Hashable, float]:
        """The live ``{model: quota}`` of resource ``name`` (``Resource.partition_quotas``)."""
        return _Quotas(self, name)

    def quota(self, name: str, model: Hashable) -> float:
        """The quota a ledger should enforce for ``model``'s meter of ``name`` now."""
        kind = self._kind_of[name]
        with self._lock:
            state = self._state(model)
            limit = state.in_force.get(kind)
            if limit is None:
                return self._provisional(state, name, kind)
            return self._quota_for(state, name, limit)

    # -- ledgers -----------------------------------------------------------------------------
    def attach(self, control: LedgerControl) -> None:
        """A Runner's ledger: it reads each model's quota from ``quotas`` when the model's
        first call arrives, and gets every change from now on."""
        with self._lock:
            self._controls = [c for c in self._controls if not c.closed]
            self._controls.append(control)

    @property
    def attached(self) -> bool:
        return bool(self._controls)

    def unknown(self) -> list[str]:
        """Names of the limits left to discover (for the model-less default)."""
        return [n for n, k in self.limit_kinds if self._given.get(k) is None]

    def note_demand(self, name: str, model: Hashable, demand: float) -> None:
        """A call for ``model`` is scheduled needing ``demand`` of the limit ``name``."""
        kind = self._kind_of[name]
        with self._lock:
            state = self._state(model)
            limit = state.in_force.get(kind)
            if limit is not None and demand > limit:
                raise QuotaExceededError(
                    f"the call needs {demand:g} of {name} but the provider's limit for "
                    f"{model} is {limit:g} per minute, so it could never run; lower its "
                    "max_tokens or split it.",
                    resource=name,
                    needed=demand,
                    quota=limit,
                )
            if demand <= state.max_demand.get(name, 0.0):
                return
            state.max_demand[name] = demand
            if limit is not None:
                return
            update = self._provisional(state, name, kind)
            controls = list(self._controls)
        for control in controls:
            control.set_quota(name, update, partition=model)

    def _provisional(self, state: _Model, name: str, kind: str) -> float:
        base = 1.0 if kind == "requests" else max(1.0, state.max_demand.get(name, 1.0))
        return base * (1 + state.probes)

    def _quota_for(self, state: _Model, name: str, limit: float) -> float:
        if math.isinf(limit):
            return UNKNOWN_QUOTA
        largest = state.max_demand.get(name, 0.0)
        if largest > limit:
            logger.warning(
                "A call scheduled before the limits were known needs %g of %s, but the "
                "provider's limit is %g: the ledger lets it through once its bucket is empty "
                "(up to a minute) and the provider refuses it (RequestTooLargeError).",
                largest,
                name,
                limit,
            )
        return max(limit, largest)

    # -- headers -----------------------------------------------------------------------------
    def feedback(
        self,
        headers: Mapping[str, str] | None,
        model: Hashable,
        answered: bool,
        refused: bool = False,
        admission: Reservation | None = None,
    ) -> None:
        """What one response (``answered``) or failed request for ``model`` said; a 429
        (``refused``) leaves its request out of the ``remaining`` it reports."""
        readings = read_limits(headers, self._family)
        if admission is None:
            admission = LedgerControl.admission()
        quotas: list[tuple[str, float]] = []
        reports: list[tuple[str, float, float]] = []
        discovered: list[str] = []
        with self._lock:
            state = self._state(model)
            unknown = [(n, k) for n, k in self.limit_kinds if k not in state.in_force]
            if unknown and not readings and not answered:
                state.probes += 1  # a probe failed without telling anything: let one more go
                quotas += [(name, self._provisional(state, name, kind)) for name, kind in unknown]
            elif unknown:
                for name, kind in unknown:
                    if kind not in readings or readings[kind].limit is None:
                        state.in_force[kind] = math.inf  # described buckets do not include it
                        quotas.append((name, UNKNOWN_QUOTA))
                        discovered.append(f"{name}=unlimited")
            for name, kind in self.limit_kinds:
                reading = readings.get(kind)
                limit = reading.limit if reading is not None else None
                in_force = state.in_force.get(kind)
                if limit is not None and limit > 0 and (in_force is None or limit < in_force):
                    if in_force is not None and not math.isinf(in_force):
                        self._warn_lower(name, model, limit, in_force)
                    state.in_force[kind] = in_force = limit
                    quotas.append((name, self._quota_for(state, name, limit)))
                    if name in self.declared:
                        self.declared[name].quota = int(limit) if limit.is_integer() else limit
                    discovered.append(f"{name}={limit:g}")
                if reading is None or reading.remaining is None or in_force is None:
                    continue
                if not math.isinf(in_force):
                    reports.append((name, reading.remaining, reading.precision))
            controls = list(self._controls)
        if discovered:
            logger.info(
                "Limits read from the response headers for %s: %s", model, ", ".join(discovered)
            )
            if not readings and answered:
                logger.warning(
                    "%s: the provider sent no rate-limit headers, so the limits not given "
                    "are not enforced; pass them (e.g. requests_per_minute=...).",
                    self._owner,
                )
        for control in controls:
            for name, quota in quotas:
                control.set_quota(name, quota, partition=model)
            for name, remaining, precision in reports:
                control.report_remaining(
                    name,
                    remaining,
                    partition=model,
                    admission=admission,
                    precision=precision,
                    refused=refused,
                )

    def _warn_lower(self, name: str, model: Hashable, limit: float, given: float) -> None:
        if f"{name}:{model}" not in self._warned:
            self._warned.add(f"{name}:{model}")
            logger.warning(
                "The provider reports a %s limit of %g for %s, lower than the %g given; using %g.",
                name,
                limit,
                model,
                given,
                limit,
            )
