"""Tariff what-if: one scenario under several tariffs (and policies), and what each tariff does.

A utility engineer asks what a tariff would do to a station before publishing it: the station's
bill, the cost per vehicle and per kWh, the peak, and how much charging the controller moves into
the cheapest band. `compare_tariffs` simulates the scenario under every tariff with every policy
asked for, plus `uncontrolled` as the baseline, and returns the runs; `figures` turns a run into
the numbers the report shows.

Work that does not depend on the tariff is done once: a policy that never looks at a price
(`uncontrolled`, `equal-share`, `edf`, `llf`) draws the same kW under any tariff, so it is
simulated under the first and billed under the others (`simulator.fast.repriced`). The rest run
in worker processes, the longest first.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from base.config import Station
from base.loading import ConfigError, ConfigProblem, Problems
from base.tariff import Tariff
from base.tarifffile import load_tariff
from control.decider import Policy
from simulator.fast import PRICE_BLIND, Scenario, SimResult, repriced, simulate
from simulator.faults import FaultScript, load_faults
from simulator.scenario import load_series, load_sessions

BASELINE = Policy.UNCONTROLLED.value
# A month of the reference station under three tariffs has to finish in about a minute on two
# cores. Most of the time goes into re-plans, most of them caused by arrivals, departures and
# deviations whatever the period, and the rest into the per-step loop: a 5-minute step (three
# samples per 15-minute billing window) and an hourly period take a month's MPC run from about
# 45 s of CPU (60 s / 900 s) to about 20 s. See README, "Tariff what-if", for what they change.
WHATIF_STEP_S = 300.0
WHATIF_PLAN_PERIOD_S = 3600.0

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class TariffCase:
    """A tariff under study, labelled by its file's name as the engineer gave it."""

    label: str
    path: Path
    tariff: Tariff


def load_cases(paths: Sequence[Path]) -> list[TariffCase]:
    """Load every tariff file; one `ConfigError` lists the problems of all of them.

    The tariffs must bill in one currency (their costs are compared) and be different files.
    """
    problems: list[ConfigProblem] = []
    cases: list[TariffCase] = []
    for path in paths:
        try:
            tariff = load_tariff(path)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        label = path.stem
        if any(case.label == label for case in cases):
            label = str(path)
        if any(case.path.resolve() == path.resolve() for case in cases):
            problems.append(ConfigProblem(path, "tariff", "", "given twice"))
            continue
        cases.append(TariffCase(label, path, tariff))
    if cases:
        first = cases[0]
        for case in cases[1:]:
            if case.tariff.currency != first.tariff.currency:
                problems.append(
                    ConfigProblem(
                        case.path,
                        "tariff",
                        "currency",
                        f"{case.tariff.currency} differs from {first.tariff.currency} in "
                        f"{first.path}: costs in different currencies cannot be compared",
                    )
                )
    if problems:
        raise ConfigError(problems)
    return cases


def load_scenario(
    station: Station,
    sessions: Path,
    tariffs: Sequence[Path] = (),
    *,
    background: Path | None = None,
    limit: Path | None = None,
    faults: Path | None = None,
    warmup_days: int = 0,
) -> tuple[Scenario, list[TariffCase]]:
    """The scenario a simulation or a what-if runs, and the tariff cases, from their files.

    The visits of `sessions` (at piles of `station`), the site's own load `background`, the
    utility's `limit` signal and the `faults` to inject, under the first of `tariffs` (the
    station's own if none is given), after `warmup_days` repeats of the first day. Every file
    is read, and one `ConfigError` lists the problems of all of them.
    """
    problems = Problems(sessions)
    cases = problems.gather(lambda: load_cases(tariffs)) if tariffs else []
    visits = problems.gather(lambda: load_sessions(sessions, station=station))
    background_kw = (
        problems.gather(lambda: load_series(background, allow_negative=True))
        if background is not None
        else None
    )
    limit_kw = (
        problems.gather(lambda: load_series(limit, kind="step")) if limit is not None else None
    )
    script = (
        problems.gather(lambda: load_faults(faults, station=station))
        if faults is not None
        else FaultScript()
    )
    problems.raise_if_any()
    assert cases is not None and visits is not None and script is not None
    scenario = Scenario.around(
        station,
        visits,
        tariff=cases[0].tariff if cases else None,
        name=sessions.stem,
        background=background_kw,
        limit=limit_kw,
    )
    return replace(scenario, faults=script.faults).with_warmup(warmup_days), cases


@dataclass(frozen=True)
class Job:
    """One simulation: `policy` under `case`'s tariff, billed under every tariff in `serves`."""

    policy: str
    case: TariffCase
    serves: tuple[TariffCase, ...]

    @property
    def billed_under(self) -> tuple[Tariff, ...]:
        """The other tariffs its run is billed under (its books are cut at their band changes)."""
        return tuple(case.tariff for case in self.serves if case is not self.case)

    @property
    def title(self) -> str:
        """How the progress bar names it."""
        if len(self.serves) > 1:
            return f"{self.policy} (any tariff)"
        return f"{self.policy} · {self.case.label}"


def plan_jobs(cases: Sequence[TariffCase], policies: Sequence[str]) -> list[Job]:
    """The simulations needed, the longest first.

    A policy that decides on prices runs once per tariff; a price-blind one runs once in all.
    `uncontrolled` is always among them: it is the baseline every saving is measured against.
    """
    wanted = [Policy(p) for p in dict.fromkeys([*policies, BASELINE])]
    # offline-optimal's one big solve, then the MPC's re-plans, then the cheap baselines.
    order = {Policy.OFFLINE: 0, Policy.MPC: 1}
    jobs: list[Job] = []
    for policy in sorted(wanted, key=lambda p: order.get(p, 2)):
        if policy in PRICE_BLIND:
            jobs.append(Job(policy.value, cases[0], tuple(cases)))
        else:
            jobs.extend(Job(policy.value, case, (case,)) for case in cases)
    return jobs


@dataclass
class Run:
    """One policy under one tariff."""

    case: TariffCase
    policy: str
    result: SimResult
    simulated_under: str


@dataclass
class WhatIf:
    """Every run of a what-if, and how it was made."""

    scenario: Scenario
    cases: list[TariffCase]
    policies: list[str]
    runs: list[Run]
    step_s: float
    plan_period_s: float
    workers: int
    simulations: int
    wall_s: float

    def run(self, label: str, policy: str) -> Run:
        """The run of `policy` under the tariff labelled `label`."""
        for run in self.runs:
            if run.case.label == label and run.policy == policy:
                return run
        raise KeyError((label, policy))

    def figures(self) -> list[dict[str, Any]]:
        """The report's numbers, one dict per run: tariffs in the order given, baseline first."""
        rows = []
        for case in self.cases:
            baseline = self.run(case.label, BASELINE)
            for policy in self.policies:
                rows.append(figures(self.run(case.label, policy), baseline))
        return rows


def cheapest_band(tariff: Tariff) -> str:
    """The band with the lowest import price (the valley, in a time-of-use tariff)."""
    return min(tariff.band_prices, key=tariff.band_prices.__getitem__)


def energy_in_band(result: SimResult, tariff: Tariff, band: str) -> float:
    """kWh the piles drew while `tariff`'s `band` was in force."""
    books = result.books
    drawn = np.maximum(books.piles_kwh, 0.0)
    return float(
        sum(kwh for kwh, now in zip(drawn, books.bands(tariff), strict=True) if now == band)
    )


def figures(run: Run, baseline: Run) -> dict[str, Any]:
    """What the report shows of `run`, with shifts and savings against `baseline` (same tariff).

    Costs are in the tariff's currency: the station's bill for the scenario (energy plus the
    demand charge on each month's highest 15-minute average, in proportion to the part of the
    month simulated) and the charging cost (that bill minus the bill without the vehicles).
    """
    m, b = run.result.metrics, baseline.result.metrics
    tariff = run.case.tariff
    band = cheapest_band(tariff)
    valley_kwh = energy_in_band(run.result, tariff, band)
    baseline_valley_kwh = energy_in_band(baseline.result, tariff, band)
    charged = float(np.maximum(run.result.books.piles_kwh, 0.0).sum())
    baseline_charged = float(np.maximum(baseline.result.books.piles_kwh, 0.0).sum())
    share = 100 * valley_kwh / charged if charged > 0 else 0.0
    baseline_share = 100 * baseline_valley_kwh / baseline_charged if baseline_charged > 0 else 0.0
    return {
        "tariff": run.case.label,
        "tariff_name": tariff.name,
        "tariff_file": str(run.case.path),
        "policy": run.policy,
        "simulated_under": run.simulated_under,
        "currency": tariff.currency,
        "station_bill": float(m["site_cost_yuan"]),
        "station_energy_cost": float(m["site_energy_cost_yuan"]),
        "station_demand_charge": float(m["site_demand_charge_yuan"]),
        "demand_charge_per_kw_month": tariff.demand_charge_per_kw_month,
        "charging_cost": float(m["cost_yuan"]),
        "cost_per_vehicle": float(m["cost_per_vehicle_yuan"]),
        "cost_per_kwh": float(m["cost_per_kwh_yuan"]),
        "saved_vs_uncontrolled": round(float(b["cost_yuan"]) - float(m["cost_yuan"]), 2),
        "peak_kw": float(m["peak_kw"]),
        "peak_15min_kw": float(m["peak_15min_kw"]),
        "limit_kw": float(m["limit_kw"]),
        "cheapest_band": band,
        "cheapest_price": tariff.band_prices[band],
        "charged_kwh": round(charged, 1),
        "cheapest_band_kwh": round(valley_kwh, 1),
        "cheapest_band_share_pct": round(share, 1),
        "shifted_into_cheapest_kwh": round(valley_kwh - baseline_valley_kwh, 1),
        "shifted_into_cheapest_pp": round(share - baseline_share, 1),
        "vehicles": int(m["vehicles"]),
        "energy_delivered_kwh": float(m["energy_delivered_kwh"]),
        "delivered_pct": float(m["delivered_pct"]),
        "over_limit_kwh": float(m["over_limit_kwh"]),
        "step_s": float(m["step_s"]),
    }


_progress_queue: Any = None


def _start_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _simulate_job(
    scenario: Scenario,
    policy: str,
    title: str,
    step_s: float,
    plan_period_s: float,
    also_billed_under: tuple[Tariff, ...],
) -> SimResult:
    channel = _progress_queue

    def report(done: float) -> None:
        if channel is not None:
            channel.put((title, done))

    return simulate(
        scenario,
        policy,
        step_s=step_s,
        plan_period_s=plan_period_s,
        progress=report,
        also_billed_under=also_billed_under,
    )


def compare_tariffs(
    scenario: Scenario,
    cases: Sequence[TariffCase],
    policies: Sequence[str] = ("mpc",),
    *,
    step_s: float = WHATIF_STEP_S,
    plan_period_s: float = WHATIF_PLAN_PERIOD_S,
    workers: int | None = None,
    progress: Progress | None = None,
) -> WhatIf:
    """Simulate `scenario` under every tariff with every policy (and the uncontrolled baseline).

    Simulations run in `workers` processes (default: one per CPU, at most one per simulation;
    1 runs them here, in order). `progress(job title, fraction done)` is called as they go.
    """
    if not cases:
        raise ValueError("no tariff to compare")
    started = time.perf_counter()
    jobs = plan_jobs(cases, policies)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    scenarios = {job.title: replace(scenario, tariff=job.case.tariff) for job in jobs}
    results: dict[str, SimResult] = {}
    if workers == 1:
        for job in jobs:

            def report(done: float, title: str = job.title) -> None:
                if progress is not None:
                    progress(title, done)

            results[job.title] = simulate(
                scenarios[job.title],
                job.policy,
                step_s=step_s,
                plan_period_s=plan_period_s,
                progress=report,
                also_billed_under=job.billed_under,
            )
    else:
        results = _in_processes(jobs, scenarios, step_s, plan_period_s, workers, progress)
    runs = []
    for job in jobs:
        result = results[job.title]
        for case in job.serves:
            billed = (
                result
                if case is job.case
                else repriced(result, replace(scenario, tariff=case.tariff))
            )
            runs.append(Run(case, job.policy, billed, job.case.label))
    ordered = [p.value for p in (Policy(p) for p in dict.fromkeys([BASELINE, *policies]))]
    return WhatIf(
        scenario,
        list(cases),
        ordered,
        runs,
        step_s,
        plan_period_s,
        workers,
        len(jobs),
        time.perf_counter() - started,
    )


def _in_processes(
    jobs: Sequence[Job],
    scenarios: dict[str, Scenario],
    step_s: float,
    plan_period_s: float,
    workers: int,
    progress: Progress | None,
) -> dict[str, SimResult]:
    # Spawned, not forked: the parent may run threads (rich's progress refresh) that a fork
    # would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    results: dict[str, SimResult] = {}
    try:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(channel,),
        ) as pool:
            pending: dict[Future[SimResult], str] = {
                pool.submit(
                    _simulate_job,
                    scenarios[job.title],
                    job.policy,
                    job.title,
                    step_s,
                    plan_period_s,
                    job.billed_under,
                ): job.title
                for job in jobs
            }
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(channel, progress, results)
                for future in done:
                    title = pending.pop(future)
                    results[title] = future.result()
                    if progress is not None:
                        progress(title, 1.0)
    finally:
        channel.close()
        channel.join_thread()
    return results


def _drain(channel: Any, progress: Progress | None, finished: dict[str, SimResult]) -> None:
    while True:
        try:
            title, done = channel.get_nowait()
        except queue.Empty:
            return
        if progress is not None and title not in finished:
            progress(title, done)
