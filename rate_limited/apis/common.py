"""What every API preset shares: the requests-per-minute quota and the too-large error.

``get_requests_per_minute(quota)`` is rate_limited 0.4's helper, kept at its 0.4 import
path. It now refills continuously (``refill="bucket"``), as OpenAI and Anthropic count
requests; pass ``refill="window"`` for 0.4's model, where each request counts for a whole
minute.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import PermanentError
from rate_limited.resources import Refill, Resource

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = ["RequestTooLargeError", "get_requests_per_minute"]


#: ``Resource(refill_delay=...)`` of the provider presets: an idle bucket starts refilling
#: this long after a call is admitted, because the provider's only starts when the request
#: arrives (see ``rate_limited._meters.BucketMeter``).
PROVIDER_REFILL_DELAY = 0.5


def _one_request(call: Call) -> int:
    return 1


def get_requests_per_minute(
    quota: int | float,
    refill: Refill = "bucket",
    *,
    partition: Callable[[Call], Hashable] | None = None,
    partition_quotas: Mapping[Hashable, float] | None = None,
) -> Resource:
    """A ``"requests_per_minute"`` Resource: each call uses 1 of ``quota`` per minute
    (per ``partition`` key, e.g. per model, if given)."""
    return Resource(
        name="requests_per_minute",
        quota=quota,
        time_window_seconds=60,
        arguments_usage_extractor=_one_request,
        refill=refill,
        refill_delay=PROVIDER_REFILL_DELAY,
        partition=partition,
        partition_quotas=partition_quotas,
    )


class RequestTooLargeError(PermanentError):
    """The provider refused a request larger than a whole rate-limit bucket (a 429 with
    ``x-should-retry: false``): no retry can help; lower ``max_tokens`` or split it.

    It carries ``status_code`` 429, so the Runner knows the request was not billed.
    """

    status_code = 429

    def __init__(self, message: str, response: Any = None) -> None:
        super().__init__(message)
        #: The provider's HTTP response, if any.
        self.response = response
