"""The MockProvider's rate limiter: which buckets a request draws on, and the headers.

OpenAI limits requests (``rpm``) and tokens (``tpm``); Anthropic limits requests
(``rpm``), input tokens (``input_tpm``) and output tokens (``output_tpm``). Each API
family has its own buckets, and each model its own, as both providers document: "Rate
limits are applied separately for each model; therefore you can use different models up
to their respective limits simultaneously" (Anthropic); "Rate limits vary by the model
being used" (OpenAI). ``model_limits`` gives some models limits of their own (the others
have the default ones); ``per_model=False`` makes the models without limits of their own
share one set of buckets. A limit of None is unlimited: no bucket, and no rate-limit
headers for it. Buckets are created full on first use.

Rate-limit headers describe the buckets right after the admission decision, that is as of
the request's *arrival*, before the requests that arrive after it, and are sent with its
answer, however late that is: OpenAI's "x-ratelimit-remaining-tokens: The remaining number
of tokens that are permitted before exhausting the rate limit", in OpenAI's format (reset
as durations like ``"1s"``, ``"6m0s"``, ``"120ms"``: time until the bucket is full again);
Anthropic's in RFC 3339 instants, with the token counts "rounded to the nearest thousand"
as its docs say.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from ._buckets import TokenBucket, admit

__all__ = ["Decision", "Family", "Limits", "RateLimiter", "format_duration", "rfc3339"]

Family = Literal["openai", "anthropic"]
Header = tuple[str, str]

# The limit fields that apply to each family, and the bucket kind each one feeds.
_KINDS: dict[Family, tuple[tuple[str, str], ...]] = {
    "openai": (("rpm", "requests"), ("tpm", "tokens")),
    "anthropic": (
        ("rpm", "requests"),
        ("input_tpm", "input_tokens"),
        ("output_tpm", "output_tokens"),
    ),
}


@dataclass(frozen=True)
class Limits:
    """Per-minute limits; None means unlimited.

    ``rpm`` applies to both API families (each has its own request bucket), ``tpm`` to
    OpenAI endpoints, ``input_tpm`` and ``output_tpm`` to Anthropic's ``/v1/messages``.
    """

    rpm: float | None = None
    tpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None and not value > 0:
                raise ValueError(f"{item.name} must be a positive number or None, got {value!r}")


@dataclass
class Decision:
    """An admission decision and what goes with it: headers, charges, bucket usage."""

    admitted: bool
    family: Family
    #: Rate-limit headers in the family's format.
    headers: list[Header]
    #: Seconds until the request would fit (refused only; ``inf`` if it never can).
    wait: float = 0.0
    #: The kind of the bucket that refused ("requests", "tokens", ...), its limit, what
    #: it had in use and what the request asked of it.
    blocking_kind: str = ""
    blocking_limit: float = 0.0
    blocking_used: float = 0.0
    blocking_requested: float = 0.0
    #: Bucket name -> used/limit right after admission (admitted only).
    usage: dict[str, float] = field(default_factory=dict)
    #: The bucket charged for output, to refund unused output into (admitted only).
    output_bucket: TokenBucket | None = None


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go style), rounded up to the millisecond."""
    millis = math.ceil(seconds * 1000 - 1e-6)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(timestamp: float) -> str:
    """A wall-clock instant in RFC 3339 (UTC, whole seconds rounded up), as Anthropic."""
    moment = datetime.fromtimestamp(math.ceil(timestamp), tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class RateLimiter:
    """Admits requests against the buckets of their family (and model); thread-safe."""

    def __init__(
        self,
        limits: Limits,
        model_limits: Mapping[str, Limits] | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        window: float = 60.0,
        per_model: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._per_model = per_model
        self._now = now
        self._wall = wall
        self._window = window
        self._default = limits
        self._models: dict[str, Limits] = dict(model_limits or {})
        self._buckets: dict[str, TokenBucket] = {}

    def limits(self, model: str | None = None) -> Limits:
        """The limits in force for ``model`` (the shared ones when it has none of its own)."""
        with self._lock:
            return self._models.get(model, self._default) if model else self._default

    def set_limits(self, limits: Limits, model: str | None = None) -> None:
        """Replace the shared limits (or ``model``'s own); buckets keep what is in use."""
        with self._lock:
            if model is None:
                self._default = limits
            else:
                self._models[model] = limits
            for family, kinds in _KINDS.items():
                for attr, kind in kinds:
                    for name in list(self._buckets):
                        if not self._governs(name, f"{family}.{kind}", model):
                            continue
                        limit = getattr(limits, attr)
                        if limit is None:
                            del self._buckets[name]
                        else:
                            self._buckets[name].set_limit(limit)

    def refill(self) -> None:
        """Fill every bucket, as if the server had been idle for a minute."""
        with self._lock:
            for bucket in self._buckets.values():
                bucket.fill()

    def admit(self, family: Family, model: str, amounts: Mapping[str, float]) -> Decision:
        """Admit one request asking ``amounts`` by kind, e.g. ``{"requests": 1, ...}``."""
        with self._lock:
            buckets = self._buckets_for(family, model)
            demands = [(bucket, amounts.get(kind, 0.0)) for kind, bucket in buckets.items()]
            admission = admit(demands)
            headers = self._headers(family, buckets)
            if not admission.admitted:
                kind = next(k for k, b in buckets.items() if b is admission.blocking)
                blocking = buckets[kind]
                return Decision(
                    admitted=False,
                    family=family,
                    headers=headers,
                    wait=admission.wait,
                    blocking_kind=kind,
                    blocking_limit=blocking.capacity,
                    blocking_used=blocking.used(),
                    blocking_requested=amounts.get(kind, 0.0),
                )
            usage = {b.name: b.used() / b.capacity for b in buckets.values()}
            output_kind = "tokens" if family == "openai" else "output_tokens"
            return Decision(
                admitted=True,
                family=family,
                headers=headers,
                usage=usage,
                output_bucket=buckets.get(output_kind),
            )

    def levels(self) -> dict[str, tuple[float, float]]:
        """``{bucket name: (available now, capacity)}`` of every bucket made so far."""
        with self._lock:
            return {name: (b.available(), b.capacity) for name, b in self._buckets.items()}

    def refund(self, decision: Decision, amount: float) -> None:
        """Give back ``amount`` unused output tokens reserved by an admitted request."""
        if decision.output_bucket is not None and amount > 0:
            with self._lock:
                decision.output_bucket.refund(amount)

    def _governs(self, name: str, prefix: str, model: str | None) -> bool:
        """Whether bucket ``name`` takes its limits from ``model``'s (None: the default)."""
        if model is not None:
            return name == f"{prefix}[{model}]"
        if name == prefix:
            return True
        if not name.startswith(prefix + "["):
            return False
        return name[len(prefix) + 1 : -1] not in self._models

    def _buckets_for(self, family: Family, model: str) -> dict[str, TokenBucket]:
        own = model in self._models
        limits = self._models[model] if own else self._default
        scope = f"[{model}]" if own or self._per_model else ""
        buckets: dict[str, TokenBucket] = {}
        for attr, kind in _KINDS[family]:
            limit = getattr(limits, attr)
            if limit is None:
                continue
            name = f"{family}.{kind}{scope}"
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = TokenBucket(limit, window=self._window, now=self._now, name=name)
                self._buckets[name] = bucket
            buckets[kind] = bucket
        return buckets

    def _headers(self, family: Family, buckets: Mapping[str, TokenBucket]) -> list[Header]:
        headers: list[Header] = []
        if family == "openai":
            for kind, bucket in buckets.items():
                headers += [
                    (f"x-ratelimit-limit-{kind}", _number(bucket.capacity)),
                    (f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(bucket.available())))),
                    (f"x-ratelimit-reset-{kind}", format_duration(bucket.time_to_full())),
                ]
            return headers
        wall = self._wall()
        for kind, bucket in buckets.items():
            headers += self._anthropic_triplet(kind.replace("_", "-"), bucket, wall)
        token_buckets = [b for k, b in buckets.items() if k != "requests"]
        if token_buckets:  # the combined view: the most restrictive token bucket
            tightest = min(token_buckets, key=lambda b: b.available())
            headers += self._anthropic_triplet("tokens", tightest, wall)
        return headers

    @staticmethod
    def _anthropic_triplet(label: str, bucket: TokenBucket, wall: float) -> list[Header]:
        prefix = f"anthropic-ratelimit-{label}"
        available = max(0.0, bucket.available())
        # "The number of tokens remaining (rounded to the nearest thousand)"; requests exact.
        remaining = math.floor(available) if label == "requests" else _nearest_thousand(available)
        return [
            (f"{prefix}-limit", _number(bucket.capacity)),
            (f"{prefix}-remaining", str(remaining)),
            (f"{prefix}-reset", rfc3339(wall + bucket.time_to_full())),
        ]


def _nearest_thousand(value: float) -> int:
    return math.floor(value / 1000.0 + 0.5) * 1000
