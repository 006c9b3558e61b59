"""Counting tokens before a call: tiktoken when it works offline, else a safe upper bound.

A preset reserves a call's prompt tokens before sending it, so a count that is too low
lets the ledger admit more than the provider will (429s), and one that is too high only
holds quota while the call is in flight (settling bills the ``usage`` the provider
reports). So the fallback errs high, on purpose:

* ``conservative_tokens(text)`` never counts fewer tokens than the MockProvider's tokenizer
  (each ``\\w+`` run ``ceil(len/4)``, each symbol 1) and aims above byte-level BPE
  tokenizers (cl100k, o200k) too: letter runs split at case changes cost ``ceil(len/4)``,
  digit runs ``ceil(len/3)`` (BPE groups at most 3 digits), non-ASCII letters (CJK,
  Cyrillic...) ``ceil(utf8 bytes/2)``, an ASCII symbol 1 (JSON and URLs are mostly
  symbols), a non-ASCII symbol (emoji, CJK punctuation) its UTF-8 bytes minus one, and a
  whitespace run other than one space 1 per 8 characters, rounded up.
* ``tiktoken_counter(model)`` is exact for OpenAI models, but tiktoken downloads its
  encodings on first use; without a network (or a cached copy) that fails. The attempt
  runs in a daemon thread with a timeout and its outcome is cached per encoding, so a
  missing encoding costs one quick failure per process, never a hang.
* ``Calibration`` learns from what the provider reports: the highest recent ratio of
  actual to estimated prompt tokens scales later estimates, up at once when the estimate
  proved low, down (never below the worst ratio seen) after enough evidence.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

__all__ = [
    "Calibration",
    "TextCounter",
    "Tokenizer",
    "conservative_tokens",
    "json_tokens",
    "resolve_counter",
    "tiktoken_counter",
]

logger = logging.getLogger("rate_limited")

#: Counts the tokens of one text.
TextCounter = Callable[[str], int]
#: What presets accept as ``tokenizer=``: a policy name or a counter of your own.
Tokenizer = Literal["auto", "tiktoken", "conservative"] | TextCounter

_PIECES = re.compile(
    r"(?P<upper>[A-Z]+[a-z]*)|(?P<lower>[a-z]+)|(?P<digit>[0-9]+)|(?P<under>_+)"
    r"|(?P<uni>[^\W\x00-\x7f]+)|(?P<sym>[^\w\s])|(?P<space>\s+)"
)


def conservative_tokens(text: str) -> int:
    """An upper bound of the tokens of ``text`` (see the module docstring for the rules)."""
    if text.isascii():
        return _ascii_tokens(text)
    total = 0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "upper" or kind == "lower" or kind == "under":
            total += (len(piece) + 3) // 4
        elif kind == "digit":
            total += (len(piece) + 2) // 3
        elif kind == "uni":
            total += (len(piece.encode()) + 1) // 2
        elif kind == "sym":
            total += 1 if piece.isascii() else max(1, len(piece.encode()) - 1)
        elif piece != " ":
            total += 1 + (len(piece) - 1) // 8
    return total


def _ascii_tokens(text: str) -> int:
    total = 0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        size = match.end() - match.start()
        if kind == "digit":
            total += (size + 2) // 3
        elif kind == "sym":
            total += 1
        elif kind == "space":
            if size > 1 or text[match.start()] != " ":
                total += 1 + (size - 1) // 8
        else:
            total += (size + 3) // 4
    return total


def json_tokens(value: Any, count: TextCounter) -> int:
    """Tokens of ``value`` as compact JSON (keys sorted, non-ASCII escaped: the widest
    spelling, so at least what a provider counts for the same structure)."""
    try:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return count(text)


# -- tiktoken, when its encoding is available offline ----------------------------------------
_encodings: dict[str, Any] = {}  # encoding name -> tiktoken.Encoding, or None when unavailable
_encodings_lock = threading.Lock()
#: Seconds to wait for tiktoken to load (or fail to download) an encoding.
TIKTOKEN_TIMEOUT = 5.0


def _encoding_name(tiktoken: Any, model: str | None) -> str:
    if model:
        try:
            return str(tiktoken.encoding_name_for_model(model))
        except (KeyError, AttributeError):
            pass
    return "o200k_base"  # gpt-4o, gpt-4.1, gpt-5, o-series


def tiktoken_counter(model: str | None, *, required: bool = False) -> TextCounter | None:
    """An exact counter for ``model``'s encoding, or None when tiktoken cannot load it.

    With ``required``, a missing tiktoken raises ImportError naming the extra instead.
    """
    try:
        import tiktoken
    except ImportError:
        if required:
            raise ImportError(
                "tokenizer='tiktoken' needs tiktoken: pip install 'rate_limited[openai]'"
            ) from None
        return None
    name = _encoding_name(tiktoken, model)
    with _encodings_lock:
        known = name in _encodings
        encoding = _encodings.get(name)
        if not known:
            _encodings[name] = None  # one attempt per process
    if not known:
        encoding = _load_encoding(tiktoken, name)
    if encoding is None:
        return None
    encode = encoding.encode

    def count(text: str) -> int:
        return len(encode(text, disallowed_special=()))

    return count


def _load_encoding(tiktoken: Any, name: str) -> Any:
    """Load an encoding in a daemon thread; give up after ``TIKTOKEN_TIMEOUT`` seconds (a
    late success still lands in the cache for the next caller)."""
    done = threading.Event()

    def load() -> None:
        try:
            encoding = tiktoken.get_encoding(name)
        except Exception as exc:
            logger.info(
                "tiktoken encoding %s is not available offline (%s: %s); estimating "
                "tokens conservatively instead",
                name,
                type(exc).__name__,
                exc,
            )
        else:
            with _encodings_lock:
                _encodings[name] = encoding
        finally:
            done.set()

    threading.Thread(target=load, name=f"rate_limited-tiktoken-{name}", daemon=True).start()
    if not done.wait(TIKTOKEN_TIMEOUT):
        logger.info(
            "tiktoken took over %.0f s to load %s; estimating conservatively",
            TIKTOKEN_TIMEOUT,
            name,
        )
    with _encodings_lock:
        return _encodings.get(name)


def resolve_counter(tokenizer: Tokenizer, model: str | None) -> TextCounter:
    """The text counter a preset uses for a call to ``model``."""
    if callable(tokenizer):
        return tokenizer
    if tokenizer == "conservative":
        return conservative_tokens
    exact = tiktoken_counter(model, required=tokenizer == "tiktoken")
    if exact is None:
        if tokenizer == "tiktoken":
            raise RuntimeError(
                f"tokenizer='tiktoken': the encoding for {model!r} could not be loaded "
                "(tiktoken downloads it on first use); use tokenizer='auto' to fall back."
            )
        return conservative_tokens
    return exact


# -- learning from the usage the provider reports ---------------------------------------------
class Calibration:
    """Scales raw prompt estimates by what the provider reported for earlier calls.

    Keeps the ratios ``actual / raw estimate`` of the last ``window`` calls. The factor is
    the highest of them times ``1 + margin``: above 1 as soon as one estimate proved low;
    below 1 (shrinking a conservative estimator toward reality) only after
    ``min_samples`` calls, and never below the worst ratio seen, so each of those calls
    would still have been estimated at or above its actual count. Thread-safe.
    """

    def __init__(self, window: int = 512, min_samples: int = 32, margin: float = 0.02) -> None:
        self._ratios: deque[float] = deque(maxlen=window)
        self._min_samples = min_samples
        self._margin = margin
        self._lock = threading.Lock()
        self._factor = 1.0

    @property
    def factor(self) -> float:
        """What raw estimates are multiplied by now."""
        return self._factor

    def observe(self, raw_estimate: float, actual: float) -> None:
        """Record one call's raw prompt estimate and the prompt tokens it was billed."""
        if not raw_estimate > 0 or not actual >= 0 or math.isinf(actual):
            return
        with self._lock:
            self._ratios.append(actual / raw_estimate)
            worst = max(self._ratios) * (1.0 + self._margin)
            if worst >= 1.0 or len(self._ratios) >= self._min_samples:
                self._factor = worst
            else:
                self._factor = 1.0

    def apply(self, raw_estimate: float) -> int:
        """``raw_estimate`` scaled by the current factor, rounded up."""
        return math.ceil(raw_estimate * self._factor - 1e-9)
