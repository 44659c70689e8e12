"""Running a study's tasks: in local worker processes or on a Ray cluster, resumable, retried.

`run_sweep` runs every task of a `Study` not already done in `DIR/runs/` on a backend, writing
each task's row there as it completes (one small JSON file per task, written whole and then
renamed into place), so that a sweep that was stopped resumes where it was (`resume=True`). A
task that fails (raises, or its worker process dies) is run again, at most `retries` more times,
then kept as a failed row with its error: no task is ever dropped. `gather` reads the rows back
(with each run's saving against `uncontrolled` under the same tariff) and `write_results` writes
them as Parquet and CSV.

Backends: `LocalPool` (worker processes on this machine, the default) and `RayBackend` (Ray, an
optional dependency: `pip install flexcharge[ray]`). Both run `runner(TaskInput)` once per
attempt and report its row or its error; retries are the sweep's, the same on both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pebble import ProcessExpired, ProcessPool

from simulator.study import COLUMNS, Study, Task, TaskInput, failed_row, run_task
from simulator.whatif import BASELINE

Runner = Callable[[TaskInput], dict[str, Any]]
# What a backend hands back for an attempt: the task's id, its row (None if it failed), and
# the error (one line) if it failed.
Finished = tuple[str, dict[str, Any] | None, str]
Progress = Callable[[int, int, str], None]

RUNS = "runs"
MANIFEST = "sweep.json"
DEFAULT_RETRIES = 2

SCHEMA = pa.schema(
    [
        *(pa.field(name, pa.string()) for name in COLUMNS[:7]),
        pa.field("attempts", pa.int64()),
        pa.field("vehicles", pa.int64()),
        *(
            pa.field(name, pa.float64())
            for name in COLUMNS[9:22]
            if name not in ("plans", "fallbacks")
        ),
        pa.field("plans", pa.int64()),
        pa.field("fallbacks", pa.int64()),
        pa.field("currency", pa.string()),
        pa.field("cpu_s", pa.float64()),
    ]
)
assert SCHEMA.names == list(COLUMNS), SCHEMA.names


class SweepError(Exception):
    """The sweep cannot start (an output directory in use, a backend that is missing)."""


class Backend(Protocol):
    """Where attempts run."""

    name: str
    slots: int  # attempts in flight at once

    def submit(self, spec: TaskInput) -> None:
        """Start one attempt of `spec.task`."""

    def finished(self, timeout: float) -> list[Finished]:
        """The attempts that ended, waiting up to `timeout` s for one."""

    def close(self) -> None:
        """Stop the workers."""


# -- local worker processes ---------------------------------------------------------------------


def _quiet_worker() -> None:
    """A worker process's set-up: the parent stops the workers itself (no SIGINT), and what the
    controller notices in a run (a pile's counters disagreeing...) is the run's business:
    thousands of runs' warnings would bury the progress bar."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.disable(logging.WARNING)


class LocalPool:
    """Worker processes on this machine (pebble's process pool), one attempt each at a time.

    Not a `ProcessPoolExecutor`: when one of its workers dies, every pending future fails with
    it and nothing says which task killed it. pebble fails exactly the attempt the dead worker
    was running (`ProcessExpired`) and starts a new worker."""

    name = "local"

    def __init__(self, workers: int | None = None, runner: Runner = run_task) -> None:
        """`workers` processes (default: one per CPU), spawned (the parent runs threads)."""
        self.slots = max(1, workers or os.cpu_count() or 1)
        self.runner = runner
        self._pool = ProcessPool(
            max_workers=self.slots,
            initializer=_quiet_worker,
            context=multiprocessing.get_context("spawn"),
        )
        self._futures: dict[Future[dict[str, Any]], str] = {}

    def submit(self, spec: TaskInput) -> None:
        """Run `spec` in a worker as soon as one is free."""
        self._futures[self._pool.schedule(self.runner, args=(spec,))] = spec.task.id

    def finished(self, timeout: float) -> list[Finished]:
        """Rows and errors of the attempts that ended; a dead worker's attempt is an error."""
        if not self._futures:
            return []
        ready, _ = wait(self._futures, timeout, return_when=FIRST_COMPLETED)
        done: list[Finished] = []
        for future in ready:
            task_id = self._futures.pop(future)
            try:
                done.append((task_id, future.result(), ""))
            except ProcessExpired as exc:
                done.append((task_id, None, _death(exc)))
            except Exception as exc:
                done.append((task_id, None, one_line(exc)))
        return done

    def close(self) -> None:
        """Stop every worker (those still running an attempt are killed)."""
        self._pool.stop()
        self._pool.join()
        self._futures.clear()


def _death(exc: ProcessExpired) -> str:
    code = exc.exitcode
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exit code {code}"
    return f"worker process {exc.pid} died ({how})"


# -- Ray ----------------------------------------------------------------------------------------


class RayBackend:
    """Attempts as Ray tasks (one CPU each) on the cluster at `address`, or on a Ray started
    here with `workers` CPUs when no address is given. Every node needs flexcharge installed.

    Ray's own retries are off: the sweep retries, as it does locally, and records the error."""

    name = "ray"

    def __init__(
        self, address: str | None = None, workers: int | None = None, runner: Runner = run_task
    ) -> None:
        try:
            import ray
        except ImportError:
            raise SweepError(
                "--backend ray: Ray is not installed (pip install 'flexcharge[ray]')"
            ) from None
        self._ray = ray
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "WARNING",
            "configure_logging": True,
        }
        if address:
            options["address"] = address
        elif workers:
            options["num_cpus"] = workers
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SweepError(
                f"--backend ray: cannot reach Ray at {address}: {one_line(exc)}"
            ) from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, min(workers, cpus) if workers else cpus)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(runner)
        self._refs: dict[Any, str] = {}

    def submit(self, spec: TaskInput) -> None:
        """Submit one attempt as a Ray task."""
        self._refs[self._remote.remote(spec)] = spec.task.id

    def finished(self, timeout: float) -> list[Finished]:
        """Rows and errors of the Ray tasks that ended."""
        if not self._refs:
            return []
        ray = self._ray
        refs = list(self._refs)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done: list[Finished] = []
        for ref in ready:
            task_id = self._refs.pop(ref)
            try:
                done.append((task_id, ray.get(ref), ""))
            except ray.exceptions.RayTaskError as exc:
                done.append((task_id, None, one_line(exc.cause or exc)))
            except ray.exceptions.RayError as exc:
                done.append((task_id, None, one_line(exc)))
        return done

    def close(self) -> None:
        """Cancel what still runs and disconnect."""
        for ref in self._refs:
            # Already ended, or its worker gone: nothing to cancel.
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._ray.shutdown()


def one_line(exc: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def make_backend(
    name: str, *, workers: int | None = None, address: str | None = None, runner: Runner = run_task
) -> Backend:
    """The backend called `name` ("local" or "ray")."""
    if name == "ray":
        return RayBackend(address, workers, runner)
    if address:
        raise SweepError("--address is for --backend ray")
    return LocalPool(workers, runner)


# -- the sweep ----------------------------------------------------------------------------------


@dataclass
class SweepRun:
    """How a sweep went: its rows (every task of the study) and its counts."""

    rows: list[dict[str, Any]]
    total: int
    resumed: int
    ran: int
    retried: int
    failed: int
    wall_s: float
    backend: str
    slots: int


def run_file(out: Path, task: Task) -> Path:
    """Where a task's row is kept."""
    return out / RUNS / f"{task.id}.json"


def read_row(path: Path) -> dict[str, Any] | None:
    """A run file's row, or None if it is missing or unreadable (the task is then run again)."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


def _write_row(path: Path, row: dict[str, Any]) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(row, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _manifest(study: Study) -> dict[str, Any]:
    return {
        "study": study.name,
        "file": str(study.path),
        "step_s": study.step_s,
        "plan_period_s": study.plan_period_s,
        "periods": [p.label for p in study.periods],
    }


def prepare(study: Study, out: Path, *, resume: bool) -> list[Task]:
    """Check `out` for this sweep and return the tasks still to run (those without a good row).

    Without `resume`, `out` must hold no runs yet; with it, they must be of the same study
    settings. Raises `SweepError` otherwise."""
    runs = out / RUNS
    manifest = out / MANIFEST
    existing = sorted(runs.glob("*.json")) if runs.is_dir() else []
    if existing and not resume:
        raise SweepError(
            f"{out} holds {len(existing)} runs of an earlier sweep: add --resume to go on "
            "with it, or give another --out"
        )
    if resume and manifest.is_file():
        earlier = read_row(manifest) or {}
        mine = _manifest(study)
        changed = [k for k in ("step_s", "plan_period_s") if earlier.get(k) != mine[k]]
        if changed:
            raise SweepError(
                f"--resume: {out} was swept with other settings ({', '.join(changed)}: "
                f"{[earlier.get(k) for k in changed]}); give another --out"
            )
    runs.mkdir(parents=True, exist_ok=True)
    _write_row(manifest, _manifest(study))
    todo = []
    for task in study.tasks():
        row = read_row(run_file(out, task))
        if row is None or row.get("status") != "ok":
            todo.append(task)
    return todo


def run_sweep(
    study: Study,
    out: Path,
    backend: Backend,
    *,
    resume: bool = False,
    retries: int = DEFAULT_RETRIES,
    progress: Progress | None = None,
) -> SweepRun:
    """Run the study's tasks not yet done in `out` on `backend`; every task's row, as kept.

    `progress(done, total, task id)` is called as each task ends (the resumed ones count as
    done from the start). The backend is closed at the end, or when interrupted."""
    started = time.perf_counter()
    tasks = study.tasks()
    todo = prepare(study, out, resume=resume)
    by_id = {task.id: task for task in todo}
    done = len(tasks) - len(todo)
    if progress is not None:
        progress(done, len(tasks), "")
    # The controlled runs (the longest) first, so that none is left alone at the end.
    queue = deque(sorted(todo, key=lambda task: task.policy == BASELINE))
    attempts: dict[str, int] = dict.fromkeys(by_id, 0)
    in_flight: set[str] = set()
    ran = retried = failed = 0
    try:
        while queue or in_flight:
            while queue and len(in_flight) < backend.slots:
                task = queue.popleft()
                attempts[task.id] += 1
                in_flight.add(task.id)
                backend.submit(study.task_input(task))
            for task_id, row, error in backend.finished(0.5):
                in_flight.discard(task_id)
                task = by_id[task_id]
                if row is None and attempts[task_id] <= retries:
                    retried += 1
                    queue.append(task)
                    continue
                if row is None:
                    failed += 1
                    row = failed_row(task, error, attempts[task_id])
                else:
                    row = {**row, "attempts": attempts[task_id]}
                _write_row(run_file(out, task), row)
                ran += 1
                done += 1
                if progress is not None:
                    progress(done, len(tasks), task_id)
    finally:
        backend.close()
    rows = gather(study, out)
    return SweepRun(
        rows,
        len(tasks),
        len(tasks) - len(todo),
        ran,
        retried,
        failed,
        time.perf_counter() - started,
        backend.name,
        backend.slots,
    )


def gather(study: Study, out: Path) -> list[dict[str, Any]]:
    """Every task's row from `out`, in the study's order, with `saved_vs_uncontrolled` (the
    uncontrolled run's cost minus this run's, under the same tariff); a task without a row is a
    failed row ("no result")."""
    rows = []
    for task in study.tasks():
        row = read_row(run_file(out, task))
        if row is None:
            row = failed_row(task, "no result (the sweep was stopped before it ran)", 0)
        rows.append({name: row.get(name) for name in COLUMNS})
        rows[-1]["currency"] = study.currency
    baseline = {
        (r["station"], r["variant"], r["period"], r["tariff"]): r["cost"]
        for r in rows
        if r["policy"] == BASELINE and r["status"] == "ok"
    }
    for row in rows:
        base = baseline.get((row["station"], row["variant"], row["period"], row["tariff"]))
        if row["status"] == "ok" and base is not None:
            row["saved_vs_uncontrolled"] = round(base - row["cost"], 4)
    return rows


def write_results(rows: Sequence[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """The rows as `results.parquet` and `results.csv` in `out` (the same table)."""
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    parquet, csv = out / "results.parquet", out / "results.csv"
    pq.write_table(table, parquet)
    pa_csv.write_csv(table, csv)
    return parquet, csv


def read_results_csv(path: Path) -> pa.Table:
    """`results.csv` read back with its columns' types."""
    options = pa_csv.ConvertOptions(
        column_types=SCHEMA, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    return pa_csv.read_csv(path, convert_options=options)
