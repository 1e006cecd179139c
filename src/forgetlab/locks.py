"""One writer per directory: the exclusive lock every run directory and study directory takes.

Why ``fcntl.flock`` on a lock file, and not a pid file: the kernel releases a flock when its
holder's last descriptor closes, and a process killed with ``kill -9`` closes everything. So a lock
left by a dead process is never "held": the next process simply gets it, with no guessing from a
pid (which the system may have reused) and no window between "is it alive?" and "take it over"
in which two processes both decide they own the directory. The lock file records who holds it
(pid, host, start time, command) only to say so in the refusal; a record whose flock is free was
left by a process that died, and is reported as taken over.

On a shared filesystem, Linux NFS clients map flock onto NFS byte-range locks, so a holder on
another host is seen too; a record from another host whose flock reads free is logged as a
warning, because a filesystem that does not share locks between hosts would look the same.

The lock file is removed on release (the holder first checks, after locking, that the path still
names the file it locked, so a process that opened the file just before the removal cannot hold a
lock on a file nobody else sees). Without ``fcntl`` (Windows) directories are not locked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from forgetlab.config.errors import ConfigError

LOCK_FILE = ".lock"
POLL_S = 0.1

log = logging.getLogger("forgetlab.locks")


class DirectoryInUse(ConfigError):
    """The directory is locked by another live process (named in the message)."""


class DirectoryLock:
    """Exclusive lock on ``root`` (a run or a study directory) for the life of one writer.

    ``with DirectoryLock(root, "run directory"):`` or ``acquire()`` / ``release()``. ``wait``
    seconds: how long to retry a held lock before refusing (0: refuse at once). The directory is
    created if missing, and removed again on release if the holder left it empty.
    """

    def __init__(self, root: str | Path, what: str = "directory", wait: float = 0.0) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.what = what
        self.wait = wait
        self._handle: IO[str] | None = None
        self._created = False

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> DirectoryLock:
        try:
            import fcntl
        except ImportError:  # no POSIX locks: run unlocked
            return self
        if self.held:
            return self
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.what} {str(self.root)!r} is a file; choose a directory")
        self._created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        while True:
            handle = open(self.path, "a+")  # noqa: SIM115 (kept open: the descriptor is the lock)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(handle)
                handle.close()
                if time.monotonic() >= deadline:
                    self._drop_created_dir()
                    raise DirectoryInUse(self._refusal(holder)) from None
                time.sleep(POLL_S)
                continue
            if _same_file(handle, self.path):
                break
            handle.close()  # the holder removed it between our open and our lock: open anew
        self._report_stale(_read(handle))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_me()) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
        finally:
            self._handle.close()
            self._handle = None
        self._drop_created_dir()

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _drop_created_dir(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):  # only if empty: a failed first start leaves nothing
                self.root.rmdir()

    def _refusal(self, holder: dict[str, Any]) -> str:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        where = "this host" if host == socket.gethostname() else f"host {host!r}"
        since = f" since {holder['started']}" if holder.get("started") else ""
        waited = f" (waited {self.wait:g}s)" if self.wait else ""
        return (
            f"{self.what} {str(self.root)!r} is in use by process {pid} on {where}{since}"
            f"{waited}: a second writer would mix two runs' output; wait for it to finish or "
            f"stop process {pid}, or choose another directory"
        )

    def _report_stale(self, previous: dict[str, Any]) -> None:
        if not previous:
            return
        pid, host = previous.get("pid", "?"), previous.get("host", "?")
        if host not in ("?", socket.gethostname()):
            log.warning(
                "%s %s: took over the lock recorded by process %s on host %r; the lock was free, "
                "so that process has ended, unless this filesystem does not share locks between "
                "hosts (then check that process %s no longer runs on %s)",
                self.what, self.root, pid, host, pid, host,
            )
        else:
            log.info("%s %s: took over the stale lock of process %s, which has ended",
                     self.what, self.root, pid)


def holder(root: str | Path) -> dict[str, Any]:
    """Who the lock file of ``root`` names (empty when there is none); for messages and tests."""
    try:
        with open(Path(root) / LOCK_FILE) as f:
            return _read(f)
    except FileNotFoundError:
        return {}


def _read(handle: IO[str]) -> dict[str, Any]:
    try:
        handle.seek(0)
        data = json.loads(handle.read() or "{}")
    except (OSError, ValueError):  # being written at this instant, or not ours
        return {}
    return data if isinstance(data, dict) else {}


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(handle.fileno())
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
    }
