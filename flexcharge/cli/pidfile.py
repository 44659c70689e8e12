"""The daemon's pidfile, for process supervisors and `reload --pidfile` (the station itself is
claimed by the lock on its state file, `flexcharge.cli.lock`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import log
from .dirs import Dirs


def path_for(args: argparse.Namespace, dirs: Dirs) -> Path:
    """The pidfile given, or <station file stem>.pid in the runtime directory."""
    if args.pidfile:
        return Path(args.pidfile).absolute()
    return dirs.pidfile(Path(args.station).stem)


def read_pid(path: Path) -> int | None:
    """The process id in a pidfile; None if it cannot be read or holds none."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def is_daemon(pid: int) -> bool:
    """True if `pid` is a live process that is (as far as the system tells) flexcharge."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: a live process is taken for the daemon
    # A pid the system gave to another program since: signalling it could end that program.
    return b"flexcharge" in cmdline or b"flexcharge.cli" in cmdline


def claim(path: Path) -> int | None:
    """Write this process's pid to `path`; return the pid of a live daemon holding it instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = read_pid(path)
            if other is not None and other != os.getpid() and is_daemon(other):
                return other
            log.warning("replacing the stale pidfile %s (pid %s is not running)", path, other)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        return None
    raise OSError(f"cannot create the pidfile {path}: another process keeps replacing it")


def release(path: Path) -> None:
    """Remove the pidfile if this process wrote it."""
    if read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)
