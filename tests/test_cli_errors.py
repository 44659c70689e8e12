"""Every `flexcharge` argument, given a bad value, ends the command with exit 2 and a one-line
message that names the flag (or the file), never a traceback; and every argument has help text.

The table below holds one or more bad values for every argument of every subcommand;
`test_the_table_covers_every_argument` reads the parser itself so that an argument added later
without a row here fails the build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from base.config import CONFIG_ROOT, REFERENCE_STATION
from flexcharge import cli

from .conftest import FLEXCHARGE

ST = str(REFERENCE_STATION)
SESSIONS = str(CONFIG_ROOT / "scenarios" / "bozhou-day.csv")
TARIFF = str(CONFIG_ROOT / "tariffs" / "guizhou-tou.toml")
STUDY = str(CONFIG_ROOT / "studies" / "example.toml")
MIXED = "configs/stations/mixed-site.toml"  # in the test's copy of configs/


@dataclass(frozen=True)
class Case:
    """A command line with one bad value, the argument it covers (`command/dest`), and words
    that one line of its output must all hold."""

    covers: str
    argv: tuple[str, ...]
    words: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.covers}:{' '.join(self.argv)[-60:]}"


def case(covers: str, argv: str | list[str], *words: str) -> Case:
    """A row of the table; `argv` as one string split at spaces, or a list."""
    args = argv.split(" ") if isinstance(argv, str) else argv
    return Case(covers, tuple(args), words)


def _scenario_cases(command: str) -> list[Case]:
    """`simulate` and `compare` take the same scenario arguments."""
    base = [command, "--station", ST, "--sessions", SESSIONS, "--out", "out"]
    return [
        case(f"{command}/station", f"{command} --station missing.toml --sessions x --out o",
             "missing.toml"),
        case(f"{command}/tariff", [*base, "--tariff", "missing-tariff.toml"],
             "missing-tariff.toml", "not found"),
        case(f"{command}/sessions", f"{command} --station {ST} --sessions missing.csv --out o",
             "missing.csv", "not found"),
        case(f"{command}/background", [*base, "--background", "missing-bg.csv"],
             "missing-bg.csv", "not found"),
        case(f"{command}/limit", [*base, "--limit", "missing-limit.csv"],
             "missing-limit.csv", "not found"),
        case(f"{command}/faults", [*base, "--faults", "missing-faults.csv"],
             "missing-faults.csv", "not found"),
        case(f"{command}/policy", [*base, "--policy", "greedy"], "--policy", "invalid choice"),
        case(f"{command}/out", [*base[:-1], "afile"], "--out", "'afile' is a file"),
        case(f"{command}/step", [*base, "--step", "0"], "--step", "above 0"),
        case(f"{command}/step", [*base, "--step", "fast"], "--step", "not a number"),
        case(f"{command}/plan_period", [*base, "--plan-period", "-60"], "--plan-period", "above 0"),
        case(f"{command}/warmup_days", [*base, "--warmup-days", "-1"], "--warmup-days", "0 or more"),
        case(f"{command}/warmup_days", [*base, "--warmup-days", "1.5"], "--warmup-days", "whole"),
    ]  # fmt: skip


CASES = [
    case("flexcharge/log_level", f"--log-level LOUD check-config {ST}", "--log-level", "LOUD"),
    case("flexcharge/command", "nosuch", "invalid choice", "nosuch"),
    case("flexcharge/log_file", f"--log-file afile/x.log check-config {ST}", "--log-file",
         "afile/x.log"),
    case("flexcharge/log_file_mb", f"--log-file-mb 0 check-config {ST}", "--log-file-mb",
         "above 0"),
    case("flexcharge/log_file_keep", f"--log-file-keep -1 check-config {ST}", "--log-file-keep",
         "0 or more"),
    case("check-config/path", "check-config missing.toml", "missing.toml", "not found"),
    case("run/station", "run --station missing.toml", "missing.toml", "not found"),
    case("run/status_every", f"run --station {ST} --status-every 0", "--status-every", "above 0"),
    case("run/pidfile", ["run", "--station", ST, "--pidfile", ""], "--pidfile", "empty"),
    case("run/state", f"run --station {ST} --pidfile p.pid --state afile", "afile"),
    case("run/api", f"run --station {ST} --api 8080", "--api", "HOST:PORT"),
    case("run/state_dir", f"run --station {ST} --state-dir afile", "--state-dir", "afile"),
    case("run/runtime_dir", f"run --station {ST} --runtime-dir afile", "--runtime-dir", "afile"),
    case("reload/station", "reload --station missing.toml", "missing.toml", "not found"),
    case("reload/state", ["reload", "--station", ST, "--state", ""], "--state", "empty"),
    case("reload/state_dir", ["reload", "--station", ST, "--state-dir", ""], "--state-dir",
         "empty"),
    case("reload/runtime_dir", ["reload", "--station", ST, "--runtime-dir", ""], "--runtime-dir",
         "empty"),
    case("reload/pidfile", ["reload", "--station", ST, "--pidfile", ""], "--pidfile", "empty"),
    case("sim-hardware/station", "sim-hardware --station missing.toml", "missing.toml"),
    case("sim-hardware/sessions", f"sim-hardware --station {ST} --sessions afile", "afile"),
    case("sim-hardware/faults", f"sim-hardware --station {ST} --faults afile", "afile"),
    *_scenario_cases("simulate"),
    case("simulate/telemetry",
         f"simulate --station {ST} --sessions {SESSIONS} --out o --policy mpc --policy edf "
         "--telemetry", "--telemetry", "one --policy"),
    *_scenario_cases("compare"),
    case("sessions/station", "sessions --station missing.toml --start 2026-11-10 --out s.csv",
         "missing.toml"),
    case("sessions/start", f"sessions --station {ST} --start 10/11/2026 --out s.csv",
         "--start", "not a date: '10/11/2026'"),
    case("sessions/days", f"sessions --station {ST} --start 2026-11-10 --days 0 --out s.csv",
         "--days", "at least 1"),
    case("sessions/out", ["sessions", "--station", ST, "--start", "2026-11-10", "--out", ""],
         "--out", "empty"),
    case("sweep/study", "sweep missing.toml --out o", "missing.toml", "no such file"),
    case("sweep/out", f"sweep {STUDY} --out afile", "--out", "'afile' is a file"),
    case("sweep/backend", f"sweep {STUDY} --out o --backend spark", "--backend",
         "invalid choice"),
    case("sweep/address", ["sweep", STUDY, "--out", "o", "--backend", "ray", "--address", "a b"],
         "--address", "not a host name"),
    case("sweep/address", f"sweep {STUDY} --out o --address 127.0.0.1:6379",
         "--address is for --backend ray"),
    case("sweep/workers", f"sweep {STUDY} --out o --workers 0", "--workers", "at least 1"),
    case("sweep/resume", f"sweep {STUDY} --out o --resume=yes", "--resume", "ignored"),
    case("sweep/retries", f"sweep {STUDY} --out o --retries -1", "--retries", "0 or more"),
    case("sweep/days", f"sweep {STUDY} --out o --days 0", "--days", "at least 1"),
    case("tariff/tariff_command", "tariff nosuch", "invalid choice", "nosuch"),
    case("tariff compare/station", f"tariff compare --station missing.toml --sessions "
         f"{SESSIONS} --out o {TARIFF}", "missing.toml"),
    case("tariff compare/sessions", f"tariff compare --station {ST} --sessions missing.csv "
         f"--out o {TARIFF}", "missing.csv"),
    case("tariff compare/tariffs", f"tariff compare --station {ST} --sessions {SESSIONS} "
         "--out o missing-tariff.toml", "missing-tariff.toml"),
    case("tariff compare/policy", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --policy greedy {TARIFF}", "--policy", "invalid choice"),
    case("tariff compare/background", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --background missing-bg.csv {TARIFF}", "missing-bg.csv"),
    case("tariff compare/limit", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --limit missing-limit.csv {TARIFF}", "missing-limit.csv"),
    case("tariff compare/out", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out afile {TARIFF}", "--out", "'afile' is a file"),
    case("tariff compare/step", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --step 0 {TARIFF}", "--step", "above 0"),
    case("tariff compare/plan_period", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --plan-period nan {TARIFF}", "--plan-period", "above 0"),
    case("tariff compare/workers", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --workers 0 {TARIFF}", "--workers", "at least 1"),
    case("tariff compare/warmup_days", f"tariff compare --station {ST} --sessions {SESSIONS} "
         f"--out o --warmup-days -2 {TARIFF}", "--warmup-days", "0 or more"),
    case("tariff show/path", "tariff show missing-tariff.toml", "missing-tariff.toml"),
    case("tariff show/out", f"tariff show {TARIFF} --out afile", "--out", "'afile' is a file"),
    case("tariff show/year", f"tariff show {TARIFF} --year 99999", "--year", "99999"),
    case("certs/certs_command", "certs nosuch", "invalid choice", "nosuch"),
    case("certs init/dir", "certs init afile", "dir", "'afile' is a file"),
    case("certs init/station", ["certs", "init", "ca", "--station", " "], "--station", "empty"),
    case("certs init/host", ["certs", "init", "ca", "--host", "a b"], "--host", "'a b'"),
    case("certs init/days", "certs init ca --days 0", "--days", "at least 1"),
    case("certs init/force", "certs init ca --force=yes", "--force", "ignored"),
    case("certs issue/dir", "certs issue afile scada --uri urn:x", "dir", "'afile' is a file"),
    case("certs issue/name", ["certs", "issue", "ca", "", "--uri", "urn:x"], "name", "empty"),
    case("certs issue/uri", "certs issue ca scada --uri scada", "--uri", "not a URI"),
    case("certs issue/host", ["certs", "issue", "ca", "s", "--uri", "urn:x", "--host", ""],
         "--host", "not a host"),
    case("certs issue/days", "certs issue ca s --uri urn:x --days -1", "--days", "at least 1"),
    case("certs issue/charge_point", "certs issue ca s --uri urn:x --charge-point",
         "--charge-point", "not allowed with argument --uri"),
    case("certs revoke/dir", "certs revoke afile afile", "dir", "'afile' is a file"),
    case("certs revoke/certificate", "certs revoke ca missing.pem", "certificate",
         "'missing.pem': no such file"),
    case("demo/station", "demo --station missing.toml", "missing.toml", "not found"),
    case("demo/speed", "demo --speed 0", "--speed", "'0' must be a number above 0"),
    case("demo/speed", "demo --speed -960", "--speed", "above 0"),
    case("demo/duration", "demo --duration 0", "--duration", "above 0"),
    case("demo/duration", "demo --duration inf", "--duration", "above 0"),
    case("demo/api", "demo --api localhost", "--api", "HOST:PORT"),
    case("demo/hours", "demo --hours 0", "--hours", "above 0"),
    case("demo/start", "demo --start 25:00", "--start", "'25:00' is not a time of day (HH:MM)"),
    case("demo/start", "demo --start 7pm", "--start", "'7pm' is not a time of day (HH:MM)"),
    case("demo/start", "demo --start 12:5", "--start", "not a time of day"),
    case("demo/period", "demo --period 0", "--period", "above 0"),
    case("demo/station_ports", "demo --station-ports=yes", "--station-ports", "ignored"),
    # Links the station file encrypts, without what they need: the same exit 2 as `run`'s.
    case("demo/station", f"demo --station {MIXED}", "daemon certificate files missing"),
    case("demo/station", f"demo --station {MIXED} --hours 0.1", "FLEXCHARGE_OPCUA_PASSWORD"),
]  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory with a file named `afile` (which is no directory, no station state,
    no sessions CSV, no certificate)."""
    (tmp_path / "afile").write_text("not what any argument wants\n")
    return tmp_path


def _run(argv: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEXCHARGE_OPCUA_PASSWORD"}
    return subprocess.run(
        [FLEXCHARGE, *argv],
        cwd=cwd,
        env={**env, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("row", CASES, ids=[c.id for c in CASES])
def test_a_bad_value_is_one_line_and_exit_2(row: Case, workdir: Path) -> None:
    """Exit 2; one line of the output holds every expected word; no traceback; an error found
    by the parser is that one line on stderr and nothing else."""
    if MIXED in row.argv:
        # The mixed site's certificates are in var/certs, two levels above its station file.
        shutil.copytree(CONFIG_ROOT, workdir / "configs")
        if "--hours" in row.argv:  # certificates present: the password is what is missing
            assert cli.main(["certs", "init", str(workdir / "var" / "certs")]) == 0
    done = _run(row.argv, workdir)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert any(all(word in line for word in row.words) for line in lines), output
    if done.stderr:
        # An error the parser finds: one line, no usage block before it.
        assert len(done.stderr.splitlines()) == 1, done.stderr


def _parsers(
    parser: argparse.ArgumentParser, path: str = "flexcharge"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, name if path == "flexcharge" else f"{path} {name}")


def _arguments(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        # --help and --version take no value: nothing about them can be bad.
        if not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield action


def test_the_table_covers_every_argument() -> None:
    """Every argument of every subcommand (and each level's choice of subcommand) has a row."""
    wanted = {
        f"{path}/{action.dest}"
        for path, parser in _parsers(cli.build_parser())
        for action in _arguments(parser)
    }
    covered = {row.covers for row in CASES}
    assert wanted - covered == set(), "arguments without a bad-value case"
    assert covered - wanted == set(), "rows for arguments that do not exist"


def test_every_argument_has_help_and_shows_its_default() -> None:
    """Each argument of each subcommand says what it is; its default, if it has one, is in
    `--help`; and each subcommand has a line in its parent's list."""
    for path, parser in _parsers(cli.build_parser()):
        text = parser.format_help()
        for action in _arguments(parser):
            assert action.help, f"{path}: {action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                assert all(helps.get(name) for name in action.choices), f"{path}: {helps}"
            elif action.default not in (None, False, [], argparse.SUPPRESS):
                shown = parser._get_formatter()._get_help_string(action)  # type: ignore[attr-defined]
                assert "default" in shown, f"{path}: {action.dest} hides its default"
                assert "default" in text
