"""The layers point down: no module imports a layer above its own, and the pure layers do no I/O.

The picture (README, "Layout"): `flexcharge` (the application) on top; `controller` (daemon
services) and `simulator` beside each other; `control` (pure cycle logic); `drivers` and
`scheduler` beside each other; `base` at the bottom. Every import counts, including those inside
functions and under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Which of flexcharge's packages each package may import (its own always included).
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "drivers": frozenset({"base", "drivers"}),
    "scheduler": frozenset({"base", "scheduler"}),
    "control": frozenset({"base", "drivers", "scheduler", "control"}),
    "controller": frozenset({"base", "drivers", "scheduler", "control", "controller"}),
    "simulator": frozenset({"base", "drivers", "scheduler", "control", "simulator"}),
    "flexcharge": frozenset(
        {"base", "drivers", "scheduler", "control", "controller", "simulator", "flexcharge"}
    ),
}
PACKAGES = frozenset(ALLOWED)

# Libraries that do I/O or run tasks, which the pure layers never touch.
IMPURE = frozenset(
    {
        "asyncio",
        "socket",
        "sqlite3",
        "pymodbus",
        "asyncua",
        "fastapi",
        "uvicorn",
        "influxdb_client",
        "subprocess",
    }
)
PURE = frozenset({"control", "scheduler"})


@dataclass(frozen=True)
class Violation:
    """One import that breaks a rule."""

    module: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.why}"


def imports_of(module: str, source: str) -> list[tuple[int, str]]:
    """Every module `source` imports, absolute, with its line (relative imports resolved)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = module.split(".")[: -node.level]
                name = ".".join([*parent, node.module] if node.module else parent)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations(module: str, source: str) -> list[Violation]:
    """The layer and purity rules `module` (dotted name) breaks with this source."""
    own = module.split(".")[0]
    allowed = ALLOWED[own]
    broken: list[Violation] = []
    for line, name in imports_of(module, source):
        top = name.split(".")[0]
        if top in PACKAGES and top not in allowed:
            broken.append(Violation(module, line, name, f"{top} is not below {own}"))
        if own in PURE and top in IMPURE:
            broken.append(Violation(module, line, name, f"{own} is pure: no I/O, no tasks"))
    return broken


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts)] = path
    return modules


def test_every_package_has_a_rule() -> None:
    """A new top-level package must take its place in the picture before it can be imported."""
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk == set(PACKAGES)


def test_no_module_imports_a_layer_above_its_own() -> None:
    modules = project_modules()
    assert len(modules) > 60  # the walk found the code
    broken = [v for name, path in modules.items() for v in violations(name, path.read_text())]
    assert broken == [], "\n".join(map(str, broken))


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("base.config", "from controller.daemon import Daemon\n", "controller is not below base"),
        ("drivers.pile", "import scheduler.plan\n", "scheduler is not below drivers"),
        ("scheduler.lp", "from control import cycle\n", "control is not below scheduler"),
        (
            "control.cycle",
            "def f():\n    from simulator.plant import Plant\n",
            "simulator is not below control",
        ),
        ("simulator.fast", "from controller.telemetry import X\n", "controller is not below"),
        ("controller.api", "from flexcharge.cli import main\n", "flexcharge is not below"),
        (
            "base.devicemap",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from drivers import codec\n",
            "drivers is not below base",
        ),
        ("control.cycle", "import asyncio\n", "control is pure"),
        ("scheduler.solver", "from pymodbus.client import X\n", "scheduler is pure"),
        ("drivers.sub.thing", "from .. import errors\nfrom ...control import x\n", "control"),
    ],
)
def test_an_upward_import_is_caught(module: str, source: str, expected: str) -> None:
    """The checker itself: each of these would break the build if it were in the code."""
    found = violations(module, source)
    assert found, f"{source!r} in {module} passed the rules"
    assert expected in str(found[-1])


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("flexcharge.cli", "from controller.daemon import Daemon\nfrom simulator import fast\n"),
        ("simulator.fast", "from control.cycle import Control\nfrom drivers import codec\n"),
        ("control.cycle", "from scheduler.plan import Plan\nimport numpy\n"),
        ("drivers.pile", "from .errors import BadValue\n"),
    ],
)
def test_a_downward_import_passes(module: str, source: str) -> None:
    assert violations(module, source) == []


# The API, the metrics and the live view see a daemon only through `controller.status`.
PORT_ONLY = ("controller.api", "controller.metrics", "flexcharge.view")


@pytest.mark.parametrize("module", PORT_ONLY)
def test_readers_of_the_daemon_see_only_its_port(module: str) -> None:
    path = project_modules()[module]
    imported = {name for _, name in imports_of(module, path.read_text())}
    assert "controller.daemon" not in imported
    assert "controller.status" in imported
