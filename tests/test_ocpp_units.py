"""One rule for a DC charge point's amperes: the CSMS's profiles and the simulated charge point
both convert at the pile's `dc_voltage_v` (750 V unless the station file says otherwise)."""

from __future__ import annotations

import pytest

from base.stationdevices import PileConfig
from drivers.ocpp import profiles
from simulator.ocpp.profiles import Electrics


def dc_pile(**fields: object) -> PileConfig:
    return PileConfig.model_validate(
        {
            "id": "P01",
            "protocol": "ocpp",
            "ocpp_version": "1.6",
            "max_kw": 240.0,
            "min_kw": 20.0,
            "fallback_kw": 20.0,
            "comm_timeout_s": 60.0,
            **fields,
        }
    )


@pytest.mark.parametrize("fields", [{}, {"dc_voltage_v": 400.0}])
def test_a_dc_limit_in_amperes_means_the_same_kw_to_the_csms_and_the_charge_point(
    fields: dict[str, object],
) -> None:
    """120 kW sent in amperes is 160 A at 750 V (300 A at 400 V), and the simulated charge
    point reads that limit back as 120 kW."""
    pile = dc_pile(**fields)
    amps = profiles.limit_in(pile, 120.0, "A")
    assert amps == pytest.approx(120_000 / pile.dc_voltage_v, abs=0.1)
    assert amps == (160.0 if not fields else 300.0)
    electrics = Electrics("dc", pile.phases, pile.voltage_v, pile.dc_voltage_v)
    assert electrics.to_kw(amps, "A") == pytest.approx(120.0, abs=0.1)
    assert profiles.kw_of(pile, amps, "A") == pytest.approx(electrics.to_kw(amps, "A"))


def test_an_ac_limit_in_amperes_is_per_phase() -> None:
    """AC: 3 x 230 V, as before (32 A is 22.08 kW)."""
    pile = dc_pile(supply="ac", max_kw=22.0, min_kw=4.2, fallback_kw=4.2)
    assert profiles.kw_of(pile, 32.0, "A") == pytest.approx(22.08)
