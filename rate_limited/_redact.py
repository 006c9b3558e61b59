"""One redaction step for every string the package lets out of the process.

Error text goes into stores (SQLite files, Redis values), log records and the messages of
exceptions the package builds; an API key must reach none of them. A provider's
``Incorrect API key provided: sk-...``, an ``httpx.HTTPStatusError`` whose URL carries
``?key=AIza...``, a ``Call`` whose repr would print ``api_key='sk-...'``: all of them pass
through ``redact()`` first, which removes

* the values of the call's secret-named arguments (``api_key``, ``token``, ``secret``,
  ``password``, ``authorization``..., as ``rate_limited._keys.is_secret_name`` reads
  names; also inside dicts such as ``extra_headers``), wherever they appear in the text;
* bearer and basic credentials (``Bearer abc...``);
* key-shaped strings: OpenAI ``sk-...``, Anthropic ``sk-ant-...``, Google ``AIza...``, and
  a few other well-known token formats (GitHub, Hugging Face, AWS access key ids, JWTs);
* URL parameters ``key=``, ``token=``, ``api_key=``, ``sig=`` and any secret-named one;
* ``name=value`` / ``name: value`` / ``'name': 'value'`` pairs with a secret name.

Log records are redacted by ``RedactingFilter``, which every logger of the package carries
(``get_logger``); messages that know their call also remove that call's secret values.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from rate_limited._secret_names import is_secret_name


class CallArguments(Protocol):
    """What redaction reads of a call (a ``Call``; a protocol, because calls are redacted
    by this module in their ``repr``, so it cannot import them)."""

    @property
    def function(self) -> Callable[..., Any]: ...

    @property
    def all_arguments_dict(self) -> dict[str, Any]: ...

    def target(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]: ...


__all__ = [
    "REDACTED",
    "RedactingFilter",
    "describe",
    "get_logger",
    "redact",
    "redact_url",
    "secret_values",
]

#: What a secret is replaced with.
REDACTED = "***"

#: Secret values shorter than this are not searched for in text (a 2-character
#: "password" would blank every occurrence of those letters); their names still hide them.
_MIN_SECRET = 4

_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]{6,}=*")
_SHAPES = re.compile(
    r"\bsk-ant-[A-Za-z0-9_\-]{6,}"  # Anthropic
    r"|\bsk-[A-Za-z0-9_\-]{6,}"  # OpenAI (sk-..., sk-proj-...)
    r"|\bAIza[0-9A-Za-z_\-]{20,}"  # Google
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub
    r"|\bhf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWT
)
_URL_PARAM = re.compile(r"([?&;])([A-Za-z0-9_.\-\[\]]+)=([^&#\s'\"<>]+)")
_URL_SECRET_NAMES = frozenset({"key", "token", "sig", "signature", "apikey", "api-key"})
# Names start where no name character precedes (not at every \b, and not inside a word:
# either would make a long word cost quadratic time).
_QUOTED_PAIR = re.compile(
    r"""(?<![\w\-'"])(?P<q>['"]?)(?P<name>[A-Za-z_][\w\-]*)(?P=q)(?P<sep>\s*[:=]\s*)"""
    r"""(?:'(?P<single>[^'\n]*)'|"(?P<double>[^"\n]*)")"""
)
_BARE_PAIR = re.compile(
    r"(?<![\w\-])(?P<name>[A-Za-z_][\w\-]*)(?P<sep>=|:[ \t]*)"
    r"(?P<value>[^\s,;&'\"()\[\]{}<>*]+)"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without secrets: the given ``secrets`` (values known to be secret) and
    anything shaped like a credential (see the module docstring)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if not text:
        return text
    text = _CREDENTIAL.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    text = _SHAPES.sub(REDACTED, text)
    text = _URL_PARAM.sub(_url_param, text)
    text = _QUOTED_PAIR.sub(_quoted_pair, text)
    return _BARE_PAIR.sub(_bare_pair, text)


def redact_url(url: str) -> str:
    """A server's URL (``redis://user:pw@host/0?password=pw``) fit for messages and reprs:
    the password of its ``user:pw@`` part and every secret passed as a query parameter
    (``redact``'s rules) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: the text rules still apply
        return redact(url)
    if password:
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}"))
    return redact(url, [password] if password else ())


def _quoted_pair(match: re.Match[str]) -> str:
    value = match["single"] if match["single"] is not None else match["double"]
    if not is_secret_name(match["name"]) or value == REDACTED:
        return match[0]
    q, vq = match["q"], "'" if match["single"] is not None else '"'
    return f"{q}{match['name']}{q}{match['sep']}{vq}{REDACTED}{vq}"


def _bare_pair(match: re.Match[str]) -> str:
    if not is_secret_name(match["name"]) or match["value"] == REDACTED:
        return match[0]
    return f"{match['name']}{match['sep']}{REDACTED}"


def _url_param(match: re.Match[str]) -> str:
    name = match[2]
    if name.lower() in _URL_SECRET_NAMES or is_secret_name(name):
        return f"{match[1]}{name}={REDACTED}"
    return match[0]


def secret_values(call: CallArguments) -> tuple[str, ...]:
    """The values of ``call``'s secret-named arguments (and of secret-named attributes of
    the client its function is bound to), longest first, for ``redact``."""
    found: set[str] = set()
    try:
        arguments: Mapping[str, Any] = call.all_arguments_dict
    except Exception:  # arguments that do not fit the function
        _function, args, kwargs = call.target()
        arguments = {**kwargs, "": list(args)}
    _collect(arguments, found, 0)
    function = call.function
    owner = getattr(function, "__self__", None)
    for holder in (function, owner, getattr(owner, "_client", None)):
        try:
            state = vars(holder)
        except TypeError:
            continue
        for name, value in list(state.items()):
            if isinstance(name, str) and is_secret_name(name.lstrip("_")):
                _add(value, found)
    return tuple(sorted(found, key=len, reverse=True))


def _collect(value: Any, found: set[str], depth: int) -> None:
    if depth > 6:
        return
    if isinstance(value, Mapping):
        for name, item in list(value.items()):
            if isinstance(name, str) and is_secret_name(name):
                _add(item, found)
            else:
                _collect(item, found, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, found, depth + 1)


def _add(value: Any, found: set[str]) -> None:
    reveal = getattr(value, "get_secret_value", None)  # pydantic SecretStr
    if callable(reveal):
        try:
            value = reveal()
        except Exception:
            return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if len(value) >= _MIN_SECRET:
            found.add(value)
            _, _, token = value.partition(" ")  # "Bearer abc": abc alone too
            if len(token) >= _MIN_SECRET:
                found.add(token)
    elif isinstance(value, Mapping | list | tuple):
        for item in value.values() if isinstance(value, Mapping) else value:
            _add(item, found)


def describe(exc: BaseException, call: CallArguments | None = None) -> str:
    """``"ExcType: message"`` of ``exc``, redacted (with ``call``'s secrets if given)."""
    try:
        message = str(exc)
    except Exception:
        message = "<the exception's message could not be read>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return redact(text, secret_values(call) if call is not None else ())


class RedactingFilter(logging.Filter):
    """Redacts each record of the package's loggers before any handler sees it: the
    message is rendered and redacted, and a traceback becomes redacted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            record.msg, record.args = redact(message), None
            if record.exc_info:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_info, record.exc_text = None, redact(text)
            elif record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:  # a record we cannot read: drop what might hold a secret
            record.msg, record.args, record.exc_info = "<unreadable log record>", None, None
        return True


_FILTER = RedactingFilter()


def get_logger(name: str = "rate_limited") -> logging.Logger:
    """``logging.getLogger(name)`` carrying the redacting filter (a logger's filters do
    not apply to its children's records, so each logger of the package gets one)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
