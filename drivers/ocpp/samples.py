"""MeterValues' sampled values, in either version, as the numbers a pile reading needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Multipliers of the units OCPP meters report in, to kW, A, kWh and %.
_TO_PROJECT = {"W": 0.001, "kW": 1.0, "Wh": 0.001, "kWh": 1.0, "A": 1.0, "Percent": 1.0}
_DEFAULT_UNIT = {
    "Power.Active.Import": "W",
    "Power.Active.Export": "W",
    "Current.Import": "A",
    "Energy.Active.Import.Register": "Wh",
    "Energy.Active.Export.Register": "Wh",
    "SoC": "Percent",
}


@dataclass(frozen=True)
class Sample:
    """What one MeterValues message says, in kW, A, kWh and % (None: not sent)."""

    power_kw: float | None = None
    export_kw: float | None = None
    current_a: tuple[float, ...] = ()
    energy_import_kwh: float | None = None
    energy_export_kwh: float | None = None
    soc_pct: float | None = None


def parse(meter_values: Iterable[Mapping[str, Any]]) -> Sample:
    """The numbers in a MeterValues `meterValue` list, with keys in snake_case as the `ocpp`
    library hands it over (1.6: string values and `unit`; 2.0.1: numbers and `unit_of_measure`
    with a power-of-ten multiplier); the last value of each wins.

    Raises `ValueError` naming the measurand whose value is not a number.
    """
    found: dict[str, float] = {}
    phases: dict[str, float] = {}
    for entry in meter_values:
        for sampled in entry.get("sampled_value", ()):
            measurand = sampled.get("measurand", "Energy.Active.Import.Register")
            if measurand not in _DEFAULT_UNIT:
                continue
            if sampled.get("context") == "Transaction.Begin" and measurand != "SoC":
                continue
            try:
                value = float(sampled["value"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{measurand}: {sampled.get('value')!r} is not a number") from None
            measure = sampled.get("unit_of_measure") or {}
            unit = sampled.get("unit") or measure.get("unit") or _DEFAULT_UNIT[measurand]
            value *= _TO_PROJECT.get(unit, 1.0) * 10.0 ** int(measure.get("multiplier", 0))
            phase = sampled.get("phase")
            if measurand == "Current.Import" and phase:
                phases[phase[:2]] = value
            elif measurand in ("Power.Active.Import", "Power.Active.Export") and phase:
                # Per-phase power adds up to the connector's.
                key = f"{measurand}/phases"
                found[key] = found.get(key, 0.0) + value
            else:
                found[measurand] = value
    power = found.get("Power.Active.Import", found.get("Power.Active.Import/phases"))
    export = found.get("Power.Active.Export", found.get("Power.Active.Export/phases"))
    current = tuple(phases[p] for p in ("L1", "L2", "L3") if p in phases)
    if not current and "Current.Import" in found:
        current = (found["Current.Import"],)
    return Sample(
        power_kw=power,
        export_kw=export,
        current_a=current,
        energy_import_kwh=found.get("Energy.Active.Import.Register"),
        energy_export_kwh=found.get("Energy.Active.Export.Register"),
        soc_pct=found.get("SoC"),
    )
