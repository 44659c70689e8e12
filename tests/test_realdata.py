"""The real-data bench's targets, on made-up days (the bench itself runs in `make bench`)."""

from __future__ import annotations

from datetime import date

from tests.realdata import Day, Outcome, targets


def day(mpc: Outcome, asa: Outcome, bound: Outcome, *, requested: float = 1000.0) -> Day:
    found = Day("jpl", date(2019, 10, 9), requested, 70)
    same = Outcome(900.0, 70.0, 0.0, 0.1)
    found.outcomes = {
        "flexcharge llf": same,
        "flexcharge edf": same,
        "flexcharge mpc": mpc,
        "flexcharge offline-optimal": bound,
        "ACN-Sim LLF": same,
        "ACN-Sim EDF": same,
        "ACN-Sim ASA": asa,
    }
    return found


BOUND = Outcome(990.0, 80.0, 0.0, 0.1, excess=0.0)


def test_more_energy_at_a_higher_cost_passes_when_the_cost_is_for_that_energy() -> None:
    # mpc delivers 4 kWh more and pays 0.35 $ more, all of it what those 4 kWh cost at best.
    found = targets(
        [day(Outcome(989.0, 80.30, 0.0, 2.0, 0.01), Outcome(985.0, 79.95, 0.0, 20.0, 0.01), BOUND)]
    )
    assert found["mpc delivers at least ASA's energy, every day and in total"][0]
    assert found["mpc costs no more than ASA for the energy it delivers, every day"][0]
    assert not found["over all days mpc is strictly cheaper than ASA at equal or more energy"][0]
    assert found["mpc's CPU per day at least 3x lower than ASA's"][0]


def test_wasting_money_or_energy_fails() -> None:
    wasteful = targets(
        [day(Outcome(985.0, 80.50, 0.0, 2.0, 0.55), Outcome(985.0, 79.95, 0.0, 20.0, 0.01), BOUND)]
    )
    assert not wasteful["mpc costs no more than ASA for the energy it delivers, every day"][0]
    short = targets(
        [day(Outcome(980.0, 79.50, 0.0, 2.0, 0.0), Outcome(985.0, 79.95, 0.0, 20.0, 0.01), BOUND)]
    )
    assert not short["mpc delivers at least ASA's energy, every day and in total"][0]
    assert short["mpc within 0.3 points of energy of the bound"][0] is False  # 1.0 point short
    slow = targets(
        [day(Outcome(985.0, 79.9, 0.0, 8.0, 0.0), Outcome(985.0, 79.95, 0.0, 20.0, 0.01), BOUND)]
    )
    assert not slow["mpc's CPU per day at least 3x lower than ASA's"][0]


def test_over_the_limit_or_above_the_bound_fails() -> None:
    over = targets(
        [day(Outcome(989.0, 80.0, 0.5, 2.0, 0.0), Outcome(985.0, 79.95, 0.0, 20.0, 0.01), BOUND)]
    )
    assert not over["0 kWh over the limit for every controlled policy"][0]
    beyond = targets(
        [day(Outcome(995.0, 80.0, 0.0, 2.0, 0.0), Outcome(985.0, 79.95, 0.0, 20.0, 0.01), BOUND)]
    )
    assert not beyond["no scheduler delivers more than the bound"][0]
