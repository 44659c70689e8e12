"""`make bench`: how fast the optimiser is, and how good the policies are.

Solver: stations of 10, 100 and 1000 piles, every pile with a vehicle, 96 quarter-hour slots.
The fast simulation runs the daemon's MPC on each for a while, and the benchmark takes the solves
it made: the first (cold: the structure is new) and the following ones (the MPC re-solving a
minute later, warm). Each LP is also given to plain `scipy.optimize.linprog(method="highs")` in
the same run; the table shows both times (ours including building the LP from the problem), their
ratio, and the largest relative difference of the objectives; and the cold solve against a
minimal LP with the same charging variables (no taper, ramp or groups), by linprog.

Real sessions (tests/realdata.py): the development days of ACN-Data under every flexcharge
policy and under ACN-Sim's LLF, EDF and ASA (in their own venv; ASA needs ADACHARGE_SRC).

Quality: the shipped scenarios, one warm-up day each, under every policy, against the true
offline bound: cost, energy delivered, limit and peak.

Month: a month of the reference station under mpc at the defaults, its CPU against llf's; for
each, the simulated days a CPU minute gives and the share of the CPU that went through the
drivers (sampled on CPU time), so that the fast simulation's cost can be compared run to run.

Faults: the fault matrix of tests/test_faults.py, each fault's worst overshoot of the limit (kW
and seconds), how long until the controller logged the fault's end, and until the site charged at
the limit again.

What-if: a month of the reference station (configs/scenarios/bozhou-month.csv) under the three
shipped tariffs, as `flexcharge tariff compare` runs it: wall and CPU time, and the load average.

Telemetry on disk: the reference station's local store over days of its 1 s cycles, through the
real writer, at the default retention: the bytes a day adds raw and once rolled up to minutes, the
size projected at the 30-day retention against the size cap, and the cap enforced.

Loop: the daemon's cycle at 200 DC piles on loopback against a bare pymodbus client doing one
read and one write per pile (tests/bench_loop.py), and the time from a limit change to every pile
written.

OCPP (tests/bench_ocpp.py): the fault matrix's OCPP rows on the ocpp-depot over loopback (rejected
purpose, applied late, never applied, websocket drop, controller stopped); a limit step to every
one of 200 simulated OCPP charge points' new profile answered; and every charge point at its safe
power within the profile validity after the controller stops or its link drops.

API flood (tests/flood.py): the daemon controls the simulated reference station in real time on
loopback while its API is flooded with 10 MB bodies without a token, 200 slow clients, and 20,000
GETs at 20 concurrent: the control cycle's p50/p99/max and missed cycles, idle and under each.

Soak: 30 days of the reference station's seeded random fleet with random faults (a dozen a day,
of every kind), in fast simulation: over-limit energy, accounting, the cycle time's spread, the
simulated days per wall and CPU minute (and the CPU's share through the drivers), and the
process's memory at the end against after the first day.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import signal
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.optimize import linprog

import drivers
from base.config import CONFIG_ROOT, Station, load_station
from base.events import Source
from control.step import Cycle
from scheduler import solver as solver_module
from scheduler.lp import LpModel, build_lp, linprog_arguments
from scheduler.plan import Plan
from scheduler.problem import Problem
from scheduler.solver import Solver
from simulator.fast import Scenario, simulate
from simulator.faults import FaultKind, random_faults
from simulator.fleet import Visit, random_days
from simulator.scenario import load_sessions
from simulator.whatif import compare_tariffs, load_cases
from simulator.whatif_report import comparison_table
from tests.bench_loop import cycle_bench
from tests.bench_ocpp import ocpp_bench
from tests.realdata import real_data_bench
from tests.test_faults import F0, MATRIX, back_to_full, busy_night, over_limit

POLICIES = ("uncontrolled", "equal-share", "edf", "llf", "mpc", "offline-optimal")
SCENARIOS = (
    ("bozhou-depot", "bozhou-day"),
    ("bozhou-depot", "bozhou-week"),
    ("workplace-ac", "workplace-day"),
    ("workplace-ac", "workplace-week"),
)


@dataclass
class Solve:
    """One solve the MPC made, with its LP."""

    problem: Problem
    plan: Plan
    model: LpModel
    seconds: float


def synthetic_station(piles: int) -> Station:
    """A workplace-like AC site of `piles` 7.4-22 kW points, the limit about 6 kW per point."""
    base = load_station(CONFIG_ROOT / "stations" / "workplace-ac.toml")
    template = base.piles[-1]
    configs = tuple(
        template.model_copy(
            update={"id": f"X{i:04d}", "port": 20000 + i, "max_kw": (7.4, 11.0, 22.0)[i % 3]}
        )
        for i in range(piles)
    )
    rating = (400.0 + 6.5 * piles) / (0.95 * 0.90)
    return replace(
        base,
        piles=configs,
        transformer=base.transformer.model_copy(update={"rating_kva": rating}),
        groups=(),
        phase_limits=None,
        control=base.control.model_copy(update={"reserve_kw": 0.02 * rating}),
        scheduler=base.scheduler.model_copy(update={"ramp_kw_per_min": 3.0 * piles}),
    )


def synthetic_visits(station: Station, start: float, seed: int) -> list[Visit]:
    """Every pile with a vehicle from the start, leaving within 2-24 h, wanting 5-40 kWh."""
    rng = np.random.default_rng(seed)
    return [
        Visit(
            vehicle_id=f"car-{i:04d}",
            arrival=start,
            departure=start + float(rng.uniform(2, 24)) * 3600,
            energy_kwh=round(float(rng.uniform(5, 40)), 1),
            max_kw=pile.max_kw,
            pile=pile.id,
        )
        for i, pile in enumerate(station.piles)
    ]


def capture_solves(piles: int, minutes: int) -> list[Solve]:
    """Run the MPC on a synthetic station and keep every solve it made."""
    station = synthetic_station(piles)
    start = 1794700800.0 + 9 * 3600  # a Tuesday, 09:00 in Shanghai
    visits = synthetic_visits(station, start, seed=piles)
    scenario = Scenario(
        station, station.tariff, tuple(visits), start, start + minutes * 60, f"{piles} piles"
    )
    solves: list[Solve] = []
    original = Solver.solve

    def recording(self: Solver, problem: Problem, *, time_limit_s: float | None = None) -> Plan:
        began = time.perf_counter()
        plan = original(self, problem, time_limit_s=300.0)
        seconds = time.perf_counter() - began
        assert self.last_model is not None
        solves.append(Solve(problem, plan, self.last_model, seconds))
        return plan

    Solver.solve = recording  # type: ignore[method-assign]
    try:
        simulate(scenario, "mpc", step_s=60.0, plan_period_s=60.0)
    finally:
        Solver.solve = original  # type: ignore[method-assign]
    return solves


def baseline(model: LpModel) -> tuple[float, float]:
    """Seconds and objective of plain linprog(method="highs") on the LP."""
    began = time.perf_counter()
    result = linprog(method="highs", **linprog_arguments(model))  # type: ignore[arg-type]
    seconds = time.perf_counter() - began
    if result.status != 0:
        raise RuntimeError(f"linprog: {result.message}")
    return seconds, float(result.fun)


def minimal(problem: Problem) -> Problem:
    """The same charging variables with nothing but the vehicles' needs and the site limit: no
    taper, no ramp, no groups (the smallest LP a plan could be)."""
    vehicles = tuple(replace(v, taper_soc=None) for v in problem.vehicles)
    return replace(problem, vehicles=vehicles, ramp_kw_per_min=None, groups=())


def solver_bench(console: Console, sizes: tuple[int, ...]) -> bool:
    """The solver table; True if, at the largest size, the cold solve is under the plan deadline
    and under 3x a minimal LP by linprog, and the MPC's warm re-solves at least 30x linprog."""
    table = Table(
        title="solver: ours (HiGHS via highspy, kept warm) against plain linprog(method='highs') on the same LP",
        title_justify="left",
    )
    for column in (
        "vehicles x slots",
        "LP rows x cols",
        "solve",
        "ours ms",
        "linprog ms",
        "speed-up",
        "objective rel. diff",
        "simplex iterations",
    ):
        table.add_column(column, justify="right")
    checks: dict[str, tuple[bool, str]] = {}
    for piles in sizes:
        solves = capture_solves(piles, minutes=12)
        first, rest = solves[0], [s for s in solves[1:] if s.plan.warm][:8]
        # Cold: a fresh solver on the first problem, to take the simulation's warm-up out.
        began = time.perf_counter()
        cold_plan = solver_module.solve(first.problem, time_limit_s=300.0)
        cold_s = time.perf_counter() - began
        base_s, base_obj = baseline(first.model)
        small = build_lp(minimal(first.problem))
        small_s, _ = baseline(small)
        rows, cols = first.model.shape
        slots = first.problem.slots
        assert cold_plan.objective is not None
        table.add_row(
            f"{piles} x {slots}",
            f"{rows:,} x {cols:,}",
            "cold",
            f"{cold_s * 1000:,.1f}",
            f"{base_s * 1000:,.1f}",
            f"{base_s / cold_s:.1f}x",
            f"{abs(cold_plan.objective - base_obj) / abs(base_obj):.1e}",
            f"{cold_plan.iterations:,}",
        )
        rows_small, cols_small = small.shape
        table.add_row(
            "",
            f"{rows_small:,} x {cols_small:,}",
            "minimal LP, same charging variables",
            "",
            f"{small_s * 1000:,.1f}",
            f"ours {cold_s / small_s:.1f}x it",
            "",
            "",
        )
        ours = []
        theirs = []
        worst = 0.0
        iterations = []
        for solve in rest:
            base_s, base_obj = baseline(solve.model)
            assert solve.plan.objective is not None
            ours.append(solve.seconds)
            theirs.append(base_s)
            iterations.append(solve.plan.iterations)
            worst = max(worst, abs(solve.plan.objective - base_obj) / abs(base_obj))
        ratio = 0.0
        if ours:
            ratio = statistics.median(theirs) / statistics.median(ours)
            table.add_row(
                "",
                "",
                f"MPC re-solve (median of {len(ours)})",
                f"{statistics.median(ours) * 1000:,.1f}",
                f"{statistics.median(theirs) * 1000:,.1f}",
                f"{ratio:.1f}x",
                f"{worst:.1e}",
                f"{statistics.median(iterations):,.0f}",
            )
        if piles == max(sizes):
            deadline = synthetic_station(piles).scheduler.solve_deadline_s
            checks[f"cold {piles} x {slots} under the plan deadline ({deadline:g} s)"] = (
                cold_s < deadline,
                f"{cold_s:.2f} s",
            )
            checks[f"cold {piles} x {slots} under 3x a minimal LP by linprog"] = (
                cold_s < 3 * small_s,
                f"{cold_s:.2f} s / {small_s:.2f} s = {cold_s / small_s:.1f}x",
            )
            checks[f"warm re-solve at {piles} at least 30x linprog on the same LP"] = (
                ratio >= 30 and worst <= 1e-6,
                f"{ratio:.1f}x, objectives within {worst:.1e}",
            )
    console.print(table)
    return _report(console, checks)


def _report(console: Console, checks: dict[str, tuple[bool, str]]) -> bool:
    """Print each target as PASS/FAIL with its figures; True if all pass."""
    for name, (ok, figures) in checks.items():
        console.print(
            f"  {'PASS' if ok else 'FAIL'}  {name}: {figures}",
            style="green" if ok else "bold red",
            highlight=False,
        )
    return all(ok for ok, _ in checks.values())


def quality_bench(console: Console, scenarios: tuple[tuple[str, str], ...]) -> bool:
    """The policy table for each shipped scenario against the true offline bound; True if every
    target is met (mpc over the limit 0 kWh, its peak never above the limit)."""
    checks: dict[str, tuple[bool, str]] = {}
    for station_name, scenario_name in scenarios:
        station = load_station(CONFIG_ROOT / "stations" / f"{station_name}.toml")
        visits = load_sessions(CONFIG_ROOT / "scenarios" / f"{scenario_name}.csv")
        scenario = Scenario.around(station, visits, name=scenario_name).with_warmup(1)
        results = {policy: simulate(scenario, policy).metrics for policy in POLICIES}
        best = results["offline-optimal"]
        table = Table(
            title=f"{scenario_name} ({len(visits)} vehicles, one warm-up day; offline-optimal is "
            "the true bound: perfect knowledge, one LP at the step's resolution)",
            title_justify="left",
        )
        for column in (
            "policy",
            "cost",
            "vs bound",
            "delivered",
            "vs bound",
            "over limit kWh",
            "peak / limit kW",
            "solve ms p50/p95",
            "wall s",
        ):
            table.add_column(column, justify="left" if column == "policy" else "right")
        for policy, m in results.items():
            cost_gap = 100 * (float(m["cost_yuan"]) / float(best["cost_yuan"]) - 1)
            energy_gap = float(m["delivered_pct"]) - float(best["delivered_pct"])
            table.add_row(
                policy,
                f"{float(m['cost_yuan']):,.0f}",
                f"{cost_gap:+.1f}%",
                f"{float(m['delivered_pct']):.2f}%",
                f"{energy_gap:+.2f} pp",
                f"{float(m['over_limit_kwh']):.2f}",
                f"{float(m['peak_kw']):,.0f} / {float(m['limit_kw']):,.0f}",
                f"{float(m['solve_ms_p50']):.1f}/{float(m['solve_ms_p95']):.1f}",
                f"{float(m['wall_s']):.1f}",
            )
        console.print(table)
        mpc = results["mpc"]
        controlled = [p for p in POLICIES if p not in ("uncontrolled", "offline-optimal")]
        worst = max(float(results[p]["over_limit_kwh"]) for p in controlled)
        # The depot's own load wanders (noise_kw) and a one-minute step cannot follow it: where
        # it rises past the controller's reserve within a step, the site goes over for the
        # seconds the piles take to come down, which the daemon's one-second loop would not.
        checks[f"{scenario_name}: at most 0.05 kWh over the limit for every controlled policy"] = (
            worst <= 0.05,
            f"worst {worst:.3f} kWh",
        )
        beaten = [
            p
            for p in controlled
            if float(results[p]["energy_delivered_kwh"])
            > float(best["energy_delivered_kwh"]) * (1 + 1e-6) + 1e-6
        ]
        checks[f"{scenario_name}: no controlled policy delivers more than the bound"] = (
            not beaten,
            ", ".join(beaten) or "none",
        )
        console.print(
            f"  mpc against the bound: cost {100 * (float(mpc['cost_yuan']) / float(best['cost_yuan']) - 1):+.1f} %, "
            f"energy {float(mpc['delivered_pct']) - float(best['delivered_pct']):+.2f} points",
            highlight=False,
        )
    return _report(console, checks)


class CpuUnder:
    """The share of this process's CPU time spent under code from one folder, sampled on CPU
    time (SIGPROF every `interval_s`): each sample weighs the CPU time since the one before and
    counts as under the folder if any frame of the interrupted stack runs its code. Cheap (a
    look at the stack every few milliseconds), so it runs inside the measured work."""

    def __init__(self, folder: Path, interval_s: float = 0.005) -> None:
        self.folder = str(folder) + os.sep
        self.interval_s = interval_s
        self.total_s = 0.0
        self.under_s = 0.0
        self._last = 0.0

    @property
    def share(self) -> float:
        """The share so far (0 before any sample)."""
        return self.under_s / self.total_s if self.total_s else 0.0

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        now = time.process_time()
        spent, self._last = now - self._last, now
        self.total_s += spent
        while frame is not None:
            if frame.f_code.co_filename.startswith(self.folder):
                self.under_s += spent
                return
            frame = frame.f_back

    def __enter__(self) -> CpuUnder:
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        self._last = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
        signal.signal(signal.SIGPROF, self._previous)


DRIVERS = Path(drivers.__file__).parent


def month_bench(console: Console) -> bool:
    """A month of the reference station under mpc at the simulation's defaults (60 s steps, a
    plan at least every 300 s), against llf on the same month in the same run; True if mpc
    takes under 45 s of CPU. For each, the share of its CPU that went through the drivers (the
    calls into `drivers/`, with the in-process links, register banks and device models under
    them), and the simulated days per CPU minute."""
    station = load_station(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
    visits = load_sessions(CONFIG_ROOT / "scenarios" / "bozhou-month.csv")
    scenario = Scenario.around(station, visits, name="bozhou-month")
    days = (scenario.end - scenario.start) / 86400
    seconds = {}
    for policy in ("llf", "mpc"):
        began = time.process_time()
        with CpuUnder(DRIVERS) as drivers_path:
            m = simulate(scenario, policy, step_s=60.0, plan_period_s=300.0).metrics
        seconds[policy] = time.process_time() - began
        console.print(
            f"  {policy}: {seconds[policy]:.1f} s CPU for {len(visits):,} trucks, "
            f"{float(m['delivered_pct']):.2f} % delivered, cost {float(m['cost_yuan']):,.0f} CNY, "
            f"{int(m['plans']):,} plans (solve p50 {float(m['solve_ms_p50']):.1f} ms)\n"
            f"    {days / seconds[policy] * 60:.1f} simulated days per CPU minute, "
            f"{100 * drivers_path.share:.0f} % of the CPU through the drivers",
            highlight=False,
        )
    return _report(
        console,
        {
            "a month of the reference station under mpc in under 45 s of CPU": (
                seconds["mpc"] < 45.0,
                f"{seconds['mpc']:.1f} s, {seconds['mpc'] / seconds['llf']:.1f}x llf's "
                f"{seconds['llf']:.1f} s",
            )
        },
    )


def fault_bench(console: Console) -> bool:
    """Each fault of the matrix: worst overshoot, and how long recovery took; True if every
    overshoot stayed within the reaction time stated for it."""
    station = load_station(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
    table = Table(
        title="fault matrix (bozhou-depot, 12 trucks wanting more than fits, 1 s cycles)",
        title_justify="left",
    )
    for column in (
        "fault",
        "worst over kW",
        "s over",
        "allowed s",
        "detected after s",
        "end logged after s",
        "at the limit again after s",
        "accounting max diff kWh",
    ):
        table.add_column(column, justify="left" if column == "fault" else "right")
    met = True
    for name, case in MATRIX.items():
        scenario = busy_night(station, case.faults)
        result = simulate(scenario, "mpc", step_s=1.0)
        worst, over_s = over_limit(result)
        start = scenario.start
        fault_start = min(f.start for f in scenario.faults) - start
        fault_end = max(f.end for f in scenario.faults) - start
        events = [
            (e.time - start, e.text) for e in result.events if e.source is not Source.SIMULATOR
        ]
        detected = [t for t, e in events if any(text in e for text in case.starts)]
        ended = [t for t, e in events if any(text in e for text in case.ends)]
        logged_end = ended[-1] - fault_end if ended and math.isfinite(fault_end) else None
        back = back_to_full(result, start + ended[-1]) if ended else None
        diffs = [
            abs(result.controller_delivered_kwh.get(v, math.inf) - kwh)
            for v, kwh in result.delivered_kwh.items()
        ]
        met = met and over_s <= case.reaction_s
        table.add_row(
            name,
            f"{worst:,.0f}",
            f"{over_s:.0f}",
            f"{case.reaction_s:.0f}",
            "-" if not detected else f"{detected[0] - fault_start:.0f}",
            "-" if logged_end is None else f"{logged_end:.0f}",
            "-" if back is None else f"{back:.0f}",
            f"{max(diffs):.2f}",
        )
    console.print(table)
    console.print(
        f"  faults start {F0:.0f} s into the night; 'detected' counts from the start of the "
        "fault, 'end logged' from its end, 'at the limit again' from the end being logged",
        highlight=False,
    )
    return met


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak_bench(console: Console, days: int, step_s: float) -> bool:
    """`days` of the reference station with random faults; True if the limit held and the
    accounting balanced."""
    station = load_station(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
    assert station.simulator is not None
    zone = ZoneInfo(station.info.timezone)
    start = datetime(2026, 11, 1, tzinfo=zone).timestamp()
    end = start + days * 86400
    visits = tuple(
        v
        for v in random_days(station.simulator, start, end, zone)
        if v.arrival >= start and v.departure <= end
    )
    faults = random_faults(station, start, end, per_day=12, seed=7).faults
    scenario = Scenario(station, station.tariff, visits, start, end, "soak", faults=faults)
    memory: list[tuple[float, float]] = []

    def sample(done: float) -> None:
        memory.append((done, _rss_mb()))

    started, cpu_started = time.perf_counter(), time.process_time()
    with CpuUnder(DRIVERS) as drivers_path:
        result = simulate(scenario, "mpc", step_s=step_s, plan_period_s=900.0, progress=sample)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    m = result.metrics
    worst, over_steps = over_limit(result)
    steps = [
        float(t)
        for t, over in zip(result.times, result.site_kw - result.limit_kw, strict=True)
        if over > 1e-6
    ]
    # Over the limit is allowed only as the reaction to the utility lowering it: the step in
    # which it fell (the controller learns of it at the step's end), and the next.
    reacting = [
        t
        for t in steps
        if any(
            f.kind is FaultKind.LIMIT_STEP and f.start <= t <= f.start + max(10.0, 2 * step_s)
            for f in faults
        )
    ]
    # A vehicle that never reached a pile (or left while its pile was silent throughout) is
    # one the controller never saw: it must have been delivered nothing.
    diffs = [
        abs(result.controller_delivered_kwh.get(v, 0.0) - kwh)
        for v, kwh in result.delivered_kwh.items()
    ]
    # Every session is counted on the pile's lifetime counter (its account), read in the map's
    # steps as the daemon reads it; one whose end the controller missed (its pile silent when
    # the vehicle left) gives the new session what the pile says it has delivered: to one step
    # of that counter and one of the session counter.
    pile_map = station.map_for(station.piles[0].device)
    counted_to = pile_map["energy_import"].scale + pile_map["session_energy"].scale
    after_day = next(mb for done, mb in memory if done >= 1 / days)
    final = memory[-1][1]
    p50, p99 = float(m["cycle_ms_p50"]), float(m["cycle_ms_p99"])
    table = Table(
        title=f"soak: {days} days, {len(visits)} vehicles, {len(faults)} random faults, "
        f"{step_s:.0f} s steps",
        title_justify="left",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("simulated days per wall minute", f"{days / wall * 60:.1f}"),
        (
            "simulated days per CPU minute (CPU through the drivers)",
            f"{days / cpu * 60:.1f} ({100 * drivers_path.share:.0f} %)",
        ),
        ("over limit", f"{float(m['over_limit_kwh']):.3f} kWh in {over_steps:.0f} steps"),
        ("... of which reacting to a limit step", f"{len(reacting)} steps"),
        ("worst overshoot", f"{worst:,.0f} kW"),
        ("energy delivered", f"{float(m['delivered_pct']):.2f}% of requested"),
        (
            "accounting: largest controller vs plant gap",
            f"{max(diffs):.3f} kWh (counters' step {counted_to:.2f})",
        ),
        (
            "cycle time p50 / p99 / max",
            f"{p50:.2f} / {p99:.2f} / {float(m['cycle_ms_max']):.0f} ms",
        ),
        ("cycle p99 / p50", f"{p99 / p50:.1f}x"),
        ("cycle p99 / daemon period", f"{p99 / (station.control.period_s * 1000):.3f}"),
        ("plans (fallbacks)", f"{m['plans']} ({m['fallbacks']})"),
        ("memory after day 1 / at the end", f"{after_day:.0f} / {final:.0f} MB"),
        ("memory growth over the soak", f"{final / after_day:.2f}x"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return len(steps) == len(reacting) and max(diffs) <= counted_to + 1e-9


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (the what-if's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def whatif_bench(console: Console, workers: int | None) -> bool:
    """A month of the reference station under the three shipped tariffs, as `tariff compare`
    runs it; True if it took under a minute of wall time."""
    station = load_station(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
    visits = load_sessions(CONFIG_ROOT / "scenarios" / "bozhou-month.csv")
    cases = load_cases(
        [
            CONFIG_ROOT / "tariffs" / name
            for name in ("guizhou-tou.toml", "guizhou-tou-wide.toml", "guizhou-flat-demand.toml")
        ]
    )
    scenario = Scenario.around(station, visits, tariff=cases[0].tariff, name="bozhou-month")
    load_before = os.getloadavg()[0]
    started, cpu = time.perf_counter(), _cpu_s()
    whatif = compare_tariffs(scenario, cases, ["mpc"], workers=workers)
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    console.print(comparison_table(whatif))
    arrivals = (max(v.arrival for v in visits) - scenario.start) / 86400
    table = Table(
        title=f"what-if: {len(visits)} trucks arriving over {math.ceil(arrivals)} days "
        f"(simulated to the last departure: {(scenario.end - scenario.start) / 86400:.0f} days) "
        f"x {len(cases)} tariffs",
        title_justify="left",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    for row in (
        ("simulations (mpc per tariff, uncontrolled once)", str(whatif.simulations)),
        ("worker processes", str(whatif.workers)),
        ("step / plan period", f"{whatif.step_s:g} s / {whatif.plan_period_s:g} s"),
        ("wall time", f"{wall:.1f} s"),
        ("CPU time, all processes", f"{cpu:.1f} s"),
        (
            "CPUs / load average before / after",
            f"{os.cpu_count()} / {load_before:.2f} / {os.getloadavg()[0]:.2f}",
        ),
    ):
        table.add_row(*row)
    console.print(table)
    return wall < 60.0


def sweep_bench(console: Console, workers: int | None, days: int) -> bool:
    """The example study (`days` days) on the local pool and on Ray started here, with as many
    workers each: runs per CPU-minute (runs / (workers x wall minutes)) and Ray's overhead per
    task against the local pool's. True if the two backends' rows are equal (but CPU s)."""
    import tempfile

    from simulator.study import load_study
    from simulator.sweep import LocalPool, RayBackend, SweepError, run_sweep

    study = load_study(CONFIG_ROOT.parent / "configs" / "studies" / "example.toml").with_days(days)
    slots = workers or os.cpu_count() or 1
    figures: dict[str, tuple[int, float, float]] = {}
    rows = {}
    for name in ("local", "ray"):
        with tempfile.TemporaryDirectory() as out:
            try:
                backend = LocalPool(slots) if name == "local" else RayBackend(None, slots)
            except SweepError as exc:
                console.print(f"sweep: {exc}")
                return False
            sweep = run_sweep(study, Path(out), backend)
        cpu = sum(r["cpu_s"] or 0.0 for r in sweep.rows)
        figures[name] = (sweep.ran, sweep.wall_s, cpu)
        rows[name] = [{k: v for k, v in r.items() if k != "cpu_s"} for r in sweep.rows]
    table = Table(
        title=f"sweep: {study.name}, {len(study.sites)} station variants x {days} day(s) x "
        f"{len(study.cases)} tariffs x {len(study.policies)} policies, {slots} workers",
        title_justify="left",
    )
    for column in (
        "backend",
        "runs",
        "wall s",
        "runs per CPU-minute",
        "task CPU s (mean)",
        "overhead per task, s",
    ):
        table.add_column(column, justify="right")
    per_run = {}
    for name, (runs, wall, cpu) in figures.items():
        per_run[name] = slots * wall / runs
        table.add_row(
            name,
            str(runs),
            f"{wall:.1f}",
            f"{runs / (slots * wall / 60):.1f}",
            f"{cpu / runs:.2f}",
            f"{per_run[name] - cpu / runs:.2f}",
        )
    console.print(table)
    ratio = per_run["ray"] / per_run["local"]
    console.print(
        f"sweep: Ray takes {ratio:.2f}x the local pool's CPU-seconds per task "
        f"({per_run['ray']:.2f} s against {per_run['local']:.2f} s, workers x wall / runs); "
        f"rows equal on both: {rows['local'] == rows['ray']}",
        highlight=False,
    )
    return rows["local"] == rows["ray"]


def telemetry_bench(console: Console, cycles: int = 3000) -> bool:
    """Telemetry through a VictoriaMetrics restart: the writer is fed the points of `cycles`
    control cycles of a 12-pile station (a third of them while the server is stopped), then
    every point is looked for on the server. Reports the buffered and replayed counts and rates.
    """
    import tempfile

    from controller.telemetry.buffer import DiskBuffer
    from controller.telemetry.points import Point
    from controller.telemetry.sinks import InfluxSink
    from controller.telemetry.writer import TelemetryWriter
    from tests.conftest import free_ports, system_program
    from tests.victoria import BINARY, VictoriaMetrics, poll_until

    binary = system_program(BINARY)
    if binary is None:
        console.print(f"telemetry: skipped ({BINARY} is not installed: `make system-deps`)")
        return True
    start = float(int(time.time())) - cycles

    def cycle(k: int) -> list[Point]:
        when = start + k
        site = Point.of("site", when, {"station": "bench"}, {"grid_kw": 2000.0 + k, "n": k})
        piles = [
            Point.of("pile", when, {"station": "bench", "pile": f"P{p:02d}"}, {"power_kw": k + p})
            for p in range(12)
        ]
        return [site, *piles]

    with tempfile.TemporaryDirectory() as tmp:
        server = VictoriaMetrics(binary, Path(tmp) / "data", free_ports(1)[0], Path(tmp) / "log")
        server.start()
        writer = TelemetryWriter(
            InfluxSink(server.url, org="bench", bucket="bench", token=None, timeout_s=5),
            DiskBuffer(Path(tmp) / "buffer.sqlite", 100_000_000),
            station="bench",
            batch_size=500,
            flush_interval_s=0.1,
            retry_min_s=0.1,
            retry_max_s=0.5,
        )
        writer.start()
        try:
            up = time.perf_counter()
            third = cycles // 3
            for k in range(third):
                writer.put(cycle(k))
            poll_until(lambda: writer.counts.written == 13 * third, 60, "the first third")
            rate = 13 * third / (time.perf_counter() - up)
            server.stop()
            for k in range(third, 2 * third):
                writer.put(cycle(k))
            poll_until(lambda: writer.counts.buffered == 13 * third, 60, "the buffered third")
            server.start()
            back = time.perf_counter()
            poll_until(lambda: writer.counts.held == 0, 60, "the replay")
            replay_rate = writer.counts.replayed / (time.perf_counter() - back)
            for k in range(2 * third, cycles):
                writer.put(cycle(k))
        finally:
            counts = writer.close()
        # Each site point is two samples (grid_kw, n), each pile point one.
        want = sum(len(p.fields) for k in range(cycles) for p in cycle(k))

        def samples() -> int:
            return sum(len(s.values) for s in server.export('{__name__=~"(site|pile)_.+"}'))

        try:
            poll_until(lambda: samples() >= want, 60, "every sample to be searchable")
            found = samples()
        finally:
            server.stop()
    table = Table(title="telemetry through a VictoriaMetrics restart (writer, 13 points a cycle)")
    for name in (
        "points",
        "written",
        "buffered while down",
        "replayed",
        "dropped",
        "write pts/s",
        "replay pts/s",
        "samples on server",
    ):
        table.add_column(name, justify="right")
    table.add_row(
        f"{counts.handed:,}",
        f"{counts.written:,}",
        f"{counts.buffered:,}",
        f"{counts.replayed:,}",
        f"{counts.dropped:,}",
        f"{rate:,.0f}",
        f"{replay_rate:,.0f}",
        f"{found:,} of {want:,}",
    )
    console.print(table)
    return counts.dropped == 0 and counts.replayed == counts.buffered > 0 and found == want


def retention_bench(console: Console, days: int = 3) -> bool:
    """Disk use of the reference station's local telemetry store, before and after retention.

    One day of the reference station (its day of trucks, equal-share, fast simulation at 10 s
    steps) is written `days` days running through the real writer into a real local store at
    the default [telemetry] retention, each step as ten 1 s cycles (the daemon's period: 13
    points a second) on the station's clock, which the writer's upkeep follows. The store after
    the first day is what a day costs raw (no retention: nothing is old enough); each later day
    rolls the day before up to minutes. At the 30-day retention the store holds its newest day
    raw and 29 days rolled up: projected from the store after the last day (its raw part) and
    the rolled-up table's bytes a day. Then the size cap is enforced on the store at half its
    size. True if the projection is under the default cap and the enforced store under its cap.
    """
    import sqlite3
    import tempfile

    from controller.telemetry.buffer import DiskBuffer
    from controller.telemetry.local import LocalStore
    from controller.telemetry.points import NS, Point, cycle_points
    from controller.telemetry.retention import Retention
    from controller.telemetry.writer import TelemetryWriter
    from tests.victoria import poll_until

    class Steps:
        """The simulation's cycles, as points (a `Recorder` that keeps them)."""

        def __init__(self) -> None:
            self.points: list[list[Point]] = []

        def cycle(self, cycle: Cycle, *, block: bool = False) -> None:
            self.points.append(cycle_points(station.name, cycle))

        def plan(self, plan: Plan, when: float, *, block: bool = False) -> None:
            pass

        def event(self, event: object, *, block: bool = False) -> None:
            pass

    def rolled_up_bytes(path: Path) -> int:
        with sqlite3.connect(path) as db:
            (size,) = db.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'rolled_up'"
            ).fetchone()
        return int(size)

    station = load_station(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
    visits = load_sessions(CONFIG_ROOT / "scenarios" / "bozhou-day.csv")
    day = Scenario.around(station, visits, name="bozhou-day")
    day = replace(day, end=day.start + 86400)
    steps = Steps()
    began = time.perf_counter()
    simulate(day, "equal-share", step_s=10.0, telemetry=steps)
    retention = Retention()
    sizes: list[int] = []
    rolled: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.sqlite"
        store = LocalStore(path, retention)
        writer = TelemetryWriter(
            store,
            DiskBuffer(Path(tmp) / "buffer.sqlite", 10**8),
            station=station.name,
            batch_size=5000,
        )
        writer.start()
        for d in range(days):
            for step in steps.points:
                for k in range(10):
                    shift = (d * 86400 + k) * NS
                    writer.put(
                        [Point(p.measurement, p.tags, p.fields, p.time_ns + shift) for p in step],
                        block=True,
                    )
            poll_until(
                lambda: writer.counts.written == writer.counts.handed, 600, f"day {d + 1} written"
            )
            sizes.append(store.size_bytes())
            rolled.append(rolled_up_bytes(path))
        points = writer.counts.written / days
        cap = sizes[-1] // 2
        store.retention = replace(retention, max_bytes=cap)
        upkeep = store.maintain(day.end + (days - 1) * 86400)
        capped = store.size_bytes()
        writer.close()
    wall = time.perf_counter() - began
    raw = sizes[0]
    rolled_day = rolled[-1] / (days - 1)
    retention_days = round(retention.max_age_s / 86400)
    projected = sizes[-1] - rolled[-1] + (retention_days - 1) * rolled_day
    mb = 1e6
    table = Table(
        title=f"telemetry on disk: the reference station's local store, {days} days of 1 s "
        f"cycles ({points:,.0f} points a day), default retention",
        title_justify="left",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("a day raw (the store after day 1: no retention yet)", f"{raw / mb:,.1f} MB"),
        ("... a point", f"{raw / points:,.0f} bytes"),
        (f"... {retention_days} days without retention", f"{retention_days * raw / mb:,.0f} MB"),
        ("the store after each day", " / ".join(f"{size / mb:,.1f}" for size in sizes) + " MB"),
        ("... of which rolled up", " / ".join(f"{size / mb:,.1f}" for size in rolled) + " MB"),
        (
            "a day rolled up to minutes",
            f"{rolled_day / mb:,.2f} MB ({raw / rolled_day:,.0f}x smaller)",
        ),
        (
            f"projected at the {retention_days}-day retention (steady state)",
            f"{projected / mb:,.0f} MB (cap {retention.max_bytes / mb:,.0f} MB)",
        ),
        (
            "cap enforced at half the store",
            f"{capped / mb:,.1f} MB under {cap / mb:,.1f} MB, {upkeep.capped:,} oldest points "
            "deleted",
        ),
        ("wall time (simulation, writing, upkeep)", f"{wall:.0f} s"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return _report(
        console,
        {
            "steady state under the size cap": (
                projected <= retention.max_bytes,
                f"{projected / mb:,.0f} MB projected, cap {retention.max_bytes / mb:,.0f} MB",
            ),
            "the cap enforced": (capped <= cap, f"{capped / mb:,.1f} MB, cap {cap / mb:,.1f} MB"),
        },
    )


def api_flood_bench(console: Console, idle_s: float, get_count: int) -> bool:
    """The daemon controlling the simulated reference station in real time while its API is
    flooded (tests/flood.py); True if, with each flood, the cycle p99 stayed within 1.5x the idle
    p99 and no cycle was missed."""
    from tests.flood import TARGET_RATIO, run_flood

    phases, by_phase, period = run_flood(idle_s=idle_s, get_count=get_count)
    base = by_phase["idle"]
    table = Table(
        title=f"API flood: the daemon controlling the reference station in real time "
        f"({period:g} s cycles, over Modbus on loopback), its API from its own process",
        title_justify="left",
    )
    for column in (
        "phase",
        "clients",
        "s",
        "cycles",
        "cycle ms p50",
        "p99",
        "max",
        "p99 / idle p99",
        "start after tick ms, max",
        "missed",
        "the clients got",
        "a probe GET /api/status a second got",
    ):
        table.add_column(column, justify="left" if column in ("phase", "clients") else "right")
    table.columns[-2].overflow = table.columns[-1].overflow = "fold"
    rows = [("idle (both)", "no client", None, base)]
    rows += [(p.name, p.load, p, by_phase[p.name]) for p in phases]
    checks: dict[str, tuple[bool, str]] = {}
    for name, load, phase, f in rows:
        ratio = f.p99 / base.p99 if base.p99 else math.inf
        table.add_row(
            name,
            load,
            "" if phase is None else f"{phase.end - phase.start:.0f}",
            str(f.cycles),
            f"{f.p50:.1f}",
            f"{f.p99:.1f}",
            f"{f.worst:.1f}",
            f"{ratio:.2f}x",
            f"{f.late:.1f}",
            str(f.missed),
            "" if phase is None else phase.clients.text(),
            "" if phase is None else phase.probe.text(),
        )
        if phase is not None and not name.startswith("idle"):
            checks[f"{name}: cycle p99 at most {TARGET_RATIO:g}x idle, no cycle missed"] = (
                ratio <= TARGET_RATIO and f.missed == 0,
                f"p99 {f.p99:.1f} ms / {base.p99:.1f} ms = {ratio:.2f}x, {f.missed} missed",
            )
    console.print(table)
    return _report(console, checks)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; exit 0 whatever the figures (they are reported, not asserted)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--skip-solver", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--soak-days", type=int, default=30, help="0 skips the soak")
    parser.add_argument("--soak-step", type=float, default=10.0)
    parser.add_argument("--skip-whatif", action="store_true")
    parser.add_argument("--whatif-workers", type=int, help="default: one per CPU")
    parser.add_argument("--skip-sweep", action="store_true", help="the study, local and Ray")
    parser.add_argument("--sweep-days", type=int, default=1, help="days of the example study")

    parser.add_argument("--skip-telemetry", action="store_true")
    parser.add_argument("--skip-retention", action="store_true", help="telemetry on disk")
    parser.add_argument("--retention-days", type=int, default=3, help="days written (2 or more)")
    parser.add_argument("--skip-loop", action="store_true", help="the 200-pile loopback cycle")
    parser.add_argument("--skip-api-flood", action="store_true")
    parser.add_argument("--skip-ocpp", action="store_true", help="the OCPP faults and timings")
    parser.add_argument("--flood-idle", type=float, default=30.0, help="idle seconds, in all")
    parser.add_argument("--flood-gets", type=int, default=20_000)
    parser.add_argument("--skip-month", action="store_true")
    parser.add_argument("--skip-real-data", action="store_true")
    parser.add_argument("--real-days", type=int, help="only the first N development days")
    args = parser.parse_args(argv)
    console = Console(width=170)
    results = {}
    if not args.skip_solver:
        results["solver 5x at the largest size"] = solver_bench(
            console, tuple(int(s) for s in args.sizes.split(","))
        )
    if not args.skip_real_data:
        results["real sessions: mpc against ACN-Sim's ASA and the bound"] = real_data_bench(
            console, days=args.real_days
        )
    if not args.skip_quality:
        results["quality targets"] = quality_bench(console, SCENARIOS)
    if not args.skip_month:
        results["a month under mpc in under 45 s"] = month_bench(console)
    if not args.skip_faults:
        results["fault overshoots within their reaction times"] = fault_bench(console)
    if args.soak_days > 0:
        results["soak: limit held, accounting balanced"] = soak_bench(
            console, args.soak_days, args.soak_step
        )
    if not args.skip_whatif:
        results["what-if: a month under three tariffs in under a minute"] = whatif_bench(
            console, args.whatif_workers
        )
    if not args.skip_sweep:
        results["sweep: the same rows on the local pool and on Ray"] = sweep_bench(
            console, args.whatif_workers, args.sweep_days
        )
    if not args.skip_telemetry:
        results["telemetry: every point once through a server restart"] = telemetry_bench(console)
    if not args.skip_retention:
        results["telemetry on disk: steady state under the cap, the cap enforced"] = (
            retention_bench(console, max(2, args.retention_days))
        )
    if not args.skip_loop:
        results["200 piles: cycle near a bare client's, limit changes at once"] = _report(
            console, cycle_bench(console)
        )
    if not args.skip_ocpp:
        results[
            "OCPP: faults within the grace, 200 profiles under 1 s, safe power within the validity"
        ] = _report(console, ocpp_bench(console))
    if not args.skip_api_flood:
        results["API flood: cycle p99 within 1.5x idle, no cycle missed"] = api_flood_bench(
            console, args.flood_idle, args.flood_gets
        )
    for name, ok in results.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}", style="green" if ok else "bold red")
    return 0


if __name__ == "__main__":
    sys.exit(main())
