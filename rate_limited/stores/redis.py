"""RedisStore: outcomes in Redis, shared by every process and machine that can reach it.

One string value per call under ``rate_limited:store:[<namespace>:]<key>``: a magic line
``rl1``, the JSON fields (readable with ``redis-cli GET``), the HMAC and the pickled result.
A flush is one MULTI/EXEC pipeline of ``SET ... PX``; a record's time to live (its own
``expires_at`` or the store's ``ttl``) becomes Redis key expiry, so Redis reclaims the space.
``get_many`` is MGET in batches. Once a flush returns, the records are in Redis; how long
they survive a Redis restart is Redis's persistence setting.

Each record is signed over its full Redis key, prefix included: a record copied to another
namespace (or renamed) does not verify there.

The signing secret is ``secret``, else ``$RATE_LIMITED_STORE_SECRET``, else the one in
``~/.config/rate_limited/secret`` (created 0600 if missing): every machine sharing a Redis
store must be given the same secret.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rate_limited._redact import redact_url
from rate_limited.exceptions import ConfigurationError
from rate_limited.stores._codec import (
    MAC_SIZE,
    Codec,
    create_secret_file,
    explicit_secret,
    read_secret_file,
    user_secret_path,
)
from rate_limited.stores.base import (
    ClaimState,
    Store,
    StoreCorruptedError,
    StoredOutcome,
    StoreError,
    StoreUnavailableError,
    StoreVersionError,
)

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStore"]

_MAGIC = b"rl1\n"
_BATCH = 1000  # keys per MGET / DEL / SCAN page
_KEY_ROOT = "rate_limited:store:"
_CLAIM_ROOT = "rate_limited:claim:"
_OURS, _STORED = ClaimState("ours"), ClaimState("stored")
#: ARGV: claim prefix, record prefix, holder, milliseconds, over records (0/1), n, then n
#: ended holders, then the keys. One atomic pass: a key claimed by another holder (not one
#: of the ended ones) is "taken" (with that holder and the claim's PTTL), one with a record
#: "stored", else it is (re)claimed for the holder with the expiry given (Redis's clock).
#: Replies three items per key: answer, holder and PTTL of the claim in the way (taken), or
#: of the ended holder's claim replaced (ours), else '' and -1.
#: The claim's value is the holder string, as older versions wrote it.
_CLAIM = """
local ended = {}
local n = tonumber(ARGV[6])
for i = 7, 6 + n do ended[ARGV[i]] = true end
local out = {}
for i = 7 + n, #ARGV do
  local key = ARGV[i]
  local owner = redis.call('GET', ARGV[1] .. key)
  if owner and owner ~= ARGV[3] and not ended[owner] then
    out[#out + 1] = 'taken'
    out[#out + 1] = owner
    out[#out + 1] = redis.call('PTTL', ARGV[1] .. key)
  elseif ARGV[5] == '0' and redis.call('EXISTS', ARGV[2] .. key) == 1 then
    out[#out + 1] = 'stored'
    out[#out + 1] = ''
    out[#out + 1] = -1
  else
    local was, ttl = '', -1
    if owner and owner ~= ARGV[3] then  -- an ended holder's: say whose it was
      was, ttl = owner, redis.call('PTTL', ARGV[1] .. key)
    end
    redis.call('SET', ARGV[1] .. key, ARGV[3], 'PX', ARGV[4])
    out[#out + 1] = 'ours'
    out[#out + 1] = was
    out[#out + 1] = ttl
  end
end
return out
"""
#: ARGV: claim prefix, holder, keys...: drop the holder's claims on the keys.
_UNCLAIM = """
for i = 3, #ARGV do
  if redis.call('GET', ARGV[1] .. ARGV[i]) == ARGV[2] then redis.call('DEL', ARGV[1] .. ARGV[i]) end
end
return 0
"""


class RedisStore(Store):
    """Outcomes in the Redis server at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    ``namespace`` (or ``?prefix=NAME`` in the URL) keeps this store's keys apart from other
    stores on the same server.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str | None = None,
        ttl: float | None = None,
        secret: bytes | str | None = None,
        flush_size: int = 256,
        flush_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 5.0,
        claim_ttl: float = 60.0,
    ) -> None:
        super().__init__(
            ttl=ttl,
            flush_size=flush_size,
            flush_interval=flush_interval,
            clock=clock,
            claim_ttl=claim_ttl,
        )
        try:
            import redis
        except ImportError as exc:
            raise ImportError(
                "RedisStore needs the redis package: pip install 'rate_limited[redis]'"
            ) from exc
        url, url_prefix = _split_prefix(url)
        if namespace and url_prefix and namespace != url_prefix:
            raise ConfigurationError(
                f"namespace={namespace!r} and ?prefix={url_prefix} disagree; give one of them"
            )
        #: Keys of this store are ``rate_limited:store:<namespace>:<call key>``.
        self.namespace = namespace or url_prefix
        #: The server's URL, password hidden.
        self.url = redact_url(url)
        self._prefix = _KEY_ROOT + (f"{self.namespace}:" if self.namespace else "")
        self._claim_prefix = _CLAIM_ROOT + (f"{self.namespace}:" if self.namespace else "")
        self._pattern = "".join("\\" + c if c in "\\*?[]" else c for c in self._prefix) + "*"
        self._errors = redis.RedisError
        self._down = (redis.ConnectionError, redis.TimeoutError)
        self._client = _connect(redis, url, self.url, socket_timeout)
        self._claim_script = self._client.register_script(_CLAIM)
        self._unclaim_script = self._client.register_script(_UNCLAIM)
        try:
            self._codec = Codec(_secret(secret), scope=self._prefix)
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        namespace = f", namespace={self.namespace!r}" if self.namespace else ""
        return f"RedisStore({self.url!r}{namespace})"

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except self._down as exc:
            raise StoreUnavailableError(
                f"lost the connection to Redis at {self.url}: {exc}; is redis-server running?"
            ) from exc
        except self._errors as exc:
            raise StoreError(f"Redis at {self.url} refused a store command: {exc}") from exc

    def _encode(self, record: StoredOutcome) -> tuple[str, bytes, float | None]:
        sealed = self._codec.seal(record)
        value = b"".join((_MAGIC, sealed.meta.encode("ascii"), b"\n", sealed.mac, sealed.result))
        return self._prefix + record.key, value, self._expiry(record)

    def _write(self, items: list[Any]) -> None:
        now = self._clock()
        with self._translate(), self._client.pipeline(transaction=True) as pipe:
            for name, value, expiry in items:
                if expiry is None:
                    pipe.set(name, value)
                elif (ms := math.ceil((expiry - now) * 1000)) > 0:
                    pipe.set(name, value, px=ms)
                else:
                    pipe.delete(name)  # already expired: don't keep an older record either
            pipe.execute()

    def _decode(self, name: bytes | str, value: bytes) -> StoredOutcome:
        key = (name.decode() if isinstance(name, bytes) else name)[len(self._prefix) :]
        where = f"Redis store {self.url}"
        if not value.startswith(_MAGIC):
            if value[:2] == b"rl" and value[3:4] == b"\n":
                raise StoreVersionError(
                    f"record {key!r} in {where} has format {value[:3]!r}, and this version "
                    "of rate_limited reads b'rl1'; use the version that wrote it, or another "
                    "namespace"
                )
            raise StoreCorruptedError(
                f"record {key!r} in {where} is not a rate_limited record; remove it with "
                f"store.delete([{key!r}]) or use another namespace"
            )
        end = value.find(b"\n", len(_MAGIC))
        if end < 0 or len(value) < end + 1 + MAC_SIZE:
            raise StoreCorruptedError(f"record {key!r} in {where} is truncated")
        meta = value[len(_MAGIC) : end].decode("ascii", "replace")
        mac = value[end + 1 : end + 1 + MAC_SIZE]
        return self._codec.open(key, meta, value[end + 1 + MAC_SIZE :], mac, where)

    def _read(self, keys: list[str], now: float) -> Iterable[StoredOutcome]:
        found: list[StoredOutcome] = []
        with self._translate():
            for start in range(0, len(keys), _BATCH):
                names = [self._prefix + key for key in keys[start : start + _BATCH]]
                values: list[Any] = self._client.mget(names)
                found.extend(
                    self._decode(name, value)
                    for name, value in zip(names, values, strict=True)
                    if value is not None
                )
        return found

    shares_work = True

    def _claim(
        self,
        keys: list[str],
        holder: str,
        over_records: bool,
        take_over: frozenset[str],
        now: float,
    ) -> dict[str, ClaimState]:
        ms = str(max(1, math.ceil(self.claim_ttl * 1000)))
        head = [self._claim_prefix, self._prefix, holder, ms, str(int(over_records))]
        head += [str(len(take_over)), *sorted(take_over)]
        found: dict[str, ClaimState] = {}
        with self._translate():
            for start in range(0, len(keys), _BATCH):
                chunk = keys[start : start + _BATCH]
                reply: list[Any] = self._claim_script(args=[*head, *chunk])
                for index, key in enumerate(chunk):
                    answer, owner, pttl = reply[3 * index : 3 * index + 3]
                    answer = answer.decode() if isinstance(answer, bytes) else str(answer)
                    owner = owner.decode() if isinstance(owner, bytes) else str(owner)
                    if not owner:
                        found[key] = _OURS if answer == "ours" else _STORED
                        continue
                    # PTTL -1: a claim with no expiry (set by hand)
                    expires = None if int(pttl) < 0 else now + int(pttl) / 1000
                    found[key] = ClaimState(answer, owner, expires)
        return found

    def _unclaim(self, keys: list[str], holder: str) -> None:
        with self._translate():
            for start in range(0, len(keys), _BATCH):
                self._unclaim_script(
                    args=[self._claim_prefix, holder, *keys[start : start + _BATCH]]
                )

    def _delete(self, keys: list[str]) -> None:
        with self._translate():
            for start in range(0, len(keys), _BATCH):
                self._client.delete(*(self._prefix + key for key in keys[start : start + _BATCH]))

    def _scan(self) -> Iterator[list[bytes]]:
        """This store's Redis keys, a page at a time, each page read under the lock."""
        cursor: int = 0
        seen: set[bytes] = set()  # SCAN may return a key twice
        while True:
            with self._lock, self._translate():
                self._check_open()
                reply: Any = self._client.scan(cursor, match=self._pattern, count=_BATCH)
                cursor, names = int(reply[0]), list(reply[1])
            fresh = [name for name in names if name not in seen]
            seen.update(fresh)
            if fresh:
                yield fresh
            if cursor == 0:
                return

    def _clear(self) -> None:
        for names in self._scan():
            with self._translate():
                self._client.delete(*names)

    def _count(self, now: float) -> int:
        # Reads the values (not unpickled): Redis expiry runs on the server's clock, and a
        # reopened store may have a shorter ttl than the records were written with.
        total = 0
        for names in self._scan():
            with self._translate():
                values: list[Any] = self._client.mget(names)
            total += sum(value is not None and self._fresh(value, now) for value in values)
        return total

    def _fresh(self, value: bytes, now: float) -> bool:
        """Whether a raw record is unexpired (reads its JSON, not its pickle)."""
        end = value.find(b"\n", len(_MAGIC))
        try:
            fields = json.loads(value[len(_MAGIC) : end])
            finished_at, expires_at = float(fields["finished_at"]), fields["expires_at"]
        except (ValueError, KeyError, TypeError):
            return True  # let get_many / iter_records report what is wrong with it
        if expires_at is not None and float(expires_at) <= now:
            return False
        return self.ttl is None or finished_at + self.ttl > now

    def _iter(self, now: float) -> Iterator[StoredOutcome]:
        for names in self._scan():
            with self._lock, self._translate():
                values: list[Any] = self._client.mget(names)
                page = [
                    self._decode(name, value)
                    for name, value in zip(names, values, strict=True)
                    if value is not None
                ]
            yield from page

    def _close(self) -> None:
        self._client.close()


def _connect(redis_module: Any, url: str, shown: str, socket_timeout: float) -> redis.Redis:
    try:
        client: redis.Redis = redis_module.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=socket_timeout
        )
    except ValueError as exc:
        raise StoreUnavailableError(f"can't use the Redis URL {shown}: {exc}") from exc
    try:
        client.ping()
    except redis_module.RedisError as exc:
        client.close()
        raise StoreUnavailableError(
            f"can't connect to Redis at {shown} ({exc}). Is redis-server running and "
            "reachable there? Start it, fix the URL, or use store='sqlite:///runs.db'"
        ) from exc
    return client


def _secret(secret: bytes | str | None) -> bytes:
    explicit = explicit_secret(secret)
    if explicit is not None:
        return explicit
    path = user_secret_path()
    return read_secret_file(path) or create_secret_file(path)


def _split_prefix(url: str) -> tuple[str, str | None]:
    """``url`` without its ``prefix=`` query argument, and that argument."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if not prefixes:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefixes[-1] or None
