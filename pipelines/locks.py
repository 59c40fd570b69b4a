"""Locks: mutual exclusion on one host (a file lock) or across hosts (a Postgres advisory lock).

Two locks matter:

- the **workspace lock** (one DVC workspace on one host): every DVC command and every change
  to ``data/validated`` takes it, so a nightly ``validate`` and a ``retrain`` never collide;
- the **registry lock** (one registered model, every host that moves its aliases): promote
  and rollback take it around their compare-and-set and audit append. On the embedded
  default it is a file lock beside the SQLite registry; scaled out it is a Postgres advisory
  lock on a database every host already reaches (``MLOPS_LOCK_URI=postgresql://...``).

Invariants kept here:

- A lock is released by the kernel (file lock) or by Postgres (the session ends) when its
  holder dies, also on SIGKILL: no lease to expire, no stale lock to clean up.
- A child process never outlives the lock its parent took: the child inherits the lock's
  file descriptor (:meth:`HeldLock.inheritable_fd`), and a ``flock`` lock stays held as long
  as any process holds a descriptor of it. A killed parent leaves the lock to its child
  until the child ends.
- A wait is bounded (``MLOPS_LOCK_TIMEOUT_S``) and, when it gives up, says who holds the lock:
  pid, host, command and since when (written into the lock file by the holder, or read
  from ``pg_stat_activity``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipelines.errors import StepError

log = logging.getLogger(__name__)

POLL_S = 0.2


class LockTimeout(StepError):
    """Gave up waiting for a lock; the message names its holder."""


class LockUnavailable(StepError):
    """The lock service (Postgres) could not be reached."""


def holder_info(what: str) -> dict[str, Any]:
    """Who takes a lock: enough for a person to find the process."""
    return {
        "what": what,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "an unknown process"
    text = f"pid {info.get('pid')} on {info.get('host')} ({info.get('command') or '?'}) since {info.get('since')}"
    children = info.get("children") or []
    if children and info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", 0))):
        text += f"; that process is gone, its child pid {children[-1]} still runs"
    elif children:
        text += f", child pid {children[-1]}"
    return text


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, ended but not yet reaped by its parent, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class HeldLock:
    """A lock this process holds."""

    what: str
    path: Path | None = None
    fd: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def inheritable_fd(self) -> int | None:
        """A descriptor a child can inherit (``pass_fds``) so that the lock is held for as
        long as the child runs, even if this process is killed first."""
        return self.fd

    def note_child(self, pid: int) -> None:
        """Record a child that shares the lock (shown to whoever waits for it)."""
        if self.fd is None:
            return
        self.info.setdefault("children", []).append(pid)
        _write_holder(self.fd, self.info)


def _write_holder(fd: int, info: dict[str, Any]) -> None:
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def lock_timeout(default: float = 900.0) -> float:
    raw = os.environ.get("MLOPS_LOCK_TIMEOUT_S", "")
    try:
        return float(raw) if raw else default
    except ValueError:
        from pipelines.config import ConfigError

        raise ConfigError(f"MLOPS_LOCK_TIMEOUT_S={raw!r}: expected a number of seconds") from None


@contextlib.contextmanager
def file_lock(path: Path, what: str, timeout: float | None = None) -> Iterator[HeldLock]:
    """An exclusive lock held across processes on one host; waits at most ``timeout`` s."""
    timeout = lock_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if not announced:
                    log.info("waiting for the %s lock held by %s (%s)", what,
                             describe_holder(_read_holder(path)), path)  # fmt: skip
                    announced = True
                if waited >= timeout:
                    raise LockTimeout(
                        f"gave up after {waited:.0f} s waiting for the {what} lock ({path}), held by "
                        f"{describe_holder(_read_holder(path))} (MLOPS_LOCK_TIMEOUT_S={timeout:.0f})"
                    ) from None
                time.sleep(POLL_S)
        held = HeldLock(what, path, fd, holder_info(what))
        _write_holder(fd, held.info)
        yield held
    finally:
        # closing (not LOCK_UN) releases this process's share: a child that inherited the
        # descriptor keeps the lock until it ends
        os.close(fd)


def workspace_lock(root: Path, timeout: float | None = None) -> contextlib.AbstractContextManager[HeldLock]:
    """The lock every DVC command and every change to ``data/validated`` takes."""
    return file_lock(root / ".mlops" / "dvc.lock", "DVC workspace", timeout)


# -- across hosts: a Postgres advisory lock ---------------------------------------------------------
def _pg_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def redact(uri: str) -> str:
    """A URI without its password, for messages."""
    parsed = urlparse(uri)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return uri


@contextlib.contextmanager
def postgres_lock(dsn: str, name: str, what: str, timeout: float | None = None) -> Iterator[HeldLock]:
    """A session-level advisory lock: held while this process's connection lives, released by
    Postgres when the process ends or dies (its TCP connection closes)."""
    import psycopg2

    timeout = lock_timeout() if timeout is None else timeout
    info = holder_info(what)
    app = f"mlops {what} pid={info['pid']} host={info['host']}"[:63]
    try:
        conn = psycopg2.connect(
            dsn, connect_timeout=10, application_name=app,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )  # fmt: skip
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LockUnavailable(f"the lock service {redact(dsn)} is unreachable: {reason}") from None
    conn.autocommit = True
    key = _pg_key(name)
    try:
        with conn.cursor() as cur:
            started = time.monotonic()
            announced = False
            while True:
                cur.execute("select pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                waited = time.monotonic() - started
                holder = _pg_holder(cur, key)
                if not announced:
                    log.info("waiting for the %s lock held by %s", what, holder)
                    announced = True
                if waited >= timeout:
                    raise LockTimeout(
                        f"gave up after {waited:.0f} s waiting for the {what} lock (Postgres advisory "
                        f"lock {name!r} on {redact(dsn)}), held by {holder}"
                    )
                time.sleep(POLL_S)
        yield HeldLock(what, info=info)
    finally:
        conn.close()


def _pg_holder(cur: Any, key: int) -> str:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    cur.execute(
        "select a.application_name, a.client_addr, a.backend_start from pg_locks l "
        "join pg_stat_activity a on a.pid = l.pid where l.locktype = 'advisory' and l.granted "
        "and l.classid = %s and l.objid = %s and l.objsubid = 1",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    )
    row = cur.fetchone()
    if row is None:
        return "a session that just let go"
    app, addr, since = row
    return f"{app or 'a session'} (client {addr or 'local socket'}, connected {since:%Y-%m-%dT%H:%M:%S%z})"


def named_lock(
    uri: str, name: str, what: str, timeout: float | None = None
) -> contextlib.AbstractContextManager[HeldLock]:
    """``postgresql://...`` -> an advisory lock; ``file:///dir`` or a path -> a file lock in dir."""
    scheme = urlparse(uri).scheme
    if scheme in ("postgresql", "postgres"):
        return postgres_lock(uri, name, what, timeout)
    from pipelines.storage import local_path

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return file_lock(local_path(uri) / f"{safe}.lock", what, timeout)
