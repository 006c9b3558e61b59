"""The shared ledger's link to Redis: the connection, the lease and the two threads.

``RedisLedger`` (``rate_limited.ledgers.redis``) decides what to ask Redis (its meters and
script calls); this module carries the asking:

* **One round trip per call.** Settling operations (``tell``) are queued and go with the
  next admission (``run``), in order, in one call of the ledger's code; the *sender*
  thread sends those no admission takes within ``_BATCH_WAIT``, so that other processes
  see them soon (and runs the ledger's ``chores``: giving back unused spares).
* **The code.** Loaded once per Redis as a Function library (``FCALL``), or as a script
  (``EVALSHA``) where Redis has no functions; loaded again if Redis lost it. The calls go
  on the link's own connection (``_execute``): one command, one reply, none of the
  client's per-command work (connection pool, retries, instrumentation).
* **The lease.** The process holds its reservations under a *holder* id whose lease the
  *keeper* thread renews every ``lease / 4`` seconds (a process that dies stops renewing,
  and others take back what it held). The keeper also passes the ``freed`` notifications
  (Redis pub/sub) on to a call waiting for reservations others hold.
* **Redis lost.** A failed call marks the link down (a ``LedgerWarning`` for the thread
  that called ``run()``) and is retried after a growing delay (``paused`` until then);
  queued operations stay queued and go, in order, once it is back (after a look at the
  ledger's *generation*: a Redis that came back without its data, restarted without
  persistence, has lost the meters while the provider's are still full, so meters made
  for the next ``full_for`` seconds start full, with a ``LedgerWarning``). A Redis that answers
  but refuses the calls for a state of its own (out of memory, a read-only replica after a
  failover, an ACL change, loading its data, busy, its master down: ``refusal``) is
  treated the same way (``Refused``); any other error reply is a bug of ours and is raised.
* **A lost reply.** Redis may have run a call whose reply never came (the connection
  dropped in between). Each call is numbered (per holder), and Redis keeps the last one's
  reply; the link sends that call again, the same, before any other, and Redis answers
  from what it ran or runs it now: settlements are never billed twice, and the admission
  the call made (nobody waits for it any more) is given back.

The ``redis://`` URL's parsing and the key names: ``rate_limited.ledgers._redis_url``;
what goes on the wire (a call packed, numbers, Redis's refusals):
``rate_limited.ledgers._redis_wire``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from rate_limited._redact import redact, redact_url
from rate_limited.exceptions import LedgerUnavailableError, LedgerWarning
from rate_limited.ledgers import _lua
from rate_limited.ledgers._redis_url import ROOT
from rate_limited.ledgers._redis_wire import Refused, num, pack, refusal

__all__ = ["RETRY_FIRST", "RedisLink"]

logger = logging.getLogger("rate_limited")

#: Seconds a queued settlement waits for an admission to take it before it goes alone.
_BATCH_WAIT = 0.005
#: Seconds between attempts to reach Redis again once it is lost: first, and most.
RETRY_FIRST, _RETRY_MAX = 0.05, 2.0


class RedisLink:
    """One process's connection to a shared ledger ``name`` in the Redis at ``client_url``:
    the script calls, in order, and the holder's lease."""

    def __init__(
        self, client_url: str, name: str, lease: float, *, owner: str, socket_timeout: float
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ImportError(
                "ledger='redis://...' needs the redis package: pip install 'rate_limited[redis]'"
            ) from exc
        self.name, self.lease = name, lease
        #: The server's URL, password hidden.
        self.url = redact_url(client_url)
        self.prefix = f"{ROOT}{{{name}}}:"
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "owner": owner, "since": time.time()}
        )
        #: What a lost connection, or a Redis refusing the calls, raises (the caller
        #: treats it as "Redis away").
        self.down_errors: tuple[type[Exception], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            Refused,
        )
        try:
            self.client: redis.Redis = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=socket_timeout,
                socket_timeout=socket_timeout,
                decode_responses=True,
            )
            self.client.ping()
        except (ValueError, redis.RedisError) as exc:
            raise LedgerUnavailableError(
                f"can't reach the shared ledger's Redis at {self.url} ({redact(str(exc))}). Is "
                "redis-server running and reachable there? Start it, fix the URL, or leave "
                "ledger= out for a ledger of this process only."
            ) from exc
        #: The connection the script calls go on, this link's own (not the pool's): one
        #: command, one reply, under ``_lock``, with none of the client's per-command work.
        pool = self.client.connection_pool
        self._conn = pool.connection_class(**pool.connection_kwargs)
        self._call: tuple[str, ...] = ()
        try:
            self._load_code()
        except redis.RedisError as exc:
            self.client.close()
            raise LedgerUnavailableError(
                f"can't load the shared ledger's code into the Redis at {self.url} "
                f"({redact(str(exc))})."
            ) from exc
        #: Settling operations not sent yet, in order: they go with the next ``run`` (one
        #: round trip per call), or from the sender thread if none comes within
        #: ``_BATCH_WAIT``; they stay here while Redis is away.
        self.outbox: list[tuple[str, list[str]]] = []
        #: This holder's calls are numbered (see ``rate_limited.ledgers._lua``); the last
        #: one sent, while its reply has not come: (its arguments, how many queued
        #: operations it carries, the operation run after them).
        self._number = 0
        self._unanswered: tuple[list[str], int, tuple[str, list[str]] | None] | None = None
        self._send_soon = threading.Event()
        self._armed = False  # the sender thread was told, and has not flushed yet
        self._lock = threading.Lock()
        #: When (monotonic) Redis was lost, None while it is reachable.
        self.down_since: float | None = None
        #: How many times Redis was lost (what was held there before may be gone).
        self.losses = 0
        self._retry_at = -math.inf
        self._failures = 0
        self._notices: list[tuple[type[Warning], str]] = []
        #: The ledger's generation (``P gen``), looked at again after Redis was lost.
        self.generation: str | None = None
        #: Seconds a meter made after Redis lost the ledger's state starts full for (the
        #: ledger sets it: its longest window, or bucket refill time and delay).
        self.full_for = 0.0
        #: Set by a call that waits for reservations others hold: the next ``freed``
        #: notification calls ``wake`` (then clears it).
        self.waiting_release = False
        self.wake: Callable[[], None] | None = None
        #: Run by the sender thread each time it wakes (and when the seconds it returns
        #: have passed; None: only when there is something to send): the ledger gives back
        #: its expired spares here.
        self.chores: Callable[[], float | None] | None = None
        self._closed = threading.Event()
        self.keeper = threading.Thread(
            target=self._keep_alive, name=f"rate_limited-ledger-{name}", daemon=True
        )
        self._sender = threading.Thread(
            target=self._send_queued, name=f"rate_limited-ledger-{name}-send", daemon=True
        )

    def start(self) -> None:
        """Take the lease, then start the keeper and sender threads. Redis lost in between
        (it answered a moment ago): the connections are closed and the error says so."""
        try:
            self._check_generation()
            self._heartbeat()
        except BaseException as exc:
            self.disconnect()
            if isinstance(exc, self.down_errors):
                raise LedgerUnavailableError(
                    f"lost the shared ledger's Redis at {self.url} while joining it "
                    f"({redact(str(exc))}). "
                    "Is redis-server still running there?"
                ) from exc
            raise
        self.keeper.start()
        self._sender.start()

    def close(self) -> None:
        """Stop renewing the lease and give up what this process still holds (kept, as
        if it had died: a call still running may have been sent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._send_soon.set()
        for thread in (self.keeper, self._sender):
            if thread.is_alive():
                thread.join(timeout=2.0)
        try:
            self.run("release_holder", [self.holder])
        except Exception as exc:  # closing never raises: the lease gives them back anyway
            logger.warning(
                "The shared ledger at %s could not take back this process's reservations "
                "(%s): they come back when its lease expires, in %g s at most",
                self.url,
                redact(f"{type(exc).__name__}: {exc}"),
                self.lease,
            )
        finally:
            self.disconnect()

    def disconnect(self) -> None:
        """Close the connections (the ones of the threads' pub/sub too, once they stopped)."""
        self._conn.disconnect()
        self.client.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def paused(self) -> bool:
        """Redis is away and the next attempt to reach it is not due yet."""
        return self.down_since is not None and time.monotonic() < self._retry_at

    def retry_in(self) -> float:
        """Seconds until the next attempt to reach Redis (negative: due)."""
        return self._retry_at - time.monotonic()

    # -- talking to Redis -----------------------------------------------------------------------
    def _load_code(self) -> None:
        """Load the ledger's code: as a Redis Function library (``FCALL``) where Redis has
        functions (>= 7), else as a script (``EVALSHA`` with its digest)."""
        import redis

        try:
            self.client.execute_command("FUNCTION", "LOAD", _lua.LIBRARY)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            if "already exists" not in str(exc):  # no functions here (or not allowed)
                sha = self.client.execute_command("SCRIPT", "LOAD", _lua.SCRIPT)  # type: ignore[no-untyped-call]
                self._call = ("EVALSHA", sha, "0")
                return
        self._call = ("FCALL", _lua.FUNCTION, "0")

    def _execute(self, args: list[str]) -> Any:
        """One call of the ledger's code on this link's connection (the caller holds the
        lock). Code missing from Redis (restarted without persistence, flushed) is
        loaded again, and the call made again."""
        import redis
        from redis.exceptions import NoScriptError

        conn = self._conn
        try:
            for attempt in (1, 2):
                conn.send_packed_command([pack((*self._call, *args))])
                try:
                    return conn.read_response()
                except redis.ResponseError as exc:
                    lost = isinstance(exc, NoScriptError) or "Function not found" in str(exc)
                    if attempt == 2 or not lost:
                        raise
                self._load_code()
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            raise
        except redis.ResponseError as exc:
            refused = refusal(exc)
            if refused is None:
                raise
            raise refused from exc

    def _send(self, op: tuple[str, list[str]] | None = None) -> Any:
        """Run the queued operations and ``op`` (if any) in one numbered call (the caller
        holds the lock); the queued ones leave the outbox once Redis ran them. A lost
        connection is noted (a warning) and raised; the call is then sent again, the same,
        before any other (``_answer_lost``)."""
        if self._unanswered is not None:
            self._answer_lost()
            if op is None and not self.outbox:
                return None
        queued = len(self.outbox)
        self._number += 1
        args = [self.prefix, self.holder, str(self._number)]
        for name, op_args in [*self.outbox, op] if op is not None else self.outbox:
            args += [name, str(len(op_args)), *op_args]
        try:
            result = self._attempt(args)
        except self.down_errors:
            self._unanswered = (args, queued, op)
            raise
        del self.outbox[:queued]
        return result

    def _answer_lost(self) -> None:
        """Send again the call whose reply was lost (Redis may have run it or not): Redis
        runs it now, or answers with what it ran (``P sent:<holder>``), never twice. Its
        queued operations leave the outbox; an admission it made, which nobody waits for
        any more, is given back."""
        args, queued, op = self._unanswered or ([], 0, None)
        try:
            result = self._attempt(args)
        except Exception as exc:
            if not isinstance(exc, self.down_errors):
                self._unanswered = None  # answered, with an error of ours: raised as it is
            raise
        self._unanswered = None
        del self.outbox[:queued]
        if op is not None and op[0] == "reserve" and int(result[0]) == 1:
            n = int(op[1][4])  # reserve's ARGV: holder, lease, defer, track, n, ...
            for lease_id in [result[1], *result[3 + 4 * n :]]:
                self.outbox.append(
                    ("finish", [self.holder, num(self.lease), str(lease_id), "release"])
                )

    def _attempt(self, args: list[str]) -> Any:
        """One call of the ledger's code; a lost connection is noted (a warning) and raised."""
        try:
            if self.down_since is not None:
                self._check_generation()
            result = self._execute(args)
        except self.down_errors as exc:
            self._lost(exc)
            raise
        if self.down_since is not None:
            self._back()
        return result

    def _check_generation(self) -> None:
        """Join the ledger's generation (``P gen``, made by its first process), or find
        that Redis lost the ledger's state (the key is missing or new: restarted without
        persistence, flushed) since this process last looked. Then the provider's meters
        may be full while the ledger's are empty: ``P lost`` (Redis's time, for
        ``full_for`` seconds) makes meters start full (see ``_lua_meters.load``)."""
        import redis

        key = self.prefix + "gen"
        try:
            current = self.client.get(key)
            if current is not None and current == self.generation:
                return
            if current is None:
                self.client.set(key, uuid.uuid4().hex, nx=True)
                current = self.client.get(key)
            known, self.generation = self.generation, str(current)
            if known is None:
                return  # joining
            seconds, micro = self.client.time()
            if self.full_for > 0:
                ttl = max(1, math.ceil(self.full_for * 1000))
                self.client.set(self.prefix + "lost", f"{seconds}.{micro:06d}", nx=True, px=ttl)
        except redis.ResponseError as exc:
            refused = refusal(exc)
            if refused is None:
                raise
            raise refused from exc
        text = (
            f"The shared ledger's Redis at {self.url} lost the ledger's state (restarted "
            "without persistence, or flushed): the provider's meters may still be full, "
            "so the ledger's start full as of now and drain or expire from there (meters "
            f"made within {self.full_for:g} s too)."
        )
        logger.warning("%s", text)
        self._notices.append((LedgerWarning, text))

    def run(self, op: str, args: list[str]) -> Any:
        """Run ``op`` now, after the operations queued before it, in one round trip."""
        with self._lock:
            return self._send((op, args))

    def tell(self, op: str, args: list[str]) -> None:
        """Queue a settling operation (never raises: the call's result matters more than
        this bookkeeping, which waits for Redis if it is away)."""
        with self._lock:
            self.outbox.append((op, args))
            if self._armed:
                return  # the sender thread is due already: one wake-up per batch
            self._armed = True
        self._send_soon.set()

    def poke(self) -> None:
        """Wake the sender thread (its ``chores`` have a new deadline)."""
        self._send_soon.set()

    def _flush(self) -> None:
        with self._lock:
            if self.outbox or self._unanswered is not None:
                self._send()

    def _send_queued(self) -> None:
        """The sender thread: what is queued and not taken by an admission within
        ``_BATCH_WAIT`` goes on its own (so that other processes see it soon)."""
        failed = False  # the last attempt failed on a bug (said once)
        while not self._closed.is_set():
            due = self.chores() if self.chores is not None else None
            if not self._send_soon.wait(due):
                continue  # chores are due
            if self._closed.wait(_BATCH_WAIT):
                return
            self._send_soon.clear()
            with self._lock:
                self._armed = False
            try:
                self._flush()
            except self.down_errors:
                self._send_soon.set()  # again once Redis may be back
                self._closed.wait(max(0.0, self.retry_in()))
            except Exception as exc:  # a bug: say so, keep the operations, try again later
                logger.exception("The shared ledger could not send its settlements")
                if not failed:  # the user sees it once (a warning at their run()), not a log only
                    text = (
                        f"The shared ledger at {self.url} could not send its settlements "
                        f"({redact(f'{type(exc).__name__}: {exc}')}); they are kept and sent "
                        "again every second. This is a bug of rate_limited: please report it."
                    )
                    self._notices.append((LedgerWarning, text))
                failed = True
                self._closed.wait(1.0)
            else:
                failed = False

    def _lost(self, exc: BaseException) -> None:
        self.losses += 1
        self._failures += 1
        delay = min(_RETRY_MAX, RETRY_FIRST * 2 ** min(self._failures - 1, 10))
        self._retry_at = time.monotonic() + delay
        if self.down_since is None:
            what = (
                "The shared ledger's Redis at {} refuses its calls"
                if isinstance(exc, Refused)
                else "Lost the shared ledger's Redis at {}"
            )
            text = (
                f"{what.format(self.url)} ({redact(str(exc))}): nothing is admitted "
                "until it is back; calls already running finish, their results are kept, and "
                "what they used is billed to it once it is back."
            )
            # the notice before the pause: a call paused by it (another thread) finds it
            self._notices.append((LedgerWarning, text))
            logger.warning("%s", text)
            self.down_since = time.monotonic()

    def _back(self) -> None:
        seconds = time.monotonic() - (self.down_since or time.monotonic())
        self.down_since, self._failures, self._retry_at = None, 0, -math.inf
        logger.warning("The shared ledger's Redis at %s is back after %.1f s", self.url, seconds)

    def take_notices(self) -> list[tuple[type[Warning], str]]:
        """Warnings for the thread that called ``run()`` (see ``Engine.take_notices``)."""
        notices, self._notices = self._notices, []
        return notices

    # -- the keeper thread ---------------------------------------------------------------------
    def _heartbeat(self) -> None:
        self.run("heartbeat", [self.holder, num(self.lease), self._info])

    def _keep_alive(self) -> None:
        """Renew the lease every ``lease / 4`` s and pass on ``freed`` notifications."""
        period = self.lease / 4
        pubsub = None
        while not self._closed.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                    pubsub.subscribe(self.prefix + "freed")
                self._heartbeat()
                due = time.monotonic() + period
                while not self._closed.is_set() and (left := due - time.monotonic()) > 0:
                    message = pubsub.get_message(timeout=min(left, 0.25))
                    if message is not None and self.waiting_release and self.wake:
                        self.waiting_release = False
                        self.wake()
            except Exception as exc:
                down = exc if isinstance(exc, self.down_errors) else refusal(exc)
                if down is None:  # never let the lease lapse silently on a bug
                    logger.exception("The shared ledger's keeper thread failed; retrying")
                    self._closed.wait(period)
                    continue
                self._lost(down)
                if pubsub is not None:
                    pubsub.close()
                    pubsub = None
                self._closed.wait(max(0.0, self.retry_in()))
        if pubsub is not None:
            pubsub.close()
