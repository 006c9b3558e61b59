"""Which argument names hold secrets (API keys, tokens, passwords).

Call keys leave such arguments out (``_keys``) and the redaction step hides their values
(``_redact``). Its own module, importing nothing of the package, because ``Call`` needs
it too and sits below both.
"""

from __future__ import annotations

import functools
import re

__all__ = ["is_secret_name"]

# Words that make a name secret wherever they appear in it (after splitting on _ - . and
# camelCase), the last words that do, and the words that make a trailing "key" secret.
_SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "passphrase",
        "passwd",
        "password",
        "secret",
        "secrets",
    }
)
_KEY_QUALIFIERS = frozenset(
    {"access", "api", "auth", "client", "encryption", "master", "private", "secret", "signing"}
    | {"subscription"}
)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])|([A-Z])([A-Z][a-z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether an argument or dict key called ``name`` holds a secret that keys must not see.

    ``api_key``, ``Authorization``, ``x-api-key``, ``access_token``, ``refreshToken``,
    ``client_secret`` and ``db_password`` are secret; ``max_tokens``, ``token_count``,
    ``key`` and ``author`` are not.
    """
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub(_split_camel, name).lower()) if w]
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    last = words[-1]
    if last.endswith("token") or last.endswith("apikey"):
        return True
    if last != "key" or len(words) < 2:
        return False
    return words[-2] in _KEY_QUALIFIERS or words[-2].endswith("api")


def _split_camel(match: re.Match[str]) -> str:
    first, second = (match[1], match[2]) if match[1] else (match[3], match[4])
    return f"{first}_{second}"
