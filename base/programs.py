"""Programs of the system flexcharge or its tests run (socat for a simulated serial line,
chromium, victoria-metrics, mbpoll for tests): where they are installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def system_program(name: str) -> str | None:
    """Where `name` is installed, on PATH or in /usr/bin or /usr/sbin, or None. The Debian
    packages that hold them are installed by `make system-deps`, never by a test."""
    found = shutil.which(name)
    if found is not None:
        return found
    places = (Path("/usr/bin") / name, Path("/usr/sbin") / name)
    return next((str(p) for p in places if p.is_file() and os.access(p, os.X_OK)), None)
