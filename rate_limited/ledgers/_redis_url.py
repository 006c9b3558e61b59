"""The shared ledger's ``redis://`` URL and key names: ``parse_url`` (the ledger's own
``?name=`` and ``&lease=``, every other parameter checked against redis-py's options) and
how keys are read back (``ROOT``, ``literal``, ``meter_parts``). Messages show a URL
through ``rate_limited._redact.redact_url``. Used by the link, ``ledger inspect`` and the
presets."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Hashable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rate_limited._redact import redact, redact_url
from rate_limited.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_LEASE",
    "ROOT",
    "literal",
    "meter_parts",
    "parse_url",
    "partition_text",
]

#: Default seconds a holder's lease lasts without renewal (a dead process's reservations
#: come back at most this long after it died, plus one renewal period).
DEFAULT_LEASE = 20.0
#: Every shared ledger's keys start with this, then ``{name}:``.
ROOT = "rate_limited:ledger:"


def parse_url(url: str) -> tuple[str, str, float]:
    """``redis://host:port/db?name=N&lease=S`` -> (the URL for redis-py, name, lease).

    ``name`` (default ``"default"``) names the shared ledger: Runners with the same name on
    the same Redis share their quotas. ``lease`` is in seconds (default 20). Every other
    query parameter must be one redis-py knows (a misspelt one is a ``ConfigurationError``
    here, not a ``TypeError`` from inside redis-py)."""
    if not isinstance(url, str):
        raise ConfigurationError(
            "ledger= must be None (this process's own ledger) or a 'redis://host:port/db"
            f"?name=...' URL shared by the processes on one API key, got {type(url).__name__} "
            f"{redact(repr(url))}."
        )
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"ledger= must be a redis://, rediss:// or unix:// URL (or None for the "
            f"in-process ledger), got {redact_url(url)!r}."
        )
    try:
        parts.port  # noqa: B018 - read for its check
    except ValueError as exc:
        raise ConfigurationError(
            f"the port of the ledger URL {redact_url(url)!r} is not a port number ({exc}): "
            "write it redis://host:6379/0."
        ) from exc
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("name", "lease")}
    rest = [(k, v) for k, v in query if k not in ("name", "lease")]
    _check_options(url, [k for k, _ in rest])
    name = ours.get("name", "default")
    if not name or "{" in name or "}" in name:
        raise ConfigurationError(
            f"name= in the ledger URL {redact_url(url)!r} must be a non-empty name without "
            f"braces, got {name!r}: Runners given the same name share their quotas (leave "
            "name= out for the ledger named 'default')."
        )
    try:
        lease = float(ours.get("lease", DEFAULT_LEASE))
    except ValueError:
        lease = math.nan
    if not (0.2 <= lease < math.inf):
        raise ConfigurationError(
            f"lease= in the ledger URL must be a number of seconds >= 0.2, got "
            f"{ours.get('lease')!r}."
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), name, lease


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _check_options(url: str, names: list[str]) -> None:
    """Each of ``names`` (query parameters for redis-py) is a connection option redis-py
    knows, else a ``ConfigurationError`` naming it (redis-py would raise a ``TypeError``
    from inside its connection pool at the first command)."""
    try:
        from redis import connection
    except ImportError:  # the link says what to install
        return
    known = set(connection.URL_QUERY_ARGUMENT_PARSERS) | {"password", "username"}
    for cls in (
        connection.ConnectionPool,
        connection.SSLConnection,
        connection.UnixDomainSocketConnection,
    ):
        for klass in cls.__mro__[:-1]:  # not object
            init = vars(klass).get("__init__")
            if init is not None:
                parameters = inspect.signature(init).parameters.values()
                known.update(p.name for p in parameters if p.kind in _NAMED and p.name != "self")
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, ["name", "lease", *sorted(known)], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"the ledger URL {redact_url(url)!r} has a parameter {name!r} that neither the "
                f"ledger (name=, lease=) nor redis-py knows.{hint} Fix or remove it."
            )


#: ``url`` with its password hidden (in ``user:pw@`` and in the query): the package's one
#: redaction step.


def literal(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def meter_parts(rest: str, resources: list[str]) -> tuple[str, str]:
    """A meter key after ``P m:`` (``<resource>:<partition>``) -> (resource, partition).
    A partition may hold colons (OpenAI's ``ft:gpt-4o-mini:org::id`` models), and so may
    a resource's name: the longest of ``resources`` (the names declared on the ledger) the
    key starts with wins; without declarations, the resource ends at the first colon."""
    named = [r for r in resources if rest.startswith(f"{r}:")]
    if named:
        resource = max(named, key=len)
        return resource, rest[len(resource) + 1 :]
    resource, _, partition = rest.partition(":")
    return resource, partition


def partition_text(key: Hashable) -> str:
    """A partition key as it shows in its meter's key (``repr`` unless a string)."""
    return "" if key is None else key if isinstance(key, str) else repr(key)
