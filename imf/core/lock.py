"""One process per run folder: a lock file naming its owner (pid, host, start time).

:class:`RunLock` creates ``<folder>/run.lock`` and holds an exclusive ``flock`` on it while
the run trains; the file's JSON says who holds it::

    {"pid": 4242, "host": "node7", "started": "2025-01-01T12:00:00", "pid_start": 123456,
     "argv": "python -m imf.runs.pipeline ..."}

A second process (or a second trainer in the same process) asking for the lock gets
:class:`RunLocked` naming the folder and the owner. A lock whose owner is gone is stale and
taken over silently: the kernel drops a dead process's ``flock``, and where ``flock`` does
not hold (file systems without it), a same-host owner whose pid no longer runs (or now
belongs to another process, by its start time) is stale too. An owner on another host that
still holds no ``flock`` cannot be checked from here: that lock is refused and the message
says which file to delete.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"


class RunLocked(RuntimeError):
    """Another process (or another trainer of this one) is using the run folder."""


def _pid_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces: split after its closing parenthesis
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Is process ``pid`` running on this host (and, if ``start`` is given, the same process)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None:
        now = _pid_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by a later process
    return True


def owner_record() -> dict[str, Any]:
    """What this process writes into a lock file."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _pid_start(os.getpid()),
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "argv": " ".join(sys.argv)[:300]}


def describe(owner: dict[str, Any]) -> str:
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r} since {owner.get('started')}"
            + (f" ({owner['argv']})" if owner.get("argv") else ""))


def read_owner(path: Path) -> dict[str, Any]:
    """The JSON record of a lock file ({} if empty or unreadable)."""
    try:
        obj = json.loads(path.read_text() or "{}")
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """``with RunLock(folder): ...`` — exclusive use of ``folder`` by this process.

    :meth:`acquire` raises :class:`RunLocked` (naming the folder and the owner) if a live
    process holds it; :meth:`release` removes the lock file. Not re-entrant: a second
    ``RunLock`` on the same folder in the same process is refused too.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, owner: dict[str, Any], why: str = "") -> RunLocked:
        return RunLocked(f"run folder {self.folder} is in use by {describe(owner)}{why}; wait for it to finish, "
                         f"stop it, or use another run folder (lock file {self.path})")

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise self._refuse(read_owner(self.path), " (this lock object already holds it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retries only when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as e:
                        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                            raise
                        raise self._refuse(read_owner(self.path)) from None
                # the owner we locked may have deleted the file before we got the lock: retry on the new one
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                self._check_stale(read_owner(self.path))
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(owner_record()) + "\n").encode(), 0)
                self._fd = fd
                return self
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
        raise RunLocked(f"run folder {self.folder}: could not take the lock file {self.path} (it keeps changing)")

    def _check_stale(self, owner: dict[str, Any]) -> None:
        """We hold the flock; refuse anyway if the recorded owner may still be alive (file
        systems where flock does not reach the other process)."""
        pid = owner.get("pid")
        if not isinstance(pid, int) or owner.get("host") is None:
            return  # empty (released) or foreign content: nobody to wait for
        if owner["host"] != socket.gethostname():
            raise self._refuse(owner, " (another host: cannot check whether it still runs; delete the lock "
                                      "file if it does not)")
        if pid == os.getpid():
            return  # an earlier lock of this process, released (else the flock above had failed)
        if pid_alive(pid, owner.get("pid_start")):
            raise self._refuse(owner)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still locked: a waiting process retries on a fresh file
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock object must not hold the folder forever
        with contextlib.suppress(Exception):
            self.release()
