"""The research peer: ACN-Sim (acnportal) with LLF, EDF and Caltech's ASA, in a venv of its own.

`peer_python` makes `.venv-peer/` in the repository root from `tests/peer/requirements.txt`
(pinned; re-made whenever that file changes), `run_peer` runs `acnsim_peer.py` there on one day
(see `tests.peer.days.acn_day`) and returns its results. ASA needs adacharge, which is not on
PyPI: the peer imports it only from the directory the environment variable `ADACHARGE_SRC` names,
and reports it unavailable without one. Nothing here installs or builds adacharge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PEER_DIR = Path(__file__).resolve().parent
REQUIREMENTS = PEER_DIR / "requirements.txt"
SCRIPT = PEER_DIR / "acnsim_peer.py"
VENV = ".venv-peer"
STAMP = ".flexcharge-peer-requirements"
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class PeerError(RuntimeError):
    """The peer's venv could not be made, or the peer failed (the message ends with its stderr)."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _base_python() -> str:
    # The interpreter venvs are made from, not this venv's (a venv made from a venv's python
    # still points at the base one, but say so plainly).
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable


def peer_python(root: Path) -> Path:
    """The peer venv's python, making `root`/.venv-peer first if it is missing or was made from
    another requirements.txt (a stamp file in the venv holds that file's sha256)."""
    venv = root / VENV
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if venv.exists():
        shutil.rmtree(venv)  # packages of older pins would linger in place
    steps = [
        [_base_python(), "-m", "venv", str(venv)],
        [
            str(python),
            *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("-r", str(REQUIREMENTS)),
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PeerError(
                f"making the peer venv failed: {' '.join(step)} (exit {done.returncode})\n"
                + _tail(done.stderr or done.stdout)
            )
    stamp.write_text(wanted + "\n")
    return python


def peer_env() -> dict[str, str]:
    """The peer's environment: one thread per pool, and adacharge's source on the path if
    `ADACHARGE_SRC` names it (flexcharge's own PYTHONPATH is not passed on)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(dict.fromkeys(THREAD_VARS, "1"))
    env["PYTHONNOUSERSITE"] = "1"
    source = os.environ.get("ADACHARGE_SRC")
    if source:
        env["PYTHONPATH"] = source
    return env


def run_peer(
    day: dict[str, Any],
    algorithms: Iterable[str],
    *,
    root: Path,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """The peer's results for `day` (an `acn_day` dict) under `algorithms` (llf, edf, asa).

    Raises `PeerError` with the tail of the peer's stderr if it fails.
    """
    python = peer_python(root)
    with tempfile.TemporaryDirectory(prefix="flexcharge-peer-") as scratch:
        given, result = Path(scratch) / "in.json", Path(scratch) / "out.json"
        given.write_text(json.dumps({**day, "algorithms": list(algorithms)}), encoding="utf-8")
        try:
            done = subprocess.run(
                [str(python), str(SCRIPT), str(given), str(result)],
                cwd=scratch,
                env=peer_env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerError(f"the peer ran over {timeout_s:g} s on {day.get('name')}") from exc
        if done.returncode != 0 or not result.exists():
            raise PeerError(
                f"the peer failed (exit {done.returncode}) on {day.get('name')}:\n"
                + _tail(done.stderr)
            )
        output: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        return output
