"""Where the daemon keeps its files: the state directory (state files, telemetry) and the runtime
directory (pidfiles), never the working directory.

Each is, first found: the command-line flag (`--state-dir`, `--runtime-dir`); the environment
(`FLEXCHARGE_STATE_DIR`, `FLEXCHARGE_RUNTIME_DIR`); systemd's (`STATE_DIRECTORY`,
`RUNTIME_DIRECTORY`, set by the unit's StateDirectory= and RuntimeDirectory=); then the
platform's: /var/lib/flexcharge and /run/flexcharge for root, and for any other user
`$XDG_STATE_HOME/flexcharge` (~/.local/state/flexcharge) and `$XDG_RUNTIME_DIR/flexcharge`
(without XDG_RUNTIME_DIR: `run/` in the state directory). The choice depends on the user, not on
its permissions, so a daemon never moves to other files because a directory's mode changed.

`LOGS_DIRECTORY` (LogsDirectory=) is where a relative `--log-file` goes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SYSTEM_STATE = Path("/var/lib/flexcharge")
SYSTEM_RUNTIME = Path("/run/flexcharge")
STATE_ENV = "FLEXCHARGE_STATE_DIR"
RUNTIME_ENV = "FLEXCHARGE_RUNTIME_DIR"


class DirsError(Exception):
    """A directory cannot be worked out or used; the message says which flag or variable to set."""


@dataclass(frozen=True)
class Dirs:
    """The state directory (`state`) and the runtime directory (`runtime`), both absolute."""

    state: Path
    runtime: Path

    def state_file(self, stem: str) -> Path:
        """A station's state file: state/<station file stem>.sqlite in the state directory."""
        return self.state / "state" / f"{stem}.sqlite"

    @property
    def telemetry(self) -> Path:
        """Where telemetry's local store and disk buffer go unless the station says otherwise."""
        return self.state / "telemetry"

    def pidfile(self, stem: str) -> Path:
        """A station's daemon's pidfile: <station file stem>.pid in the runtime directory."""
        return self.runtime / f"{stem}.pid"


def _systemd(environ: Mapping[str, str], name: str) -> str | None:
    # systemd lists one path per StateDirectory= entry, separated by colons: ours is the first.
    value = environ.get(name, "").split(":")[0]
    return value or None


def _user_state(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME")
    if base and Path(base).is_absolute():
        return Path(base) / "flexcharge"
    home = environ.get("HOME")
    if not home:
        raise DirsError(f"no state directory: HOME is not set; give --state-dir or set {STATE_ENV}")
    return Path(home) / ".local" / "state" / "flexcharge"


def resolve(
    state_dir: str | None = None,
    runtime_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    uid: int | None = None,
) -> Dirs:
    """The directories, from the flags given (None if not), the environment and the user
    (`environ` and `uid` default to this process's). Raises `DirsError`."""
    env = os.environ if environ is None else environ
    root = (os.geteuid() if uid is None else uid) == 0
    state_text = state_dir or env.get(STATE_ENV) or _systemd(env, "STATE_DIRECTORY")
    if state_text:
        state = Path(state_text).absolute()
    else:
        state = SYSTEM_STATE if root else _user_state(env)
    runtime_text = runtime_dir or env.get(RUNTIME_ENV) or _systemd(env, "RUNTIME_DIRECTORY")
    if runtime_text:
        runtime = Path(runtime_text).absolute()
    elif root:
        runtime = SYSTEM_RUNTIME
    else:
        xdg_runtime = env.get("XDG_RUNTIME_DIR")
        use_xdg = bool(xdg_runtime) and Path(str(xdg_runtime)).is_absolute()
        runtime = Path(str(xdg_runtime)) / "flexcharge" if use_xdg else state / "run"
    return Dirs(state=state, runtime=runtime)


def log_file(path: str, environ: Mapping[str, str] | None = None) -> Path:
    """`--log-file PATH`: a relative PATH is in systemd's LOGS_DIRECTORY when that is set."""
    logs = _systemd(os.environ if environ is None else environ, "LOGS_DIRECTORY")
    given = Path(path)
    if logs and not given.is_absolute():
        return Path(logs) / given
    return given.absolute()


def make(directory: Path, flag: str, env: str) -> None:
    """Create `directory` (and its parents) if missing; `DirsError` naming `flag` and `env`
    (the ways to choose another) if it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DirsError(
            f"cannot create {directory}: {exc.strerror or exc}; "
            f"choose another directory with {flag} DIR or {env}=DIR"
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DirsError(
            f"cannot write in {directory}: permission denied; "
            f"choose another directory with {flag} DIR or {env}=DIR"
        )
