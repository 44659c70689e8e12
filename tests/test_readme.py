"""The README's shell blocks, pasted into one shell as a reader would, in order.

Every ```sh block of the README follows a directive, an HTML comment GitHub does not show:

- `<!-- docs-test: run -->`: run; the block must end without error (`set -e`, `pipefail`);
- `<!-- docs-test: run, PATH in a temporary directory -->` (or `run, PATH and PATH2 in temporary
  directories`): the same, with each absolute PATH the block names (an install prefix, /etc/...)
  replaced by a temporary directory, the same one for the same PATH in every block;
- `<!-- docs-test: skip: WHY -->`: not run here, and why (root and systemd, say); the test lists
  them.

A block without a directive fails the test, so a new block cannot go untried. The blocks run
one after the other in one `bash`, as pasted into one terminal: what a block exports, the
processes it starts in the background (`&`) and its working directory carry on to the next.
That directory starts as a copy of the checkout's files the README uses (the code as links, the
configs copied, so that what the blocks write stays out of the checkout), with `.venv` the
checkout's environment. `make demo` runs a 2-hour window (`DEMO_ARGS` in the environment, which
the Makefile passes on) rather than its 15 hours. The state and runtime directories are the test's own (conftest's
environment), so nothing is written outside temporary directories. When the blocks are done,
every process they started is stopped (SIGINT to their process group, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The README's real-time pair listens on the reference station's own ports, as test_demo holds one.
pytestmark = [
    pytest.mark.loopback,
    pytest.mark.timeout(900),
    pytest.mark.xdist_group("reference-ports"),
]

README = ROOT / "README.md"
BLOCK = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<how>.*?)\s*-->", re.S)
SHELLS = {"sh", "bash", "shell", "console"}
# Linked into the working directory (read only by the blocks); everything else the README's
# blocks touch is copied, or made by them.
LINKED = ("base", "control", "controller", "drivers", "flexcharge", "scheduler", "simulator")
COPIED = (
    "configs",
    "packaging",
    "pyproject.toml",
    "requirements.lock",
    "README.md",
    "LICENSE",
    "Makefile",
)
# `make demo` in the quick start, over a shorter window than its 15 h (Makefile's DEMO_ARGS).
DEMO_ARGS = "--hours 2"
# A block longer than this has hung.
BLOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Block:
    """One shell block: where it starts in the README, its text, and what its directive says."""

    line: int
    body: str
    how: str | None

    @property
    def skipped(self) -> str | None:
        """Why the block is not run, if it is not."""
        if self.how is not None and self.how.startswith("skip:"):
            return self.how.removeprefix("skip:").strip()
        return None

    @property
    def replaced(self) -> tuple[str, ...] | None:
        """The absolute paths the directive asks to have replaced by temporary directories."""
        if self.how is None:
            return None
        found = re.fullmatch(
            r"run, (?P<paths>/\S+(?: and /\S+)*) in (?:a temporary directory|temporary directories)",
            self.how,
        )
        return tuple(found["paths"].split(" and ")) if found else None


def blocks(text: str) -> list[Block]:
    """The README's shell blocks, in order, each with the directive just above it."""
    found = []
    for match in BLOCK.finditer(text):
        if match["lang"] not in SHELLS:
            continue
        before = text[: match.start()].rstrip("\n")
        # The comment that ends just before the block, if one does.
        directive = (
            DIRECTIVE.fullmatch(before[before.rfind("<!--") :]) if before.endswith("-->") else None
        )
        found.append(
            Block(
                line=text.count("\n", 0, match.start()) + 1,
                body=match["body"],
                how=None if directive is None else directive["how"],
            )
        )
    return found


def test_every_shell_block_says_how_it_is_tried() -> None:
    """A shell block without a directive, or with one the test does not know, fails here."""
    found = blocks(README.read_text(encoding="utf-8"))
    assert found, "no shell blocks found: the README's format changed?"
    unknown = [
        b.line
        for b in found
        if not (b.how == "run" or b.replaced is not None or (b.skipped or "").strip())
    ]
    assert unknown == [], f"README.md lines {unknown}: a ```sh block needs <!-- docs-test: ... -->"


def test_the_directives_are_read() -> None:
    """The parser on a small text: a run block, a replaced path, a skipped one, and none."""
    text = (
        "<!-- docs-test: run -->\n```sh\necho a\n```\n"
        "<!-- docs-test: run, /opt/x in a temporary directory -->\n\n```sh\necho b\n```\n"
        "<!-- docs-test: skip: needs root -->\n```sh\necho c\n```\n"
        "<!-- docs-test: run, /etc/a and /opt/b in temporary directories -->\n```sh\necho e\n```\n"
        "```toml\na = 1\n```\n"
        "text\n```sh\necho d\n```\n"
    )
    got = [(b.body, b.how == "run", b.replaced, b.skipped) for b in blocks(text)]
    assert got == [
        ("echo a\n", True, None, None),
        ("echo b\n", False, ("/opt/x",), None),
        ("echo c\n", False, None, "needs root"),
        ("echo e\n", False, ("/etc/a", "/opt/b"), None),
        ("echo d\n", False, None, None),
    ]


class Shell:
    """One `bash` the blocks are pasted into; its output goes to a file."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: everything it starts stops with it
        )

    def run(self, n: int, script: Path, timeout_s: float) -> str:
        """Source `script` with `set -e` and `pipefail`; its output. Fails the test if it fails
        (the shell exits) or takes longer than `timeout_s`."""
        marker = f"__docs_test_block_{n}_done__"
        start = self.log.stat().st_size
        assert self.process.stdin is not None
        line = f"set -eo pipefail; source {script}; set +eo pipefail; echo {marker}\n"
        self.process.stdin.write(line.encode())
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            said = self.log.read_bytes()[start:].decode(errors="replace")
            if marker in said:
                return said.split(marker)[0]
            if self.process.poll() is not None:
                pytest.fail(f"exit {self.process.returncode}; it said:\n{said[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"still running after {timeout_s:.0f} s; it said:\n{said[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the shell and everything it started: SIGINT (the daemon's clean stop), then
        SIGKILL for what is left after 20 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._out.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def workdir(root: Path) -> Path:
    """A working directory like the checkout, for the blocks to run in and write to."""
    work = root / "checkout"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    (work / ".venv").symlink_to(ROOT / ".venv")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, work / name)
    # `make` takes the linked .venv as set up from these files (as it is): a copy newer than its
    # stamp would have it install the package again, from the copy.
    stamp = ROOT / ".venv" / ".flexcharge-installed"
    if stamp.exists():
        before = stamp.stat().st_mtime - 1
        for name in ("pyproject.toml", "requirements.lock"):
            os.utime(work / name, (before, before))
    return work


def test_every_runnable_block_of_the_readme_runs(tmp_path: Path) -> None:
    """The README's runnable blocks, in order, in one shell: each ends without error."""
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        pytest.skip("the README's API example needs curl and openssl")
    work = workdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "160",
            "HOME": str(tmp_path / "home"),
            "DEMO_ARGS": DEMO_ARGS,
        }
    )
    (tmp_path / "home").mkdir()
    shell = Shell(work, env, tmp_path / "shell.log")
    ran, skipped = [], []
    try:
        for n, block in enumerate(blocks(README.read_text(encoding="utf-8"))):
            if block.skipped is not None:
                skipped.append(f"line {block.line}: {block.skipped}")
                continue
            body = block.body
            for path in block.replaced or ():
                assert path in body, f"README.md line {block.line}: {path} is not in the block"
                body = body.replace(path, str(tmp_path / "replaced" / path.strip("/")))
            script = tmp_path / f"block-{n}.sh"
            script.write_text(body)
            began = time.monotonic()
            try:
                shell.run(n, script, BLOCK_TIMEOUT_S)
            except pytest.fail.Exception as failed:
                pytest.fail(f"README.md line {block.line}:\n{body}\n{failed}")
            ran.append(f"line {block.line}: {time.monotonic() - began:.0f} s")
    finally:
        shell.stop()
    print("ran:", *ran, "not run here:", *skipped, sep="\n  ")
    assert ran, "no block ran"
