"""Who holds a claim on a shared store, and whether that holder is a process of this
machine that has ended (``rate_limited._claims`` takes its claims over at once).

A holder is written into the store as one string, ``host:pid:nonce:token``:

* ``host`` and ``pid`` are for people (``rate-limited ledger inspect``, warnings);
* ``nonce`` (8 hex digits) tells apart the Runners of one process;
* ``token`` (32 hex digits) names this process's *life lock*: an empty file
  ``<tmp>/rate_limited-<uid>/holders/<token>`` that the process keeps locked (``flock``)
  for as long as it lives. The kernel drops the lock when the process ends, however it
  ends (``kill -9``, a kernel restart, an OOM kill).

A holder has ended when its lock file exists here and its lock can be taken. That is proof,
not a guess: a pid says nothing once it is reused by another process (or seen from another
PID namespace), a start time read from two processes can disagree after the clock is set,
but a lock held by a live process can't be taken. Anything short of proof counts as alive,
and its claims lapse by expiry as before: another host (even one with the same name: its
lock file is not here), another user (another directory), a holder written by an older
version (``host:pid:nonce``, no token), a platform without ``fcntl`` (Windows), a lock
directory that can't be made or is not this user's alone.

The lock file is created under a temporary name, locked, then renamed into place, so that
no prober ever finds it unlocked while its process lives. The process removes it when it
exits normally. A prober that finds one ended leaves it: every Runner waiting on that
holder's claims, in any process, must be able to prove the end too (removed, the next
prober could not tell, and waited ``claim_ttl`` seconds: a Dask worker killed mid-run held
its re-run partitions up a minute). Files of ended processes are removed when a process
makes its own lock, once over a day old (their claims have long lapsed). A forked child
gets its own token (the parent's lock stays the parent's).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import socket
import stat
import tempfile
import threading
import time
import uuid
from pathlib import Path

from rate_limited._redact import get_logger

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no life lock, claims lapse by expiry
    fcntl = None  # type: ignore[assignment]

__all__ = ["HOST", "Holder", "has_ended", "new_holder", "process_token"]

logger = get_logger("rate_limited")

#: This machine's name, as holders written here carry it.
HOST = socket.gethostname()

_NEW = re.compile(r"(?P<host>.*):(?P<pid>\d+):(?P<nonce>[0-9a-f]{8}):(?P<token>[0-9a-f]{32})")
_OLD = re.compile(r"(?P<host>.*):(?P<pid>\d+):(?P<nonce>[0-9a-f]{8})")


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """A holder string read back from a store."""

    #: The string as stored.
    text: str
    #: The host it was written on ("" when the string is not one of ours).
    host: str = ""
    pid: int | None = None
    #: Its process's life-lock token (None: written by an older version, or unknown).
    token: str | None = None

    @classmethod
    def parse(cls, text: str) -> Holder:
        found = _NEW.fullmatch(text)
        if found is not None:
            return cls(text, found["host"], int(found["pid"]), found["token"])
        found = _OLD.fullmatch(text)
        if found is not None:
            return cls(text, found["host"], int(found["pid"]))
        return cls(text)

    @property
    def here(self) -> bool:
        """Whether it was written on a host of this machine's name."""
        return self.host == HOST

    def describe(self) -> str:
        """``pid 4242 on host-a`` (or the raw string, for one that is not ours)."""
        if self.pid is None:
            return repr(self.text)
        return f"pid {self.pid} on {self.host or '?'}"


class _LifeLock:
    """This process's life lock (see the module docstring); made on first use."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.pid = os.getpid()
        self.directory = _lock_directory()
        self._fd: int | None = None
        if self.directory is not None and fcntl is not None:
            _sweep(self.directory)
            self._fd = self._create(self.directory)
            if self._fd is not None:
                atexit.register(self.release)

    def _create(self, directory: Path) -> int | None:
        path = directory / self.token
        draft = directory / f".{self.token}.new"
        fd: int | None = None
        try:
            fd = os.open(draft, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(draft, path)  # only ever seen locked under its real name
        except OSError as exc:
            logger.debug("No life lock for this process in %s (%s)", directory, exc)
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(draft)
            return None
        return fd

    def release(self) -> None:
        """The process ends normally: remove the lock file (the lock goes with the fd)."""
        if self._fd is None or self.directory is None or os.getpid() != self.pid:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.directory / self.token)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    def forget(self) -> None:
        """In a forked child: drop the inherited descriptor (the lock stays the parent's)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


#: Seconds after which the lock file of an ended process is removed (see the docstring).
_SWEEP_AFTER = 86_400.0


def _sweep(directory: Path) -> None:
    """Remove the lock files over ``_SWEEP_AFTER`` old whose processes have ended."""
    old = time.time() - _SWEEP_AFTER
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < old and _free(path):
                    path.unlink()


_lock: _LifeLock | None = None
_made = threading.Lock()


def _life_lock() -> _LifeLock:
    global _lock
    with _made:
        if _lock is None or _lock.pid != os.getpid():
            _lock = _LifeLock()
        return _lock


def _after_fork() -> None:
    global _lock
    if _lock is not None:
        _lock.forget()
    _lock = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _lock_directory() -> Path | None:
    """``<tmp>/rate_limited-<uid>/holders``, made 0700, or None if it is not this user's
    alone (another user could then fake an ended holder)."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return None
    uid = getuid()
    base = Path(tempfile.gettempdir()) / f"rate_limited-{uid}"
    try:
        for directory in (base, base / "holders"):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
            info = os.lstat(directory)
            if (
                not stat.S_ISDIR(info.st_mode)
                or info.st_uid != uid
                or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            ):
                logger.debug("Not using %s for life locks: not this user's alone", directory)
                return None
    except OSError as exc:
        logger.debug("No directory for life locks (%s)", exc)
        return None
    return base / "holders"


def process_token() -> str:
    """This process's life-lock token (its lock is taken on the first call)."""
    return _life_lock().token


def new_holder() -> str:
    """A holder string for one Runner's claims in this process."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}:{process_token()}"


def has_ended(holder: Holder) -> bool:
    """Whether ``holder`` is proven to be a process of this machine that has ended (its
    life lock exists here and is free). False when alive or when it can't be told."""
    if holder.token is None or not holder.here or fcntl is None:
        return False
    own = _life_lock()
    if holder.token == own.token or own.directory is None:
        return False  # this very process: alive
    return _free(own.directory / holder.token)


def _free(path: Path) -> bool:
    """Whether the lock file ``path`` exists and no process holds its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # not a process of this machine (or its file is gone): can't tell
    try:
        try:  # shared: probers at once all see it free (the live process holds it EX)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False  # locked: its process lives
        return True  # its file stays: every other Runner and process must see it ended too
    finally:
        os.close(fd)
