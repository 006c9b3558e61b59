"""Records as signed bytes: the result pickled, the other fields as JSON, one HMAC over both.

Unpickling runs code named by the data, so a record is decoded only after its HMAC-SHA256
(keyed with the store's secret, covering the full key, the JSON fields and the result
bytes) verifies. The full key is the call key behind the store's ``scope`` (a Redis store's
key prefix, so that a record copied from ``?prefix=a`` to ``?prefix=b`` does not verify).
Where the secret comes from is decided here too; the trust model is in the
``rate_limited.stores`` docstring.

A pydantic v2 model result (an ``openai`` response, typically) is kept as its class's name
and its JSON instead of a pickle when that provably round-trips (checked when it is
written): pydantic-core decodes it about 3 times faster than unpickling, which is what
makes resuming 100,000 stored chat completions quick. Everything else is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import importlib
import json
import os
import pickle
import secrets
import struct
from pathlib import Path
from typing import Any

from rate_limited.exceptions import ConfigurationError
from rate_limited.stores.base import (
    StoreCorruptedError,
    StoredOutcome,
    StoreIntegrityError,
    StoreSerializationError,
    StoreUnavailableError,
)

#: Environment variable holding the secret when ``secret=`` is not given.
SECRET_ENV = "RATE_LIMITED_STORE_SECRET"
_DOMAIN = b"rate_limited.store.record/1\0"
_LENGTH = struct.Struct(">I")
MAC_SIZE = hashlib.sha256().digest_size
_PICKLED = b"p"  # result bytes: b"p" + pickle
_MODEL = b"m"  # result bytes: b"m" + b"module:qualname" + b"\n" + the model's JSON
_model_classes: dict[str, Any] = {}  # "module:qualname" -> pydantic model class


@dataclasses.dataclass(slots=True, frozen=True)
class Sealed:
    """One encoded record: what a backend writes."""

    key: str
    #: Every field but the result, as compact sorted JSON (readable without unpickling).
    meta: str
    #: The pickled result.
    result: bytes
    #: HMAC-SHA256 of key, meta and result.
    mac: bytes
    status: str
    finished_at: float
    expires_at: float | None
    function: str


class Codec:
    """Seals records into ``Sealed`` and opens them again, verifying before unpickling."""

    __slots__ = ("_scope", "_secret")

    def __init__(self, secret: bytes, scope: str = "") -> None:
        self._secret = secret
        #: What the key is written under (a Redis key prefix); signed with the key.
        self._scope = scope

    def _mac(self, key: str, meta: bytes, result: bytes) -> bytes:
        raw_key = (self._scope + key).encode("utf-8", "surrogatepass")
        message = b"".join(
            (_DOMAIN, _LENGTH.pack(len(raw_key)), raw_key, _LENGTH.pack(len(meta)), meta, result)
        )
        return hmac.digest(self._secret, message, "sha256")

    def sign(self, domain: bytes, *parts: bytes) -> bytes:
        """HMAC-SHA256 of ``parts`` (each length-prefixed) under the store's secret, for data
        kept beside the records (e.g. semantic-cache entries); ``domain`` names the kind of
        data, so that no signature of one kind is valid for another, nor for a record."""
        if domain == _DOMAIN:
            raise ValueError("that domain is the records' own")
        message = [domain]
        for part in parts:
            message += (_LENGTH.pack(len(part)), part)
        return hmac.digest(self._secret, b"".join(message), "sha256")

    def seal(self, record: StoredOutcome) -> Sealed:
        """Encode and sign ``record``; StoreSerializationError if its result can't be pickled."""
        try:
            result = _dump_model(record.result) or _PICKLED + pickle.dumps(
                record.result, protocol=pickle.HIGHEST_PROTOCOL
            )
        except Exception as exc:
            raise StoreSerializationError(
                f"the result of call {record.key} ({record.function or 'unknown function'}) "
                f"can't be pickled for the store ({type(exc).__name__}: {exc}); return "
                "picklable data from the function, or run without a store"
            ) from exc
        meta_fields = {
            "attempts": record.attempts,
            "error": record.error,
            "expires_at": record.expires_at,
            "finished_at": record.finished_at,
            "function": record.function,
            "started_at": record.started_at,
            "status": record.status,
            "usage": record.usage,
        }
        try:
            meta = json.dumps(meta_fields, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise StoreSerializationError(
                f"the fields of call {record.key} can't be stored as JSON ({exc}); usage "
                "must map resource names to numbers"
            ) from exc
        return Sealed(
            key=record.key,
            meta=meta,
            result=result,
            mac=self._mac(record.key, meta.encode("ascii"), result),
            status=record.status,
            finished_at=record.finished_at,
            expires_at=record.expires_at,
            function=record.function,
        )

    def open(self, key: str, meta: str, result: bytes, mac: bytes, where: str) -> StoredOutcome:
        """Verify, then decode one record read from ``where`` (a description for messages)."""
        try:
            meta_bytes = meta.encode("ascii")
        except UnicodeEncodeError:
            meta_bytes = b""  # sealed meta is always ASCII: this record can't verify
        if not hmac.compare_digest(self._mac(key, meta_bytes, result), mac):
            raise StoreIntegrityError(
                f"record {key!r} in {where} has a bad signature, so it was not unpickled: it "
                "was written with another secret or changed outside rate_limited. Open the "
                f"store with the secret it was written with (secret= or ${SECRET_ENV}), or "
                f"remove the record with store.delete([{key!r}])"
            )
        try:
            fields: dict[str, Any] = json.loads(meta)
            value = _load_result(result)
            return StoredOutcome(
                key=key,
                status=fields["status"],
                result=value,
                error=fields["error"],
                attempts=fields["attempts"],
                usage=fields["usage"],
                started_at=fields["started_at"],
                finished_at=fields["finished_at"],
                function=fields["function"],
                expires_at=fields["expires_at"],
            )
        except Exception as exc:
            raise StoreCorruptedError(
                f"record {key!r} in {where} can't be decoded ({type(exc).__name__}: {exc}); "
                "if its result's class was renamed or moved, restore it, or remove the "
                f"record with store.delete([{key!r}])"
            ) from exc


def _dump_model(value: Any) -> bytes | None:
    """``value`` as a class name and JSON if it is a pydantic v2 model that round-trips so."""
    cls = type(value)
    if not hasattr(cls, "__pydantic_validator__") or not hasattr(cls, "model_validate_json"):
        return None
    name = f"{cls.__module__}:{cls.__qualname__}"
    try:
        if _model_class(name) is not cls:
            return None
        data = value.model_dump_json(exclude_unset=True, warnings=False)
        back = cls.model_validate_json(data)
        if back != value or back.model_fields_set != value.model_fields_set:
            return None
    except Exception:  # anything unusual: the pickle is the safe way
        return None
    return b"".join((_MODEL, name.encode("utf-8"), b"\n", data.encode("utf-8")))


def _model_class(name: str) -> Any:
    cls = _model_classes.get(name)
    if cls is None:
        module, _, qualname = name.partition(":")
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        _model_classes[name] = cls
    return cls


def _load_result(data: bytes) -> Any:
    kind = data[:1]
    if kind == _PICKLED:
        return pickle.loads(data[1:])
    if kind == _MODEL:
        name, _, payload = data[1:].partition(b"\n")
        return _model_class(name.decode("utf-8")).model_validate_json(payload)
    raise ValueError(f"unknown result encoding {kind!r}")


def explicit_secret(secret: bytes | str | None) -> bytes | None:
    """The secret given by argument, else by ``$RATE_LIMITED_STORE_SECRET``, else None."""
    if secret is None:
        from_env = os.environ.get(SECRET_ENV, "")
        return from_env.encode("utf-8") if from_env else None
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ConfigurationError("secret must not be empty")
    return raw


def read_secret_file(path: Path) -> bytes | None:
    """The secret kept in ``path``, or None if there is no such file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailableError(f"can't read the store's secret file {path}: {exc}") from exc
    if not text:
        raise StoreCorruptedError(
            f"the store's secret file {path} is empty; restore it, or remove it together with "
            "the store it belongs to"
        )
    return text.encode("utf-8")


def create_secret_file(path: Path) -> bytes:
    """Create ``path`` holding a new random secret, readable by its owner only (0600).

    If another process created it first, its secret is returned instead. The file appears
    whole or not at all: the secret is written to a temporary file beside it, which is then
    linked to ``path`` (a link fails if ``path`` exists). Processes opening a new store at
    once (workers sharing one SQLite file) never read a file still empty.
    """
    text = secrets.token_hex(32)
    temporary = f"{path}.{secrets.token_hex(8)}.tmp"  # this call's own half-written copy
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise StoreUnavailableError(
            f"can't create the store's secret file {path} ({exc}); pass secret= or set "
            f"${SECRET_ENV}"
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        existing = read_secret_file(path)
        if existing is None:  # created and removed again in between: give up loudly
            raise StoreUnavailableError(f"the store's secret file {path} vanished") from None
        return existing
    except OSError as exc:
        raise StoreUnavailableError(
            f"can't create the store's secret file {path} ({exc}); pass secret= or set "
            f"${SECRET_ENV}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return text.encode("utf-8")


def user_secret_path() -> Path:
    """``$XDG_CONFIG_HOME/rate_limited/secret``, by default ``~/.config/rate_limited/secret``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rate_limited" / "secret"
