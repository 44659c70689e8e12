"""What running as a service needs: the directories (flags, environment, systemd, the user's
defaults; never the working directory), the lock that keeps one daemon per station, journald's
priorities and the rotating log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexcharge.cli import dirs, lock
from tests.conftest import FLEXCHARGE, REFERENCE_STATION

# -- directories ---------------------------------------------------------------------------------


def test_the_state_directory_is_the_flag_then_the_environment_then_systemd_then_the_user_s() -> (
    None
):
    env = {
        "FLEXCHARGE_STATE_DIR": "/srv/fc",
        "STATE_DIRECTORY": "/var/lib/flexcharge:/var/lib/other",
        "FLEXCHARGE_RUNTIME_DIR": "/srv/run",
        "RUNTIME_DIRECTORY": "/run/flexcharge",
        "HOME": "/home/op",
    }
    assert dirs.resolve("/flag", "/flag-run", env, uid=1000) == dirs.Dirs(
        Path("/flag"), Path("/flag-run")
    )
    assert dirs.resolve(None, None, env, uid=1000) == dirs.Dirs(Path("/srv/fc"), Path("/srv/run"))
    systemd = {k: v for k, v in env.items() if not k.startswith("FLEXCHARGE_")}
    assert dirs.resolve(None, None, systemd, uid=1000) == dirs.Dirs(
        Path("/var/lib/flexcharge"), Path("/run/flexcharge")
    )
    assert dirs.resolve(None, None, {"HOME": "/home/op"}, uid=0) == dirs.Dirs(
        dirs.SYSTEM_STATE, dirs.SYSTEM_RUNTIME
    )
    user = dirs.resolve(None, None, {"HOME": "/home/op"}, uid=1000)
    assert user == dirs.Dirs(
        Path("/home/op/.local/state/flexcharge"), Path("/home/op/.local/state/flexcharge/run")
    )
    xdg = {"HOME": "/home/op", "XDG_STATE_HOME": "/x/state", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert dirs.resolve(None, None, xdg, uid=1000) == dirs.Dirs(
        Path("/x/state/flexcharge"), Path("/run/user/1000/flexcharge")
    )
    found = dirs.resolve("/var/lib/flexcharge", "/run/flexcharge", {}, uid=0)
    assert found.state_file("depot") == Path("/var/lib/flexcharge/state/depot.sqlite")
    assert found.telemetry == Path("/var/lib/flexcharge/telemetry")
    assert found.pidfile("depot") == Path("/run/flexcharge/depot.pid")
    with pytest.raises(dirs.DirsError, match="--state-dir or set FLEXCHARGE_STATE_DIR"):
        dirs.resolve(None, None, {}, uid=1000)


def test_a_relative_directory_is_made_absolute_once_and_log_files_go_to_logs_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dirs.resolve("data", "run", {}, uid=1000).state == tmp_path / "data"
    assert dirs.log_file("fc.log", {"LOGS_DIRECTORY": "/var/log/flexcharge"}) == Path(
        "/var/log/flexcharge/fc.log"
    )
    assert dirs.log_file("/abs/fc.log", {"LOGS_DIRECTORY": "/var/log/flexcharge"}) == Path(
        "/abs/fc.log"
    )
    assert dirs.log_file("fc.log", {}) == tmp_path / "fc.log"


def test_a_state_directory_that_cannot_be_made_stops_run_with_the_flag_to_set(
    tmp_path: Path,
) -> None:
    """Exit 2, one line naming the directory, the flag and the variable; nothing started."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {**os.environ, "FLEXCHARGE_STATE_DIR": str(blocker / "flexcharge"), "COLUMNS": "300"}
    result = subprocess.run(
        [FLEXCHARGE, "run", "--station", str(REFERENCE_STATION)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"cannot create {blocker / 'flexcharge' / 'state'}" in lines[0]
    assert "--state-dir DIR or FLEXCHARGE_STATE_DIR=DIR" in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-directory"]


def test_check_config_says_where_the_local_store_is(
    flexcharge_dirs: dirs.Dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    from flexcharge.cli import main

    assert main(["check-config", str(REFERENCE_STATION)]) == 0
    store = flexcharge_dirs.telemetry / "bozhou-depot.sqlite"
    assert f"telemetry: local store {store}" in capsys.readouterr().out


# -- the lock ------------------------------------------------------------------------------------


def test_the_state_lock_admits_one_holder_and_names_it(tmp_path: Path) -> None:
    state = tmp_path / "depot.sqlite"
    assert lock.holder(state) is None
    first, second = lock.StateLock(state), lock.StateLock(state)
    first.acquire()
    try:
        assert lock.holder(state) == os.getpid()
        with pytest.raises(lock.LockHeld) as held:
            second.acquire()
        assert held.value.pid == os.getpid() and held.value.path == tmp_path / "depot.sqlite.lock"
    finally:
        first.release()
    assert lock.holder(state) is None
    second.acquire()  # free again once released
    second.release()


def test_the_lock_goes_with_its_process_however_it_ends(tmp_path: Path) -> None:
    """A process killed while holding the lock leaves it free (its pid still in the file)."""
    state = tmp_path / "depot.sqlite"
    code = (
        "import os, sys, pathlib; from flexcharge.cli.lock import StateLock; "
        f"StateLock(pathlib.Path({str(state)!r})).acquire(); print('held', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert lock.holder(state) == proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    assert lock.holder(state) is None
    taken = lock.StateLock(state)
    taken.acquire()
    taken.release()


# -- logs ----------------------------------------------------------------------------------------

LOG_SOME = (
    "import logging, sys; from pathlib import Path; from flexcharge import logs; "
    "logs.configure('INFO', log_file=Path(sys.argv[1]) if len(sys.argv) > 1 else None, "
    "log_file_bytes=400, log_file_keep=2); "
    "log = logging.getLogger('flexcharge'); "
    "log.info('pile P01 charging'); log.warning('pile P02 lost\\nsecond line'); "
    "[log.error('filler %d', i) for i in range(20)]"
)


def _log_some(stderr: Path, env: dict[str, str], *args: str) -> list[str]:
    with stderr.open("w") as err:
        subprocess.run([sys.executable, "-c", LOG_SOME, *args], stderr=err, env=env, check=True)
    return stderr.read_text().splitlines()


def test_under_journald_each_line_carries_its_syslog_priority(tmp_path: Path) -> None:
    """JOURNAL_STREAM naming stderr: `<6>` for INFO, `<4>` for a warning and its second line,
    `<3>` for errors, no time. Naming another stream (stderr redirected): lines as usual."""
    stderr = tmp_path / "stderr"
    stderr.write_text("")
    stat = stderr.stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    lines = _log_some(stderr, env)
    assert lines[:3] == [
        "<6>INFO    flexcharge: pile P01 charging",
        "<4>WARNING flexcharge: pile P02 lost",
        "<4>second line",
    ]
    assert lines[3:] and all(line.startswith("<3>ERROR") for line in lines[3:])
    other = tmp_path / "other"
    other.write_text("")
    plain = _log_some(other, env)
    assert plain[0].endswith(" INFO    flexcharge: pile P01 charging") and plain[0][0].isdigit()


def test_the_log_file_is_rotated_by_size(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "flexcharge.log"
    _log_some(tmp_path / "stderr", dict(os.environ), str(log_file))
    names = sorted(p.name for p in log_file.parent.iterdir())
    assert names == ["flexcharge.log", "flexcharge.log.1", "flexcharge.log.2"]
    text = "".join(p.read_text() for p in log_file.parent.iterdir())
    assert "ERROR   flexcharge: filler 19" in text
    assert all(p.stat().st_size <= 400 for p in log_file.parent.iterdir())


def test_log_file_flags_relative_to_logs_directory_and_a_bad_one_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "LOGS_DIRECTORY": str(tmp_path / "logs"), "COLUMNS": "300"}

    def flexcharge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLEXCHARGE, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
        )

    ok = flexcharge("--log-file", "fc.log", "check-config", str(REFERENCE_STATION))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "logs" / "fc.log").is_file()
    (tmp_path / "file").write_text("")
    bad = flexcharge("--log-file", str(tmp_path / "file" / "x.log"), "check-config", "x")
    assert bad.returncode == 2 and f"--log-file {tmp_path / 'file' / 'x.log'}" in bad.stdout
    assert "Traceback" not in bad.stderr
    for value in ("0", "-1", "x"):
        refused = flexcharge("--log-file-mb", value, "check-config", "x")
        assert refused.returncode == 2 and "--log-file-mb" in refused.stderr, refused.stderr
