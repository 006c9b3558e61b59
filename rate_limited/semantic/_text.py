"""What a semantic cache compares, and what must match exactly: one call split in two.

``split(call)`` returns the *compared text* (the conversation, or the argument ``text=``
names) and the *scope*: a stable key of everything else about the call — the function,
the model, the system prompt, tools, temperature, ``max_tokens`` and every other argument
— made by ``rate_limited._keys.call_key`` with the compared text taken out (replaced by a
placeholder, so its place still counts). Two calls are compared only when their scopes
are equal; a call that differs in anything but the compared text is never answered by the
other's entry.

The default reads the presets' requests: the non-system messages of ``messages=`` (OpenAI
chat completions, Anthropic messages; Anthropic's ``system=`` is an ordinary argument, so
it is in the scope), the ``input=`` of the Responses API (``instructions=`` in the scope)
or a ``prompt=`` string. A message whose content is not text (an image, an audio part)
makes the call not comparable: it is sent as usual.

Guards are cheap lexical checks applied after the similarity threshold. Sentence
embeddings (mean-pooled, nearly bag-of-words) are blind to exactly the edits that change
an answer while keeping the words: a changed number ("size 42" / "size 44"), a negation
("is cancelled" / "is not cancelled"), and the same words in another order ("Fahrenheit
to Celsius" / "Celsius to Fahrenheit"). The default guards reject those pairs whatever
their similarity; benchmarks/RESULTS.md measures what they buy.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rate_limited import _redact
from rate_limited._keys import call_key
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rate_limited.calls import Call

__all__ = [
    "DEFAULT_GUARDS",
    "Guard",
    "Normalizer",
    "TextOf",
    "collapse_whitespace",
    "redact",
    "same_negation",
    "same_numbers",
    "same_word_order",
    "split",
]

#: ``text(call) -> str | None``: the text to compare (None: don't compare this call).
TextOf = Callable[["Call"], "str | None"]
#: ``normalize(text) -> text``, applied before embedding and before the guards.
Normalizer = Callable[[str], str]
#: ``guard(a, b) -> bool``: False vetoes a match between texts a and b.
Guard = Callable[[str, str], bool]

#: Stands where the compared text was, in the arguments the scope is made of.
_PLACEHOLDER = "\x00rate_limited.semantic.compared\x00"
_SCOPE_NAMESPACE = "rate_limited.semantic.scope/1"
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


# -- normalizations and guards ---------------------------------------------------------------
def collapse_whitespace(text: str) -> str:
    """Unicode NFC, runs of whitespace as one space, no leading or trailing space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


_WORD = re.compile(r"\w+(?:'\w+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset(
    {"not", "no", "never", "nor", "none", "nothing", "nobody", "neither", "cannot", "without"}
)


def _words(text: str) -> list[str]:
    return [word.casefold() for word in _WORD.findall(text)]


def same_numbers(a: str, b: str) -> bool:
    """The two texts hold the same numbers ("size 42" never answers "size 44")."""
    return sorted(_NUMBER.findall(a)) == sorted(_NUMBER.findall(b))


def _negations(text: str) -> int:
    return sum(1 for w in _words(text) if w in _NEGATIONS or w.endswith("n't"))


def same_negation(a: str, b: str) -> bool:
    """The two texts hold as many negations ("is cancelled" never answers "is not")."""
    return _negations(a) == _negations(b)


def same_word_order(a: str, b: str) -> bool:
    """The texts are not the same words in another order ("F to C" never answers "C to F")."""
    words_a, words_b = _words(a), _words(b)
    return words_a == words_b or sorted(words_a) != sorted(words_b)


#: The guards a ``SemanticCache`` applies unless told otherwise.
DEFAULT_GUARDS: tuple[Guard, ...] = (same_numbers, same_negation, same_word_order)


# -- redaction -------------------------------------------------------------------------------
# Prompt texts are redacted before they are embedded, stored in the index or shown, by the
# package's one redaction step (``rate_limited._redact``).
redact = _redact.redact


# -- splitting a call --------------------------------------------------------------------------
def split(call: Call, text: str | TextOf | None) -> tuple[str, str] | None:
    """``(compared text, scope key)`` of ``call``, or None when it is not to be compared.

    Raises ConfigurationError when ``text=`` gives something that can't be separated from
    the rest of the call (the error names what to change).
    """
    try:
        arguments = call.all_arguments_dict
    except TypeError:
        return None  # arguments that don't fit the function: the call will fail as it is
    if text is None:
        found = _default(arguments)
    elif isinstance(text, str):
        found = _by_name(arguments, text)
    else:
        found = _by_callable(call, arguments, text)
    if found is None:
        return None
    compared, rest = found
    if not compared.strip():
        return None
    scope = call_key(call.function, (), rest, namespace=_SCOPE_NAMESPACE)
    return compared, scope


def _default(arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for name in ("messages", "input", "prompt"):
        if name in arguments:
            return _by_name(arguments, name)
    return None


def _by_name(arguments: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]] | None:
    if name not in arguments:
        return None
    value = arguments[name]
    rest = dict(arguments)
    if isinstance(value, str):
        rest[name] = _PLACEHOLDER
        return value, rest
    if isinstance(value, list | tuple):
        conversation = _conversation(value)
        if conversation is None:
            return None
        compared, stripped = conversation
        rest[name] = stripped
        return compared, rest
    return None


def _conversation(messages: Sequence[Any]) -> tuple[str, list[Any]] | None:
    """The non-system messages' text, and the list with their contents taken out."""
    lines: list[tuple[str, str]] = []
    stripped: list[Any] = []
    for message in messages:
        if isinstance(message, str):  # Responses API: a list of strings is one input
            lines.append(("user", message))
            stripped.append(_PLACEHOLDER)
            continue
        if not isinstance(message, Mapping):
            return None
        role = message.get("role")
        if role in ("system", "developer"):
            stripped.append(message)  # stays in the scope: it must match exactly
            continue
        content = _content_text(message.get("content"))
        if not isinstance(role, str) or content is None:
            return None  # images, audio, tool calls: not compared
        lines.append((role, content))
        stripped.append({**message, "content": _PLACEHOLDER})
    if not lines:
        return None
    if len(lines) == 1 and lines[0][0] == "user":
        return lines[0][1], stripped
    return "\n".join(f"{role}: {content}" for role, content in lines), stripped


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if not isinstance(content, list | tuple):
        return None
    parts = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") not in _TEXT_PARTS:
            return None
        value = part.get("text")
        if not isinstance(value, str):
            return None
        parts.append(value)
    return "\n".join(parts)


def _by_callable(
    call: Call, arguments: Mapping[str, Any], text: TextOf
) -> tuple[str, dict[str, Any]] | None:
    try:
        compared = text(call)
    except Exception as exc:
        raise ConfigurationError(
            f"semantic_cache text= raised {type(exc).__name__}: {exc} for {call!r}."
        ) from exc
    if compared is None:
        return None
    if not isinstance(compared, str):
        raise ConfigurationError(
            f"semantic_cache text= must return a str (or None to skip the call), got "
            f"{type(compared).__name__} for {call!r}."
        )
    found = [0]
    rest = {name: _replace(value, compared, found) for name, value in arguments.items()}
    if found[0] != 1:
        where = "is not one of" if found[0] == 0 else f"occurs {found[0]} times in"
        raise ConfigurationError(
            f"semantic_cache text= returned a text that {where} the arguments of {call!r}, so "
            "the rest of the call (which must match exactly) can't be told apart from it. "
            "Return one argument's value or one message's content, or give text= the name "
            "of the argument to compare."
        )
    return compared, rest


def _replace(value: Any, compared: str, found: list[int]) -> Any:
    if isinstance(value, str):
        if value == compared:
            found[0] += 1
            return _PLACEHOLDER
        return value
    if isinstance(value, Mapping):
        return {k: _replace(v, compared, found) for k, v in value.items()}
    if type(value) is list or type(value) is tuple:
        return type(value)(_replace(v, compared, found) for v in value)
    return value
