"""Exact books: energy integrated within each step, priced in parts at band boundaries, peaks and
over-limit from the highest power within a step.

The worked examples use the reference depot's piles (1 s delay, 60 kW/s ramp) and trucks; the
property tests drive the plant with random vehicles, steps and setpoints.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from base.config import Station
from base.devicemap import PileMode
from base.tariff import Tariff
from simulator.books import Books, Piece, excess, profile
from simulator.charging import Battery, advance
from simulator.fast import Scenario, simulate
from simulator.fleet import Visit
from simulator.plant import Plant
from tests.builders import local

T0 = local("2026-11-10T11:00")


def quiet(station: Station) -> Station:
    """The station with no depot load of its own (so the books show the piles alone)."""
    background = station.background.model_copy(update={"profile_kw": [0.0] * 24, "noise_kw": 0.0})
    return replace(station, background=background)


def truck(vid: str, arrival: float, departure: float, energy_kwh: float, **kw: float) -> Visit:
    return Visit(vid, arrival, departure, energy_kwh, kw.pop("max_kw", 300.0), **kw)  # type: ignore[arg-type]


def armed(plant: Plant) -> Plant:
    """The plant with every pile told to idle before T0 (a pile never told anything runs at its
    fallback power), and T0's arrivals plugged in."""
    run(plant, {}, [T0 - 20, T0 - 10])
    plant.step(T0, 10.0)
    return plant


def run(
    plant: Plant, commands: dict[str, float], steps: list[float], breaks: list[float] = ()
) -> None:  # type: ignore[assignment]
    """Step the plant over `steps` (end times), holding every pile at `commands`, the controller
    in touch all along (as the fast simulation does, by a heartbeat at the step's end)."""
    previous = steps[0]
    for now in steps[1:]:
        for pid, pile in plant.piles.items():
            kw = commands.get(pid, 0.0)
            pile.command(previous, kw, PileMode.CHARGE if kw > 0 else PileMode.IDLE)
            pile.heartbeat(now, continuous=True)
        plant.step(now, now - previous, breaks)
        previous = now


# -- the charging model, worked ------------------------------------------------------------------


def test_a_ramp_is_a_trapezoid() -> None:
    battery = Battery(capacity_kwh=1000, soc=0.2, soc_target=0.9, max_kw=400, taper_soc=0.8)
    stretch = advance(battery, 0.0, 120.0, 60.0, 0.0, 60.0)
    # 2 s from 0 to 120 kW (120 kW s), then 58 s at 120 kW.
    assert stretch.kwh == pytest.approx((120 + 58 * 120) / 3600, rel=1e-12)
    assert stretch.times == [0.0, 2.0, 60.0]
    assert stretch.kw == [0.0, 120.0, 120.0]


def test_a_battery_that_fills_mid_stretch_stops_there() -> None:
    battery = Battery(capacity_kwh=10, soc=0.2, soc_target=0.3, max_kw=400, taper_soc=0.8)
    stretch = advance(battery, 120.0, 120.0, 60.0, 0.0, 60.0)
    # 1 kWh of room at 120 kW: full after 30 s, then nothing.
    assert stretch.kwh == pytest.approx(1.0, rel=1e-12)
    assert stretch.times == pytest.approx([0.0, 30.0, 30.0, 60.0])
    assert stretch.kw == [120.0, 120.0, 0.0, 0.0]
    assert battery.full


def test_the_taper_is_an_exponential_approach_to_full() -> None:
    battery = Battery(capacity_kwh=100, soc=0.8, soc_target=1.0, max_kw=100, taper_soc=0.8)
    stretch = advance(battery, 100.0, 200.0, 60.0, 0.0, 600.0)
    k = 100 / (100 * 0.2) / 3600  # per second
    assert stretch.kwh == pytest.approx(100 * 0.2 * (1 - math.exp(-k * 600)), rel=1e-12)
    assert stretch.power_kw == pytest.approx(100 * math.exp(-k * 600), rel=1e-9)


@pytest.mark.parametrize(("limit", "seconds"), [(300, 1), (300, 7), (500, 3), (50, 5)])
def test_energy_does_not_depend_on_how_time_is_cut(limit: float, seconds: float) -> None:
    whole = Battery(capacity_kwh=500, soc=0.75, soc_target=0.95, max_kw=400, taper_soc=0.8)
    once = advance(whole, 0.0, limit, 60.0, 0.0, 3600.0)
    cut = Battery(capacity_kwh=500, soc=0.75, soc_target=0.95, max_kw=400, taper_soc=0.8)
    power, total = 0.0, 0.0
    for k in range(int(3600 / seconds)):
        stretch = advance(cut, power, limit, 60.0, k * seconds, (k + 1) * seconds)
        power, total = stretch.power_kw, total + stretch.kwh
    assert total == pytest.approx(once.kwh, rel=1e-9)
    assert cut.soc == pytest.approx(whole.soc, rel=1e-12)


# -- the plant's books, worked ---------------------------------------------------------------------


def test_a_vehicle_leaving_mid_step_gets_what_it_drew_until_then(reference: Station) -> None:
    visit = truck("T1", T0, T0 + 90, energy_kwh=100.0, capacity_kwh=600.0, soc_arrival=0.2)
    plant = armed(Plant(quiet(reference), [visit], record=False))
    pile = plant.sessions["T1"].pile
    assert pile is not None
    run(plant, {pile: 300.0}, [T0, T0 + 60, T0 + 120])
    # Step 1: 1 s delay, 5 s ramp to 300 kW, then 300 kW; step 2: 300 kW until it leaves at +90 s.
    first = (300 * 59 - 300 * 5 / 2) / 3600
    assert plant.sessions["T1"].delivered_kwh == pytest.approx(first + 300 * 30 / 3600, rel=1e-12)
    assert plant.sessions["T1"].left_at == T0 + 90
    piles = sum(p.piles_kwh for p in plant.pieces)
    assert piles == pytest.approx(300 * 30 / 3600, rel=1e-12)
    assert [p.end for p in plant.pieces] == [T0 + 90, T0 + 120]


def test_a_vehicle_that_fills_mid_step_counts_in_the_steps_peak(reference: Station) -> None:
    # 12 kWh wanted at 300 kW: full 6 + 144 s after the setpoint.
    visit = truck("T1", T0, T0 + 3600, energy_kwh=12.0, capacity_kwh=600.0, soc_arrival=0.2)
    plant = armed(Plant(quiet(reference), [visit], record=False))
    pile = plant.sessions["T1"].pile
    assert pile is not None
    run(plant, {pile: 300.0}, [T0, T0 + 60, T0 + 120, T0 + 180])
    assert plant.delivered("T1") == pytest.approx(12.0, rel=1e-9)
    assert plant.site_kw == 0.0  # at the step's end the truck is full
    assert plant.pieces[-1].peak_kw == pytest.approx(300.0)  # but it drew 300 kW within the step
    assert plant.truth.peak_kw == pytest.approx(300.0)


def test_over_limit_is_the_energy_above_the_limit_within_the_step(reference: Station) -> None:
    station = quiet(reference)
    plant = Plant(station, [], record=False)
    plant.limit_override = 1000.0
    shape = profile([([T0, T0 + 10, T0 + 60], [0.0, 1200.0, 1200.0])], T0, T0 + 60)
    found = excess(shape, 0.0, 1000.0)
    # Above 1000 kW from 8.33 s (a triangle to 10 s, then 50 s flat at 200 kW over).
    crossing = 10 * 1000 / 1200
    assert found.area_kwh == pytest.approx((200 * (10 - crossing) / 2 + 200 * 50) / 3600)
    assert found.seconds == pytest.approx(60 - crossing)
    assert found.peak_kw == 1200.0


def test_a_step_across_a_band_boundary_is_priced_in_parts(reference: Station) -> None:
    # 11:55 to 12:05 in one 600 s step; the reference tariff is peak until 12:00, flat after.
    start = local("2026-11-10T11:55")
    visit = truck("T1", start, start + 7200, energy_kwh=400.0, capacity_kwh=600.0, soc_arrival=0.2)
    station = quiet(reference)
    scenario = Scenario(station, station.tariff, (visit,), start - 600, start + 1200, "across")
    result = simulate(scenario, "uncontrolled", step_s=600.0)
    books = result.books
    noon = local("2026-11-10T12:00")
    assert noon in set(books.start.tolist())
    tariff = station.tariff
    before = books.start < noon
    expected = (
        tariff.price_at(noon - 1) * books.piles_kwh[(books.start >= start) & before].sum()
        + tariff.price_at(noon) * books.piles_kwh[~before].sum()
    )
    assert tariff.price_at(noon - 1) != tariff.price_at(noon)
    assert float(result.metrics["energy_cost_yuan"]) == pytest.approx(expected, abs=1e-4)


# -- properties ------------------------------------------------------------------------------------

visits = st.lists(
    st.tuples(
        st.floats(0, 1800),  # arrival after the start, s
        st.floats(30, 5400),  # dwell, s
        st.floats(0.5, 400),  # energy, kWh
        st.floats(40, 600),  # max kW
        st.floats(0.0, 0.6),  # SoC on arrival
    ),
    min_size=1,
    max_size=8,
)


def _plant(reference: Station, drawn: list[tuple[float, float, float, float, float]]) -> Plant:
    made = []
    for index, (arrival, dwell, energy, max_kw, soc) in enumerate(drawn):
        capacity = max(energy / (0.98 - soc), 1.0)
        made.append(
            Visit(
                f"V{index}",
                T0 + arrival,
                T0 + arrival + dwell,
                energy,
                max_kw,
                capacity_kwh=capacity,
                soc_arrival=soc,
            )
        )
    return Plant(quiet(reference), made, record=False)


@settings(max_examples=60, deadline=None)
@given(
    drawn=visits,
    steps=st.lists(st.floats(1, 400), min_size=5, max_size=40),
    setpoints=st.lists(st.floats(0, 480), min_size=12, max_size=12),
    breaks=st.lists(st.floats(0, 8000), max_size=6),
    prices=st.lists(st.floats(0.1, 2.0), min_size=8, max_size=8),
)
def test_vehicle_energy_is_the_site_integral_and_cost_is_energy_times_price(
    reference: Station,
    drawn: list[tuple[float, float, float, float, float]],
    steps: list[float],
    setpoints: list[float],
    breaks: list[float],
    prices: list[float],
) -> None:
    plant = _plant(reference, drawn)
    ids = list(plant.piles)
    cuts = sorted({T0 + b for b in breaks})

    # A price for each stretch between the breaks, as a tariff's bands would give.
    def price(when: float) -> float:
        return prices[sum(1 for c in cuts if c <= when) % len(prices)]

    now = T0
    pieces: list[Piece] = []
    per_vehicle_cost = 0.0
    for k, dt in enumerate(steps):
        for index, pid in enumerate(ids):
            pile = plant.piles[pid]
            kw = setpoints[(index + k) % len(setpoints)] if (index + k) % 3 else 0.0
            pile.command(now, min(kw, pile.max_charge_kw), PileMode.CHARGE if kw else PileMode.IDLE)
        # The plant's own books come from its pieces; the vehicles' side from stepping to each
        # break in turn and pricing what every vehicle took in between.
        inside = [c for c in cuts if now < c < now + dt]
        for lo, hi in zip([now, *inside], [*inside, now + dt], strict=True):
            before = {vid: plant.delivered(vid) for vid in plant.sessions}
            for pile in plant.piles.values():
                pile.heartbeat(hi, continuous=True)
            plant.step(hi, hi - lo)
            pieces.extend(plant.pieces)
            took = math.fsum(plant.delivered(v) - before[v] for v in plant.sessions)
            per_vehicle_cost += took * price(lo)
        now += dt
    delivered = sum(plant.delivered(vid) for vid in plant.sessions)
    integral = math.fsum(p.piles_kwh for p in pieces)
    assert delivered == pytest.approx(integral, rel=1e-9, abs=1e-12)
    assert math.fsum(p.import_kwh for p in pieces) == pytest.approx(integral, rel=1e-9, abs=1e-12)
    cost = math.fsum(p.import_kwh * price(p.start) for p in pieces)
    assert cost == pytest.approx(per_vehicle_cost, rel=1e-9, abs=1e-12)
    for piece in pieces:
        assert not any(piece.start < c < piece.end for c in cuts), "a piece spans a break"
        if piece.seconds > 0:
            average = piece.import_kwh * 3600 / piece.seconds
            # Relative slack too: in a piece of a few ms, the energy's last bits are kW.
            assert piece.peak_kw >= average - 1e-6 - 1e-7 * abs(average)


@settings(max_examples=25, deadline=None)
@given(drawn=visits, setpoint=st.floats(20, 480), split=st.floats(0.05, 0.95))
def test_cutting_a_step_in_two_changes_no_energy(
    reference: Station,
    drawn: list[tuple[float, float, float, float, float]],
    setpoint: float,
    split: float,
) -> None:
    whole, halves = _plant(reference, drawn), _plant(reference, drawn)
    for plant in (whole, halves):
        plant.step(T0, 1.0)
    for k in range(12):
        start, end = T0 + 600 * k, T0 + 600 * (k + 1)
        for plant in (whole, halves):
            for pile in plant.piles.values():
                pile.command(start, min(setpoint, pile.max_charge_kw), PileMode.CHARGE)
                pile.heartbeat(end, continuous=True)
        whole.step(end, 600.0)
        middle = start + 600 * split
        halves.step(middle, middle - start)
        halves.step(end, end - middle)
    for vid in whole.sessions:
        assert halves.delivered(vid) == pytest.approx(whole.delivered(vid), rel=1e-9, abs=1e-9)
    assert halves.energy_import_kwh == pytest.approx(whole.energy_import_kwh, rel=1e-9)


def test_books_cost_the_background_alone_too(reference: Station) -> None:
    tariff: Tariff = reference.tariff
    books = Books.of(
        [
            (0, Piece(T0, T0 + 60, 1.0, 2.0, 3.0, 0.0, 180.0, 0.0, 0.0)),
            (1, Piece(T0 + 60, T0 + 120, 0.5, 2.0, 2.5, 0.0, 150.0, 0.0, 0.0)),
        ]
    )
    with_vehicles, alone = books.energy_cost(tariff)
    price = tariff.price_at(T0)
    assert with_vehicles == pytest.approx(5.5 * price)
    assert alone == pytest.approx(4.0 * price)
    assert list(books.per_step(books.piles_kwh, 2)) == [1.0, 0.5]
    assert np.array_equal(books.peak_per_step(2), [180.0, 150.0])
