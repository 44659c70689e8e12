"""The layers point down: no module imports a layer above its own, and the pure layers do no I/O.

The picture (README, "Layout"): `flexcharge` (the application) on top; `controller` (daemon
services) and `simulator` beside each other; `control` (pure cycle logic); `drivers` and
`scheduler` beside each other; `base` at the bottom. Every import counts, including those inside
functions and under `TYPE_CHECKING`. And each name has one home: it is imported from the module
that defines it, never from one that passes it on.
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


def defined_names(source: str) -> set[str]:
    """The names a module defines itself at its top level (under `if` and `try` too), not those
    it imports."""
    names: set[str] = set()
    pending = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.If | ast.Try):
            pending.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
    return names


def strays(importer: str, source: str, homes: dict[str, set[str]]) -> list[str]:
    """Each name `source` imports from a project module that does not define it (a module it
    merely passes on): every name has one home, and is imported from there."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.level or node.module not in homes:
            continue
        for alias in node.names:
            if alias.name not in homes[node.module] and f"{node.module}.{alias.name}" not in homes:
                found.append(f"{importer}:{node.lineno} imports {alias.name} from {node.module}")
    return found


def test_each_name_is_imported_from_its_home() -> None:
    modules = project_modules()
    homes = {name: defined_names(path.read_text()) for name, path in modules.items()}
    importers = {**modules, **{f"tests.{p.stem}": p for p in (ROOT / "tests").glob("*.py")}}
    found = [s for name, path in importers.items() for s in strays(name, path.read_text(), homes)]
    assert found == [], "\n".join(found)


def test_a_name_imported_from_elsewhere_than_its_home_is_caught() -> None:
    """The checker itself: base.config uses PileConfig but does not define it."""
    homes = {name: defined_names(path.read_text()) for name, path in project_modules().items()}
    assert "PileConfig" in homes["base.stationdevices"]
    assert strays("x", "from base.stationdevices import PileConfig\n", homes) == []
    assert strays("x", "from base.config import PileConfig, Station\n", homes) == [
        "x:1 imports PileConfig from base.config"
    ]
