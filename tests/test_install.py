"""flexcharge as an operator installs it: a wheel built from this checkout (`python -m build`),
installed into a fresh virtual environment and run from directories outside the checkout; the
systemd unit checked by `systemd-analyze verify`; the container image built where a container
tool and its base image are at hand.

The fresh environment gets flexcharge from the wheel only. Its dependencies are not installed
again (that would need the network, and a minute or more): a .pth file makes the test
environment's site-packages visible to it, after its own, and the wheel goes in with `pip
install --no-deps --no-index`. What the wheel itself must hold (every package, the live page's
files, the shipped configs) is then all it can take from this checkout: the commands run with
neither PYTHONPATH nor the checkout as working directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from flexcharge.cli.dirs import Dirs
from tests.conftest import ROOT, station_files_on_free_ports, system_program, wait_for_line

pytestmark = [pytest.mark.loopback]

# What goes into the build: the packages and data pyproject.toml names, and the files it reads.
SOURCES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "base",
    "configs",
    "control",
    "controller",
    "drivers",
    "flexcharge",
    "scheduler",
    "simulator",
)


@dataclass(frozen=True)
class Installed:
    """A virtual environment with the built wheel installed: its `flexcharge` and `python`."""

    wheel: Path
    flexcharge: str
    python: str

    @property
    def env(self) -> dict[str, str]:
        """The environment the commands run in: the test's (its own state and runtime
        directories among it), without the PYTHONPATH conftest points at this checkout."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}

    def run(self, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`flexcharge ARGS` from the environment, in `cwd`, to its exit."""
        return subprocess.run(
            [self.flexcharge, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str, cwd: Path) -> subprocess.Popen[str]:
        """`flexcharge ARGS` from the environment, in `cwd`, started."""
        return subprocess.Popen(
            [self.flexcharge, *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from a copy of the checkout's sources, installed into a fresh venv."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(item, source / name)
    # --no-isolation: the build backend (setuptools, pinned in requirements.lock) is already
    # installed here, so the build needs no network.
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    subprocess.run(
        [*build, "--outdir", str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    (wheel,) = (work / "dist").glob("flexcharge-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "flexcharge-test-dependencies.pth").write_text("\n".join(sorted(shared)) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    # Outside the checkout: pip would take an egg-info the editable install left in the
    # working directory for flexcharge already installed, and install nothing.
    subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        cwd=work,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert (venv / "bin" / "flexcharge").exists(), "pip did not install the wheel"
    return Installed(wheel, str(venv / "bin" / "flexcharge"), str(python))


def test_the_wheel_installs_a_flexcharge_that_runs_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    """--version from the package's metadata; the code, the page and the shipped configs from
    the wheel; `check-config` and a short `demo` work from an unrelated directory."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    shown = installed.run("--version", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == f"flexcharge {version}", shown

    where = subprocess.run(
        [
            installed.python,
            "-c",
            "import base.config, controller, flexcharge.cli; "
            "print(flexcharge.cli.__file__); print(base.config.REFERENCE_STATION); "
            "print(controller.__file__)",
        ],
        cwd=tmp_path,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    venv = Path(installed.python).parent.parent
    assert all(Path(p).is_relative_to(venv) for p in where), where
    _, station, controller = map(Path, where)
    assert station.is_file()
    for name in ("index.html", "app.js", "style.css"):
        assert (controller.parent / "page" / name).is_file(), name

    checked = installed.run("check-config", str(station), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid station: Bozhou" in checked.stdout
    demo = installed.run("demo", "--duration", "5", "--hours", "0.5", cwd=tmp_path, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "flexcharge demo summary" in demo.stdout
    assert not list(tmp_path.iterdir()), "nothing is written to the working directory"


def test_a_second_daemon_for_the_same_state_is_refused_whatever_its_directory(
    installed: Installed,
    tmp_path: Path,
    flexcharge_dirs: Dirs,
    processes: list[subprocess.Popen[str]],
) -> None:
    """Two `flexcharge run` of one station from two working directories find the same state
    directory (FLEXCHARGE_STATE_DIR): the second exits 2 naming the first's pid. Once the first
    has stopped, a daemon started from the other directory takes the same state over."""
    path = station_files_on_free_ports(tmp_path)
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    simulator = installed.start("sim-hardware", "--station", str(path), cwd=tmp_path)
    processes.append(simulator)
    wait_for_line(simulator, r"serving ")
    run = ("run", "--station", str(path), "--status-every", "600")

    first = installed.start(*run, cwd=first_dir)
    processes.append(first)
    started = wait_for_line(first, r"controlling Bozhou")
    state = flexcharge_dirs.state_file("bozhou-depot")
    assert any(f"state {state}, pidfile" in line for line in started), started

    second = installed.run(*run, cwd=second_dir)
    shown = " ".join(second.stdout.split())  # the console wraps long lines
    print(f"\n$ export FLEXCHARGE_STATE_DIR={flexcharge_dirs.state}")
    print(f"$ cd {first_dir} && flexcharge {' '.join(run)}   # pid {first.pid}, running")
    print(f"$ cd {second_dir} && flexcharge {' '.join(run)}")
    print(second.stdout + second.stderr + f"(exit {second.returncode})")
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"already running: pid {first.pid} runs this station's state {state}" in shown

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    again = installed.start(*run, cwd=second_dir)
    processes.append(again)
    resumed = wait_for_line(again, r"controlling Bozhou")
    assert any(f"state {state}, pidfile" in line for line in resumed), resumed
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=30) == 0
    simulator.send_signal(signal.SIGTERM)
    assert simulator.wait(timeout=30) == 0
    assert not list(first_dir.iterdir()) and not list(second_dir.iterdir())


UNIT = ROOT / "packaging" / "flexcharge.service"


def test_the_systemd_unit_passes_systemd_analyze_verify(
    installed: Installed, tmp_path: Path
) -> None:
    """The unit as shipped, its ExecStart pointed at the installed command: no error, no
    warning (an unknown or misspelt setting would be one)."""
    analyze = system_program("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package has it)")
    text = UNIT.read_text()
    for line in (
        "StateDirectory=flexcharge",
        "RuntimeDirectory=flexcharge",
        "ConfigurationDirectory=flexcharge",
        "User=flexcharge",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ):
        assert f"\n{line}\n" in text, line
    assert "--station /etc/flexcharge/station.toml" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/flexcharge/bin/flexcharge", installed.flexcharge))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


CONTAINERFILE = ROOT / "packaging" / "Containerfile"
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"


def _container_tool() -> str | None:
    """podman, or docker with a daemon to talk to; None if neither works here."""
    for name in ("podman", "docker"):
        tool = system_program(name)
        if tool is not None and subprocess.run([tool, "info"], capture_output=True).returncode == 0:
            return tool
    return None


@pytest.mark.timeout(900)
def test_the_container_image_builds_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """packaging/Containerfile builds from the wheel and the lock, and its image's
    `flexcharge --version` is the wheel's. Its base image must be here already (a test pulls
    nothing); the build installs the pinned dependencies from PyPI."""
    tool = _container_tool()
    if tool is None:
        pytest.skip("no working container tool (podman, or docker with its daemon)")
    if subprocess.run([tool, "image", "exists", BASE_IMAGE], capture_output=True).returncode:
        pytest.skip(f"the base image {BASE_IMAGE} is not here (`{tool} pull {BASE_IMAGE}`)")
    context = tmp_path / "context"
    (context / "dist").mkdir(parents=True)
    (context / "packaging").mkdir()
    shutil.copy2(installed.wheel, context / "dist")
    for name in ("requirements.lock", ".dockerignore", "packaging/Containerfile"):
        shutil.copy2(ROOT / name, context / name)
    tag = f"localhost/flexcharge-test:{os.getpid()}"
    build = [tool, "build", "-f", "packaging/Containerfile", "-t", tag, "."]
    built = subprocess.run(build, cwd=context, capture_output=True, text=True, timeout=840)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    try:
        shown = subprocess.run(
            [tool, "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=60
        )
        assert shown.stdout.strip() == installed.run("--version", cwd=tmp_path).stdout.strip()
    finally:
        subprocess.run([tool, "rmi", "-f", tag], capture_output=True)
