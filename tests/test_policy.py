"""Retry policy as pure functions: error classification, Retry-After, backoff, validation.

Exceptions are shaped like the ones real clients raise (openai/anthropic, requests,
aiohttp) or are the real thing where it is cheap to build (httpx, urllib), so that the
classification is checked against what users actually get, without importing any SDK.
"""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import random
import threading
import urllib.error
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from rate_limited import (
    Backoff,
    ConfigurationError,
    PermanentError,
    RetryIf,
    Runner,
    RunResult,
    ValidationError,
    constant_backoff,
    exponential_backoff,
    retry_if_exception_type,
    retry_if_status,
    retry_if_transient,
)
from rate_limited._policy import (
    http_status,
    is_transient,
    normalize_validators,
    retry_after_seconds,
    validate,
)
from rate_limited.testing import FakeClock


# -- exceptions shaped like the clients' ---------------------------------------------------------
class SDKStatusError(Exception):
    """openai.APIStatusError / anthropic.APIStatusError: ``status_code`` and ``response``."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.response = SimpleNamespace(status_code=status_code, headers=headers or {})


class RequestsHTTPError(OSError):
    """requests.HTTPError: the status only on ``response.status_code``."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status_code} Client Error")
        self.response = SimpleNamespace(status_code=status_code, headers=headers or {})


class AiohttpResponseError(Exception):
    """aiohttp.ClientResponseError: ``status`` and ``headers`` on the exception."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}, message='...'")
        self.status = status
        self.headers = headers or {}


def httpx_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://api.example.com/v1/chat/completions")
    response = httpx.Response(status, request=request, headers=headers)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


@pytest.fixture
def urllib_error() -> Iterator[Callable[..., urllib.error.HTTPError]]:
    made: list[urllib.error.HTTPError] = []

    def make(status: int, headers: dict[str, str] | None = None) -> urllib.error.HTTPError:
        message = email.message.Message()
        for name, value in (headers or {}).items():
            message[name] = value
        error = urllib.error.HTTPError("https://x", status, "reason", message, None)
        made.append(error)
        return error

    yield make
    for error in made:
        error.close()


# -- http_status ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "status"),
    [
        pytest.param(lambda: SDKStatusError(429), 429, id="openai-anthropic"),
        pytest.param(lambda: httpx_error(503), 503, id="httpx"),
        pytest.param(lambda: RequestsHTTPError(404), 404, id="requests"),
        pytest.param(lambda: AiohttpResponseError(502), 502, id="aiohttp"),
        pytest.param(lambda: ValueError("no status"), None, id="no-status"),
        pytest.param(lambda: ConnectionResetError(104, "reset"), None, id="oserror-errno"),
    ],
)
def test_http_status_is_read_from_every_client_shape(
    make: Callable[[], BaseException], status: int | None
) -> None:
    assert http_status(make()) == status


def test_http_status_of_a_urllib_error(urllib_error: Callable[..., urllib.error.HTTPError]) -> None:
    assert http_status(urllib_error(418)) == 418


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(True, id="bool"),
        pytest.param("429", id="str"),
        pytest.param(42, id="not-an-http-status"),
        pytest.param(600, id="too-large"),
        pytest.param(None, id="none"),
    ],
)
def test_http_status_ignores_what_is_not_a_status(value: object) -> None:
    error = Exception("x")
    error.status_code = value  # type: ignore[attr-defined]
    assert http_status(error) is None


# -- retry_after_seconds -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        pytest.param({"retry-after": "7"}, 7.0, id="seconds"),
        pytest.param({"retry-after": "1.5"}, 1.5, id="fractional"),
        pytest.param({"retry-after-ms": "250"}, 0.25, id="milliseconds"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, id="ms-wins"),
        pytest.param({"retry-after": "-3"}, 0.0, id="negative-is-now"),
        pytest.param({}, None, id="missing"),
    ],
)
def test_retry_after_from_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(SDKStatusError(429, headers)) == seconds
    assert retry_after_seconds(AiohttpResponseError(429, headers)) == seconds


def test_retry_after_from_a_real_httpx_response_is_case_insensitive() -> None:
    assert retry_after_seconds(httpx_error(429, {"Retry-After": "12"})) == 12.0


def test_retry_after_from_a_urllib_error(
    urllib_error: Callable[..., urllib.error.HTTPError],
) -> None:
    assert retry_after_seconds(urllib_error(503, {"Retry-After": "4"})) == 4.0


def test_retry_after_as_an_http_date() -> None:
    future = datetime.now(timezone.utc) + timedelta(seconds=30)
    date = email.utils.format_datetime(future, usegmt=True)
    seconds = retry_after_seconds(SDKStatusError(429, {"retry-after": date}))
    assert seconds is not None and 28 <= seconds <= 30
    past = email.utils.format_datetime(datetime(2015, 10, 21, tzinfo=timezone.utc), usegmt=True)
    assert retry_after_seconds(SDKStatusError(429, {"retry-after": past})) == 0.0


def test_no_headers_no_retry_after() -> None:
    assert retry_after_seconds(ValueError("x")) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("soon", id="word"),
        pytest.param("Wed, 99 Foo 2015 07:28:00 GMT", id="broken-date"),
        pytest.param("inf", id="infinite"),
    ],
)
def test_garbage_retry_after_is_ignored(value: str) -> None:
    assert retry_after_seconds(SDKStatusError(429, {"retry-after": value})) is None


def run_with_deadline(runner: Runner, seconds: float = 2.0) -> RunResult | None:
    """run() in a thread; None if it has not returned by the deadline (then it is stopped)."""
    out: list[RunResult] = []
    thread = threading.Thread(target=lambda: out.append(runner.run()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        assert runner._loop_thread is not None and runner._engine is not None
        runner._loop_thread.call_soon(runner._engine.request_stop)
        thread.join(seconds)
        return None
    return out[0]


def test_a_429_with_a_garbage_retry_after_does_not_hang_run() -> None:
    attempts = 0

    async def rate_limited_once(x: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise SDKStatusError(429, {"retry-after": "soon"})
        return x

    runner = Runner(
        rate_limited_once, [], clock=FakeClock(), progress=False, backoff=constant_backoff(0)
    )
    runner.schedule(1)
    try:
        result = run_with_deadline(runner)
        assert result is not None, "run() hung"
        assert result.results == [1]
    finally:
        runner.close()


# -- is_transient --------------------------------------------------------------------------------
def type_error_from_the_call_site() -> TypeError:
    def takes_one(x: int) -> int:
        return x

    try:
        takes_one(1, 2)  # type: ignore[call-arg]
    except TypeError as exc:
        return exc
    raise AssertionError("unreachable")


def type_error_from_inside() -> TypeError:
    def bad(x: int) -> int:
        return x + "1"  # type: ignore[operator]

    try:
        bad(1)
    except TypeError as exc:
        return exc
    raise AssertionError("unreachable")


class MyPermanent(PermanentError):
    pass


@pytest.mark.parametrize(
    ("make", "transient"),
    [
        *(
            pytest.param(lambda s=s: SDKStatusError(s), False, id=str(s))
            for s in (400, 401, 403, 404, 410, 418, 422)
        ),
        *(
            pytest.param(lambda s=s: SDKStatusError(s), True, id=str(s))
            for s in (408, 409, 425, 429, 500, 502, 503, 504, 529)
        ),
        pytest.param(lambda: httpx_error(401), False, id="httpx-401"),
        pytest.param(lambda: httpx_error(500), True, id="httpx-500"),
        pytest.param(lambda: RequestsHTTPError(403), False, id="requests-403"),
        pytest.param(lambda: AiohttpResponseError(503), True, id="aiohttp-503"),
        pytest.param(lambda: ConnectionResetError(), True, id="connection-reset"),
        pytest.param(lambda: TimeoutError(), True, id="timeout"),
        pytest.param(lambda: KeyError("choices"), True, id="no-status"),
        pytest.param(lambda: PermanentError("no"), False, id="PermanentError"),
        pytest.param(lambda: MyPermanent("no"), False, id="PermanentError-subclass"),
        pytest.param(type_error_from_the_call_site, False, id="arguments-do-not-fit"),
        pytest.param(type_error_from_inside, True, id="TypeError-inside-the-function"),
        pytest.param(lambda: SDKStatusError(200), True, id="200-response-failed-to-parse"),
    ],
)
def test_is_transient(make: Callable[[], BaseException], transient: bool) -> None:
    error = make()
    assert is_transient(error) is transient
    assert retry_if_transient(error) is transient


# -- RetryIf composition -------------------------------------------------------------------------
def test_retry_if_exception_type() -> None:
    predicate = retry_if_exception_type(KeyError, TimeoutError)
    assert predicate(KeyError("x")) and predicate(TimeoutError())
    assert not predicate(ValueError())
    assert "KeyError" in repr(predicate)


def test_retry_if_status() -> None:
    predicate = retry_if_status(429, 503)
    assert predicate(SDKStatusError(429)) and predicate(httpx_error(503))
    assert not predicate(SDKStatusError(500)) and not predicate(ValueError())


@pytest.mark.parametrize(
    ("error", "either", "both", "neither"),
    [
        pytest.param(SDKStatusError(429), True, False, False, id="status-only"),
        pytest.param(KeyError("x"), True, False, False, id="type-only"),
        pytest.param(AiohttpResponseError(429), True, False, False, id="other-client"),
        pytest.param(ValueError(), False, False, True, id="none"),
    ],
)
def test_or_and_not(error: BaseException, either: bool, both: bool, neither: bool) -> None:
    status, kind = retry_if_status(429), retry_if_exception_type(KeyError)
    assert (status | kind)(error) is either
    assert (status & kind)(error) is both
    assert (~(status | kind))(error) is neither
    assert isinstance(status | kind, RetryIf)


def test_composition_with_plain_functions_and_repr() -> None:
    def is_key_error(exc: BaseException) -> bool:
        return isinstance(exc, KeyError)

    combined = retry_if_status(500) | is_key_error
    assert combined(KeyError("x")) and combined(SDKStatusError(500))
    assert not (retry_if_transient & is_key_error)(ValueError())
    assert (retry_if_transient & ~retry_if_status(503))(SDKStatusError(500))
    assert not (retry_if_transient & ~retry_if_status(503))(SDKStatusError(503))
    assert "|" in repr(combined) and "~" in repr(~retry_if_transient)


# -- backoff -------------------------------------------------------------------------------------
def test_exponential_backoff_without_jitter_doubles_up_to_the_maximum() -> None:
    backoff = exponential_backoff(initial=0.5, maximum=30, jitter=False)
    delays = [backoff(failures, None) for failures in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff(0, None) == 0.5


def test_exponential_backoff_multiplier() -> None:
    backoff = exponential_backoff(initial=1, maximum=100, multiplier=3, jitter=False)
    assert [backoff(n) for n in (1, 2, 3, 4, 5)] == [1, 3, 9, 27, 81]


def test_exponential_backoff_stays_at_the_maximum_for_many_failures() -> None:
    backoff = exponential_backoff(initial=0.5, maximum=30, jitter=False)
    assert backoff(5000, None) == 30.0


def test_full_jitter_stays_within_bounds_and_is_seeded() -> None:
    backoff = exponential_backoff(initial=0.5, maximum=30, rng=random.Random(7))
    again = exponential_backoff(initial=0.5, maximum=30, rng=random.Random(7))
    reference = random.Random(7)
    for failures in range(1, 200):
        ceiling = min(30.0, 0.5 * 2.0 ** min(failures - 1, 100))
        delay = backoff(failures, None)
        assert 0 <= delay <= ceiling
        assert delay == again(failures, None)
        assert delay == pytest.approx(ceiling * reference.random())


def test_full_jitter_spreads_out() -> None:
    backoff = exponential_backoff(initial=1, maximum=1, rng=random.Random(1))
    delays = [backoff(1, None) for _ in range(1000)]
    assert min(delays) < 0.05 and max(delays) > 0.95  # uniform over [0, 1]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"initial": -1}, id="initial"),
        pytest.param({"maximum": -1}, id="maximum"),
        pytest.param({"multiplier": 0.5}, id="multiplier"),
    ],
)
def test_exponential_backoff_refuses_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        exponential_backoff(**kwargs)


def test_constant_backoff_and_sums() -> None:
    assert constant_backoff(2)(5, None) == 2.0
    assert constant_backoff(-1)(1, None) == 0.0  # never negative
    total = constant_backoff(1) + exponential_backoff(initial=2, jitter=False)
    assert isinstance(total, Backoff)
    assert [total(n, None) for n in (1, 2, 3)] == [3.0, 5.0, 9.0]
    with_function = constant_backoff(1) + (lambda failures, exc: 10 * failures)
    assert with_function(3, None) == 31.0
    assert "+" in repr(total)


# -- validation ----------------------------------------------------------------------------------
def is_positive(value: Any) -> bool:
    return bool(value > 0)


def is_even(value: Any) -> bool:
    return bool(value % 2 == 0)


def test_validate_passes_and_names_the_first_failing_validator() -> None:
    assert validate(4, (is_positive, is_even)) == ("", None)
    message, cause = validate(3, (is_positive, is_even))
    assert "is_even" in message and "False" in message and cause is None
    message, _ = validate(-2, (is_positive, is_even))
    assert "is_positive" in message


def test_validate_records_a_validator_that_raises() -> None:
    def explode(value: Any) -> bool:
        raise KeyError("choices")

    message, cause = validate({}, (explode,))
    assert "explode" in message and "KeyError" in message
    assert isinstance(cause, KeyError)


class Ambiguous:
    """What ``df["x"] > 0`` returns: a value whose truth is an error."""

    def __bool__(self) -> bool:
        raise ValueError("The truth value of a Series is ambiguous.")


def test_a_validator_whose_answer_has_no_truth_value_fails_validation() -> None:
    message, cause = validate(1, (lambda value: Ambiguous(),))
    assert message and isinstance(cause, ValueError)


@pytest.mark.parametrize("kind", [pytest.param("async"), pytest.param("sync")])
def test_a_validator_whose_answer_has_no_truth_value_does_not_hang_run(kind: str) -> None:
    async def async_echo(x: int) -> int:
        await asyncio.sleep(0)
        return x

    def sync_echo(x: int) -> int:
        return x

    runner = Runner(
        async_echo if kind == "async" else sync_echo,
        [],
        clock=FakeClock(),
        progress=False,
        max_retries=1,
        backoff=constant_backoff(0),
        validation=lambda value: Ambiguous(),
    )
    runner.schedule(1)
    try:
        result = run_with_deadline(runner)
        assert result is not None, "run() hung"
        assert all(isinstance(e, ValidationError) for e in result.exceptions[0])
    finally:
        runner.close()


def test_normalize_validators() -> None:
    assert normalize_validators(None, None) == ()
    assert normalize_validators(is_even, None) == (is_even,)
    assert normalize_validators([is_positive, is_even], None) == (is_positive, is_even)
    assert normalize_validators((v for v in [is_even]), None) == (is_even,)
    # 0.4's validation_function= runs first, then validation=
    assert normalize_validators([is_even], is_positive) == (is_positive, is_even)


@pytest.mark.parametrize(
    ("validation", "validation_function"),
    [
        pytest.param([is_even, 5], None, id="list-with-a-non-callable"),
        pytest.param("is_even", None, id="str"),
        pytest.param(None, "is_even", id="04-alias-not-callable"),
        pytest.param(5, None, id="not-callable-not-iterable"),
    ],
)
def test_non_callable_validators_are_a_configuration_error(
    validation: Any, validation_function: Any
) -> None:
    with pytest.raises(ConfigurationError, match="validation"):
        normalize_validators(validation, validation_function)


# -- combining policies --------------------------------------------------------------------------
def test_retry_predicates_combine_from_either_side_and_flatten() -> None:
    from rate_limited import retry_if_exception_type, retry_if_transient

    def is_value_error(e: BaseException) -> bool:
        return isinstance(e, ValueError)

    either = is_value_error | retry_if_exception_type(KeyError)  # a plain function first
    assert either(ValueError()) and either(KeyError()) and not either(OSError())
    both = is_value_error & retry_if_transient
    assert both(ValueError()) and not both(KeyError())
    three = retry_if_exception_type(KeyError) | is_value_error | retry_if_exception_type(OSError)
    assert len(three._parts) == 3  # one flat "any", not a nest of pairs
    assert repr(three).startswith("(retry_if_exception_type(KeyError) | <function")
    assert three(OSError()) and not three(TypeError())
    with pytest.raises(TypeError):
        retry_if_transient | 3  # type: ignore[operator]


def test_backoffs_add_from_either_side_flatten_and_sum() -> None:
    from rate_limited import ArgumentTypeError, constant_backoff

    total = constant_backoff(1) + (lambda n, e: 2.0 * n) + 0.5
    assert total(3) == 1 + 6 + 0.5
    assert len(total._parts) == 3
    assert (0.25 + constant_backoff(1))(1) == 1.25
    assert sum([constant_backoff(1), constant_backoff(2)])(1) == 3.0  # type: ignore[operator]
    with pytest.raises(ArgumentTypeError):
        constant_backoff(1) + "soon"  # type: ignore[operator]
