"""One daemon per station: an exclusive lock (flock) on a file next to the station's state file,
held for the daemon's life, which holds its pid.

The lock is the kernel's: it is released when the process ends, however it ends (a killed daemon
leaves no stale claim), and it is on the state file's own directory, so two daemons started from
different working directories, or with different pidfiles, still find each other.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the station's lock; `pid` is its process id (None if unknown)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = "another process" if pid is None else f"pid {pid}"
        super().__init__(f"{who} holds {path}")
        self.path = path
        self.pid = pid


def lock_path(state_file: Path) -> Path:
    """The lock file of a state file: its name with `.lock` added, in the same directory."""
    return state_file.with_name(state_file.name + ".lock")


def _read_pid(fd: int) -> int | None:
    # The holder writes its pid just after it takes the lock: a moment's wait covers the gap.
    for _ in range(50):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


class StateLock:
    """The lock on one state file; `acquire` takes it (or raises `LockHeld`), `release` ends it."""

    def __init__(self, state_file: Path) -> None:
        self.path = lock_path(state_file)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's pid in it; `LockHeld` naming the holder if
        another process has it, `OSError` if the file cannot be opened."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise LockHeld(self.path, pid) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Empty the file and let the lock go (the file stays: removing it could race a starter)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def holder(state_file: Path) -> int | None:
    """The pid of the daemon holding `state_file`'s lock; None if no process holds it. Raises
    `LockHeld` (pid None) if it is held but names no pid."""
    path = lock_path(state_file)
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None  # no lock file there: nothing was ever started on this state
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            if pid is None:
                raise LockHeld(path, None) from None
            return pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
