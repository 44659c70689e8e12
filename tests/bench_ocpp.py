"""`make bench`: the OCPP targets, over loopback on a virtual clock.

- The fault matrix's OCPP rows on configs/stations/ocpp-depot.toml (its grid meter on a socat
  pseudo-terminal pair, its twelve charge points simulated and connected to the daemon's CSMS):
  twelve trucks wanting more than fits, and one fault on P05 from ten minutes in (rejected
  TxProfile, profiles applied 20 s late, never applied, websocket dropped for two minutes, the
  controller stopped). Worst overshoot of the limit (the plant's truth), seconds over, and the
  recovery: from the fault's start until P05's charge point applies what the daemon last told it
  (for a dropped link or a stopped controller: its safe power, fallback_kw).
- Limit step -> every charge point's new profile: 200 OCPP DC piles, each with a simulated charge
  point connected; the operator halves the site limit and the time runs from the step to the
  last SetChargingProfile answered (station time on the unpaced virtual clock, which stands still
  while the daemon's cycle waits on the charge points' answers: so it is measured on the machine's
  monotonic clock too).
- Safe power on a stop and on a link loss: each charge point's time from the daemon's stop (or
  its websocket's drop) to its safe power, against the station's profile validity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from rich.console import Console
from rich.table import Table

from base.config import CONFIG_ROOT, Station, load_station
from base.stationdevices import OcppSettings, PileConfig
from drivers.ocpp.pile import OcppPile
from flexcharge.demo import on_free_ports
from simulator.faults import Fault, FaultKind, FaultScript
from simulator.fleet import Visit
from simulator.serial_pair import serial_pairs
from tests.conftest import RunningStation, local_time, start_station, truck_visit

DEPOT = CONFIG_ROOT / "stations" / "ocpp-depot.toml"
TARGET = "P05"
FAULT_AT_S = 600.0
RUN_S = 1500.0
# During each fault (but the stopped controller) the site limit steps down to this share, this
# long after the fault began.
STEP_AFTER_S = 30.0
STEP_TO = 0.6


@contextlib.asynccontextmanager
async def running(
    served: Station,
    controlled: Station,
    visits: list[Visit],
    start: float,
    faults: FaultScript | None = None,
) -> AsyncIterator[RunningStation]:
    """The station served and controlled (equal share, so the limit binds) from `start`."""
    async with contextlib.AsyncExitStack() as stack:
        yield await start_station(
            stack,
            served,
            visits,
            start=start,
            controlled=controlled,
            policy="equal-share",
            faults=faults,
        )


async def fault_row(
    pair: tuple[Station, Station], kind: str
) -> tuple[float, float, float | None, float | None]:
    """(worst kW over the limit in force, sampled each second; s over, the plant's truth;
    detected after s, from the fault; recovered after s, from the limit step) for one
    fault."""
    served, controlled = pair
    start = local_time(served, "2026-11-25T18:00")
    fault_at = start + FAULT_AT_S
    faults: list[Fault] = []
    if kind == "rejected purpose":
        faults = [Fault(FaultKind.REJECTS_PURPOSE, TARGET, fault_at, label="TxProfile")]
    elif kind == "applied late":
        faults = [Fault(FaultKind.APPLIES_LATE, TARGET, fault_at, value=20.0)]
    elif kind == "never applied":
        faults = [Fault(FaultKind.IGNORES_PROFILES, TARGET, fault_at)]
    elif kind == "websocket drop":
        faults = [Fault(FaultKind.WS_DROP, TARGET, fault_at, fault_at + 120)]
    visits = [truck_visit(start + 30 + 20 * n, p.id) for n, p in enumerate(served.piles)]
    async with running(served, controlled, visits, start, FaultScript(faults)) as site:
        await site.clock.sleep_until(fault_at)
        stopped = kind == "controller stopped"
        if stopped:
            site.daemon.request_stop()
            await site.task
        else:
            # The limit drops while the fault lasts, so that every pile (P05 too) must cut at
            # once: what the fault costs shows as overshoot. The plant's truth is kept against
            # the same lower limit.
            await site.clock.sleep_until(fault_at + STEP_AFTER_S)
            lower = STEP_TO * served.limit_kw
            site.daemon.override_limit(lower, start + RUN_S, "bench: the limit steps down")
            site.simulator.plant.limit_override = lower
        point = site.simulator.charge_points[TARGET]
        plant = site.simulator.plant
        limit = served.limit_kw if plant.limit_override is None else plant.limit_override
        worst = 0.0
        # Recovery: for a stopped controller, until P05 is at its safe power; otherwise until
        # the site is under the (lowered) limit for good, from the step.
        last_off: float | None = fault_at if stopped else fault_at + STEP_AFTER_S
        while site.clock.now() < start + RUN_S:
            await site.clock.sleep(1.0)
            now = site.clock.now()
            worst = max(worst, plant.site_kw - limit)
            if stopped:
                at_safe = abs(point.pile.applied_kw - served.pile(TARGET).fallback_kw) < 1.0
                if not at_safe:
                    last_off = now
            elif plant.site_kw > limit:
                last_off = now
        began = fault_at if stopped else fault_at + STEP_AFTER_S
        recovered = None if last_off is None else last_off - began
        truth = site.simulator.plant.truth
        events = [e for e in site.daemon.events if e.time >= fault_at and TARGET in e.text]
    detected = events[0].time - fault_at if events else None
    return worst, truth.over_s, detected, recovered


def fault_matrix(console: Console) -> bool:
    """The OCPP rows of the fault matrix; True if no fault kept the site over the limit longer
    than the limit step alone did, by more than the follow judge's grace."""
    table = Table(title="fault matrix, OCPP (ocpp-depot over loopback)", title_justify="left")
    for column in ("fault on P05", "worst over kW", "s over", "detected after s", "recovery s"):
        table.add_column(column, justify="left" if column.startswith("fault") else "right")
    depot = load_station(DEPOT)
    assert depot.simulator is not None
    # Without the depot's own two quirky charge points (P03 deaf, P08 late): each row's fault
    # on P05 is then the only one, and the first row is the limit step alone.
    station = on_free_ports(
        replace(depot, simulator=depot.simulator.model_copy(update={"charge_points": {}}))
    )
    kinds = (
        "none (the limit step alone)",
        "rejected purpose",
        "applied late",
        "never applied",
        "websocket drop",
        "controller stopped",
    )
    rows: dict[str, tuple[float, float, float | None, float | None]] = {}
    with serial_pairs(station) as pair:
        for kind in kinds:
            rows[kind] = asyncio.run(fault_row(pair, kind))
            worst, over_s, detected, recovered = rows[kind]
            table.add_row(
                kind,
                f"{worst:,.0f}",
                f"{over_s:.0f}",
                "-" if detected is None else f"{detected:.0f}",
                "never" if recovered is None else f"{recovered:.0f}",
            )
    console.print(table)
    console.print(
        f"  12 trucks from 18:00 at equal share, the fault from {FAULT_AT_S:.0f} s and, "
        f"{STEP_AFTER_S:.0f} s later, the site limit down to {STEP_TO:.0%} (but for the "
        "stopped controller), so every pile must cut at once: the worst overshoot is the "
        "step's own (the load above the new limit at the step). Recovery: from the step until "
        "the site stays under the limit (for the stopped controller: until P05 is at its safe "
        "power)",
        highlight=False,
    )
    # What a fault may cost: no more time over the limit than the step alone, plus the grace
    # in which the follow judge waits for a pile to follow before budgeting it on its own.
    allowed = rows[kinds[0]][1] + station.control.follow_grace_s
    return all(over_s <= allowed for _, over_s, _, _ in rows.values())


def synthetic_ocpp_station(piles: int) -> Station:
    """The ocpp-depot with `piles` OCPP DC piles (1.6 and 2.0.1 in turn) and a transformer to
    match, its [ocpp] server on a free port."""
    depot = load_station(DEPOT)
    made = tuple(
        PileConfig.model_validate(
            {
                "id": f"C{n + 1:03d}",
                "protocol": "ocpp",
                "ocpp_version": "1.6" if n % 2 else "2.0.1",
                "max_kw": 240.0,
                "min_kw": 20.0,
                "fallback_kw": 20.0,
                "comm_timeout_s": 60.0,
            }
        )
        for n in range(piles)
    )
    simulator = depot.simulator
    assert simulator is not None
    station = replace(
        depot,
        piles=made,
        transformer=depot.transformer.model_copy(update={"rating_kva": piles * 150.0}),
        # The depot's plans raise the piles' total by 400 kW a minute: 200 piles would take
        # an hour to reach the limit, and a step before then would not bind.
        scheduler=depot.scheduler.model_copy(update={"ramp_kw_per_min": 100_000.0}),
        simulator=simulator.model_copy(update={"charge_points": {}}),
    )
    assert station.ocpp is not None
    return on_free_ports(replace(station, ocpp=OcppSettings(port=station.ocpp.port)))


@dataclass
class Step:
    """A limit step's profiles: per charge point, its first send after the step as (station
    time, machine time at the send's start, machine time at its answer)."""

    at: float
    wall: float
    sends: dict[str, tuple[float, float, float]]

    def station_s(self) -> float:
        """Station seconds from the step to the last profile answered (its cycle)."""
        return max((t for t, _, _ in self.sends.values()), default=self.at) - self.at

    def wall_s(self) -> float:
        """Machine seconds from the step to the last profile answered."""
        return max((e for _, _, e in self.sends.values()), default=self.wall) - self.wall

    def per_cycle(self) -> str:
        """How many charge points got their first profile in each cycle after the step."""
        counts = Counter(round(t - self.at) for t, _, _ in self.sends.values())
        return ", ".join(f"{n} at +{k} s" for k, n in sorted(counts.items()))

    def burst_s(self) -> float:
        """Machine seconds from the first send's start to the last answer, in the last cycle."""
        last = self.station_s() + self.at
        cycle = [(b, e) for t, b, e in self.sends.values() if t == last]
        return max(e for _, e in cycle) - min(b for b, _ in cycle) if cycle else 0.0


async def _profile_step(piles: int) -> Step:
    """Every charge point's profile after a limit step to half the site's limit."""
    station = synthetic_ocpp_station(piles)
    start = local_time(station, "2026-11-25T02:00")
    visits = [truck_visit(start + 5, p.id) for p in station.piles]
    async with (
        serial_pairs_async(station) as (served, controlled),
        running(served, controlled, visits, start) as site,
    ):
        await site.clock.sleep_until(start + 180)
        step = Step(site.clock.now(), time.monotonic(), {})
        for pile in site.daemon.piles.values():
            _timed(pile, step.sends, site.clock.now)
        site.daemon.override_limit(0.5 * station.limit_kw, step.at + 600, "bench")
        while len(step.sends) < piles and site.clock.now() < step.at + 60:
            await site.clock.sleep(0.5)
    return step


def _timed(
    pile: object, sends: dict[str, tuple[float, float, float]], now: Callable[[], float]
) -> None:
    """Record the pile's first profile's send and answer (station and machine time)."""
    assert isinstance(pile, OcppPile)
    send = pile._send

    async def timed(*args: object) -> None:
        began = time.monotonic()
        await send(*args)  # type: ignore[arg-type]
        sends.setdefault(pile.id, (now(), began, time.monotonic()))

    pile._send = timed  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def serial_pairs_async(station: Station) -> AsyncIterator[tuple[Station, Station]]:
    """`serial_pairs` in an async block."""
    with serial_pairs(station) as pair:
        yield pair


async def _safe_power(kind: str) -> tuple[float, int, float]:
    """(worst s to safe power, charge points, validity) after a stop or a link loss."""
    station = on_free_ports(load_station(DEPOT))
    assert station.ocpp is not None
    validity = station.ocpp.profile_validity_s
    start = local_time(station, "2026-11-25T18:00")
    visits = [truck_visit(start + 20, p.id) for p in station.piles]
    at = start + 300
    ids = [p.id for p in station.piles if p.id != "P03"]  # P03 applies no profile at all
    faults = FaultScript(
        [Fault(FaultKind.WS_DROP, pid, at, at + 2 * validity) for pid in ids]
        if kind == "link loss"
        else []
    )
    fallback = {p.id: p.fallback_kw for p in station.piles}
    back: dict[str, float] = {}
    async with (
        serial_pairs_async(station) as (served, controlled),
        running(served, controlled, visits, start, faults) as site,
    ):
        await site.clock.sleep_until(at)
        if kind == "controller stop":
            site.daemon.request_stop()
            await site.task
        points = site.simulator.charge_points
        while len(back) < len(ids) and site.clock.now() < at + 2 * validity:
            await site.clock.sleep(1.0)
            for pid in ids:
                if pid not in back and points[pid].limit_kw == fallback[pid]:
                    back[pid] = site.clock.now() - at
    worst = max(back.values()) if len(back) == len(ids) else float("inf")
    return worst, len(back), validity


def step_period(piles: int) -> float:
    """The fast loop period of the synthetic station."""
    return synthetic_ocpp_station(piles).control.period_s


def ocpp_bench(console: Console, piles: int = 200) -> dict[str, tuple[bool, str]]:
    """The OCPP fault matrix table, and the two timed targets as (met, figures)."""
    logging.disable(logging.WARNING)  # the faults' and the reconnections' lines
    try:
        matrix = fault_matrix(console)
        step = asyncio.run(_profile_step(piles))
        safe = {kind: asyncio.run(_safe_power(kind)) for kind in ("controller stop", "link loss")}
    finally:
        logging.disable(logging.NOTSET)
    got = len(step.sends)
    checks = {
        "OCPP faults: none over the limit longer than the step alone plus the follow grace": (
            matrix,
            "see the table",
        ),
        f"limit step -> every one of {piles} OCPP charge points' profile answered under 1 s": (
            got == piles and step.station_s() <= step_period(piles) and step.wall_s() < 1.0,
            f"{got} of {piles} answered (first profile after the step, per cycle: "
            f"{step.per_cycle()}), the last in the cycle {step.station_s():.0f} s after the step "
            f"(station time; the daemon's fast loop period is "
            f"{step_period(piles):g} s); that cycle's sends took {step.burst_s():.2f} s, "
            f"{step.wall_s():.2f} s of machine time from the step",
        ),
    }
    for kind, (worst, count, validity) in safe.items():
        checks[f"{kind}: every charge point at its safe power within the validity"] = (
            worst <= validity,
            f"{count} charge points, the last {worst:.0f} s after the {kind} "
            f"(validity {validity:.0f} s)",
        )
    return checks
