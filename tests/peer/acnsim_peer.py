"""The research peer: ACN-Sim (acnportal 0.3) running LLF, EDF and Caltech's ASA on one day.

Run by the peer venv's python, never by flexcharge's (it imports no flexcharge code):

    python acnsim_peer.py IN.json OUT.json

IN.json (written by `tests.peer.days.acn_day`) names the day: `start` (local midnight with its
offset), `period_min`, `periods`, `voltage_v`, `max_a`, `limit_kw`, the acnportal `tariff`, the
`stations` and the `sessions` (`id`, `station`, `arrival` and `departure` as period indices,
`energy_kwh` already feasible) and the `algorithms` to run (`llf`, `edf`, `asa`). Unknown keys
are ignored.

The network is ACN-Sim's model of the studies: one continuous EVSE per station (0 to `max_a` A at
`voltage_v` V) and a single aggregate current limit of `limit_kw` over all of them; every EV has
an ideal battery holding exactly its energy, and states its true departure. Every scheduler
re-plans every period. ASA is adacharge's AdaptiveSchedulingAlgorithm with the cost-minimising
objective of the ACN-Sim studies; adacharge is not on PyPI, so it is importable only when the
caller puts its source on PYTHONPATH, and is reported under `unavailable` otherwise.

OUT.json: `prices` ($/kWh per period, from acnportal's tariff), `versions`, and per algorithm
`delivered_kwh` per session, `aggregate_kw` per period, `energy_kwh`, `energy_cost` (each
period's energy at its price), `peak_kw`, `over_limit_kwh`, `cpu_s` (process CPU time of the
simulation alone) and `wall_s`.
"""

from __future__ import annotations

import os

# One thread for every BLAS and OpenMP pool, set before numpy loads, so that CPU seconds compare
# with flexcharge's single-threaded solver.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["BLIS_NUM_THREADS"] = "1"
os.environ["VECLIB_MAXIMUM_THREADS"] = "1"
os.environ["NUMEXPR_NUM_THREADS"] = "1"

import hashlib
import itertools
import json
import platform
import sys
import time
import warnings
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from acnportal import acnsim
from acnportal.algorithms import (
    SortedSchedulingAlgo,
    earliest_deadline_first,
    least_laxity_first,
)
from acnportal.signals.tariffs import TimeOfUseTariff

ALGORITHMS = ("llf", "edf", "asa")
# Energy delivered per session and per period must agree to this (kWh).
TOLERANCE_KWH = 1e-6


class PeerError(Exception):
    """The input is not a day this script can run, or ACN-Sim's results do not add up."""


def _asa() -> Any:
    """adacharge's ASA with the studies' cost-minimising objective (ImportError if absent)."""
    import adacharge  # only on PYTHONPATH when the caller was given its source

    objective = [
        adacharge.ObjectiveComponent(adacharge.total_energy, 1000),
        adacharge.ObjectiveComponent(adacharge.tou_energy_cost, 1),
        adacharge.ObjectiveComponent(adacharge.quick_charge, 1e-4),
        adacharge.ObjectiveComponent(adacharge.equal_share, 1e-12),
    ]
    return adacharge.AdaptiveSchedulingAlgorithm(objective, solver="ECOS", max_recompute=1)


def _scheduler(name: str) -> Any:
    if name == "llf":
        return SortedSchedulingAlgo(least_laxity_first)
    if name == "edf":
        return SortedSchedulingAlgo(earliest_deadline_first)
    if name == "asa":
        return _asa()
    raise PeerError(f"unknown algorithm {name!r}; known: {list(ALGORITHMS)}")


def _checked(day: dict[str, Any]) -> dict[str, Any]:
    """The day, after checking what the simulation relies on."""
    needed = (
        "start",
        "period_min",
        "periods",
        "voltage_v",
        "max_a",
        "limit_kw",
        "tariff",
        "stations",
        "sessions",
        "algorithms",
    )
    missing = [key for key in needed if key not in day]
    if missing:
        raise PeerError(f"input lacks {missing}")
    stations = set(day["stations"])
    if len(stations) != len(day["stations"]):
        raise PeerError("a station is listed twice")
    periods = int(day["periods"])
    busy: dict[str, list[tuple[int, int, str]]] = {}
    seen: set[str] = set()
    for session in day["sessions"]:
        sid, station = str(session["id"]), session["station"]
        arrival, departure = int(session["arrival"]), int(session["departure"])
        if sid in seen:
            raise PeerError(f"session {sid} appears twice")
        seen.add(sid)
        if station not in stations:
            raise PeerError(f"session {sid}: station {station!r} is not in stations")
        if not 0 <= arrival < departure <= periods:
            raise PeerError(f"session {sid}: needs 0 <= arrival < departure <= periods")
        if not float(session["energy_kwh"]) > 0:
            raise PeerError(f"session {sid}: energy_kwh must be positive")
        busy.setdefault(station, []).append((arrival, departure, sid))
    for station, spans in busy.items():
        spans.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                raise PeerError(f"sessions {first} and {second} overlap at {station}")
    unknown = [a for a in day["algorithms"] if a not in ALGORITHMS]
    if unknown:
        raise PeerError(f"unknown algorithm(s) {unknown}; known: {list(ALGORITHMS)}")
    return day


def _network(day: dict[str, Any]) -> Any:
    network = acnsim.ChargingNetwork()
    for station in day["stations"]:
        # acnsim.EVSE is the continuous EVSE (BASIC); every EVSE on the same phase angle.
        network.register_evse(acnsim.EVSE(station, max_rate=day["max_a"]), day["voltage_v"], 0)
    limit_a = day["limit_kw"] * 1000 / day["voltage_v"]
    network.add_constraint(acnsim.Current(list(day["stations"])), limit_a, name="aggregate")
    return network


def _events(day: dict[str, Any]) -> Any:
    max_kw = day["max_a"] * day["voltage_v"] / 1000
    plugins = []
    for session in day["sessions"]:
        energy = float(session["energy_kwh"])
        ev = acnsim.EV(
            int(session["arrival"]),
            int(session["departure"]),
            energy,
            session["station"],
            str(session["id"]),
            acnsim.Battery(capacity=energy, init_charge=0, max_power=max_kw),
            estimated_departure=int(session["departure"]),
        )
        plugins.append(acnsim.PluginEvent(ev.arrival, ev))
    return acnsim.EventQueue(plugins)


def _widened(rates: np.ndarray, periods: int) -> np.ndarray:
    """ACN-Sim's rates (stations x periods it ran) over exactly `periods` periods."""
    if rates.shape[1] > periods:
        if np.any(np.abs(rates[:, periods:]) > 1e-9):
            raise PeerError(f"ACN-Sim charged after the last of the {periods} periods")
        return rates[:, :periods]
    return np.pad(rates, ((0, 0), (0, periods - rates.shape[1])))


def _run(day: dict[str, Any], name: str, scheduler: Any, prices: np.ndarray) -> dict[str, Any]:
    start = datetime.fromisoformat(day["start"])
    simulator = acnsim.Simulator(
        _network(day),
        scheduler,
        _events(day),
        start,
        period=day["period_min"],
        signals={"tariff": TimeOfUseTariff(day["tariff"])},
        verbose=False,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        simulator.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    periods, hours = int(day["periods"]), day["period_min"] / 60
    # charging_rates are the rates the EVs took (after their batteries), in A per station.
    rates = _widened(np.asarray(simulator.charging_rates, dtype=float), periods)
    energy = rates * day["voltage_v"] / 1000 * hours  # kWh per station and period
    index = {station: i for i, station in enumerate(simulator.network.station_ids)}
    delivered: dict[str, float] = {}
    accounted = np.zeros_like(energy, dtype=bool)
    for session in day["sessions"]:
        sid = str(session["id"])
        ev = simulator.ev_history.get(sid)
        if ev is None:
            raise PeerError(f"{name}: session {sid} never plugged in")
        row, span = index[session["station"]], slice(session["arrival"], session["departure"])
        by_period = float(energy[row, span].sum())
        if abs(by_period - ev.energy_delivered) > TOLERANCE_KWH:
            raise PeerError(
                f"{name}: session {sid} got {ev.energy_delivered:.9f} kWh, but its station's "
                f"periods add up to {by_period:.9f} kWh"
            )
        accounted[row, span] = True
        delivered[sid] = float(ev.energy_delivered)
    stray = float(np.abs(energy[~accounted]).sum())
    if stray > TOLERANCE_KWH:
        raise PeerError(f"{name}: {stray:.9f} kWh delivered while no session was plugged in")
    aggregate_kw = energy.sum(axis=0) / hours
    per_period = energy.sum(axis=0)
    invalid = [str(w.message) for w in caught if "Invalid schedule" in str(w.message)]
    return {
        "delivered_kwh": delivered,
        "aggregate_kw": [float(x) for x in aggregate_kw],
        "energy_kwh": float(per_period.sum()),
        "energy_cost": float(per_period @ prices),
        "peak_kw": float(aggregate_kw.max()) if periods else 0.0,
        "over_limit_kwh": float(np.maximum(aggregate_kw - day["limit_kw"], 0.0).sum() * hours),
        "cpu_s": cpu,
        "wall_s": wall,
        "invalid_schedules": len(invalid),
    }


def _source_digest(package_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("acnportal", "cvxpy", "ecos", "numpy", "scipy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    try:
        import adacharge

        package_dir = Path(adacharge.__file__).resolve().parent
        found["adacharge"] = f"source {package_dir.parent} (sha256 {_source_digest(package_dir)})"
    except ImportError:
        found["adacharge"] = "absent"
    return found


def main(argv: list[str]) -> int:
    """Run the algorithms the input names on its day and write the results."""
    if len(argv) != 3:
        print(f"usage: {argv[0]} IN.json OUT.json", file=sys.stderr)
        return 2
    day = _checked(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    tariff = TimeOfUseTariff(day["tariff"])
    start = datetime.fromisoformat(day["start"])
    prices = np.asarray(
        tariff.get_tariffs(start, int(day["periods"]), day["period_min"]), dtype=float
    )
    results: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for name in day["algorithms"]:
        try:
            scheduler = _scheduler(name)
        except ImportError as exc:  # adacharge is not on PYTHONPATH (the caller sets it)
            unavailable[name] = f"cannot import: {exc}"
            continue
        results[name] = _run(day, name, scheduler, prices)
    out = {
        "name": day.get("name", ""),
        "prices": [float(p) for p in prices],
        "versions": _versions(),
        "results": results,
        "unavailable": unavailable,
    }
    Path(argv[2]).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
