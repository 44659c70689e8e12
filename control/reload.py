"""What a reloaded station config changes on a running daemon.

`StationChange.between(old, new)` compares two validated configs of the same station, pile by
pile: a pile that is new is added, one that is gone is removed, one whose endpoint or register
map changed is reconnected (removed and added again: its session ends), and one whose numbers
changed (ratings, fail-safe, phases) is re-rated and driven on. The tariff, the grid meter, the
terminal and each other section the daemon reads are compared as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.config import Station
from base.stationdevices import DeviceEndpoint, MeterConfig, PileConfig

# Fields that say where and how a device is reached: a change of any of them needs a new driver.
ENDPOINT_FIELDS = frozenset(DeviceEndpoint.model_fields) | {
    "ocpp_version",
    "ocpp_identity",
    "connector",
    "supply",
}


def _sections(station: Station) -> dict[str, object]:
    """The parts of a config the daemon follows besides piles, meters and tariff."""
    return {
        "station": station.info,
        "transformer": station.transformer,
        "control": station.control,
        "scheduler": station.scheduler,
        "background": station.background,
        "groups": station.groups,
        "phase_limits": station.phase_limits,
        "security": station.security,
        "ocpp": station.ocpp,
    }


def reconnects(old: Station, new: Station, old_pile: PileConfig, new_pile: PileConfig) -> bool:
    """True when a pile (or meter) is reached differently: other endpoint, protocol or map."""
    if any(getattr(old_pile, name) != getattr(new_pile, name) for name in ENDPOINT_FIELDS):
        return True
    # OCPP piles have no map (their `device` is empty).
    return old.device_maps.get(old_pile.device) != new.device_maps.get(new_pile.device)


def _meter_changed(
    old: Station, new: Station, a: MeterConfig | None, b: MeterConfig | None
) -> bool:
    if a is None or b is None:
        return a is not b
    return a != b or old.map_for(a.device) != new.map_for(b.device)


@dataclass(frozen=True)
class StationChange:
    """The difference between the config a daemon runs and a reloaded one."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reconnected: tuple[str, ...] = ()
    rerated: tuple[str, ...] = ()
    meter: bool = False
    terminal: bool = False
    tariff: bool = False
    sections: tuple[str, ...] = ()

    @classmethod
    def between(cls, old: Station, new: Station) -> StationChange:
        """What changes from `old` to `new`."""
        before = {p.id: p for p in old.piles}
        after = {p.id: p for p in new.piles}
        both = [pid for pid in after if pid in before]
        reconnected = tuple(pid for pid in both if reconnects(old, new, before[pid], after[pid]))
        rerated = tuple(pid for pid in both if pid not in reconnected and before[pid] != after[pid])
        old_sections, new_sections = _sections(old), _sections(new)
        return cls(
            added=tuple(pid for pid in after if pid not in before),
            removed=tuple(pid for pid in before if pid not in after),
            reconnected=reconnected,
            rerated=rerated,
            meter=_meter_changed(old, new, old.grid_meter, new.grid_meter),
            terminal=_meter_changed(old, new, old.terminal, new.terminal),
            tariff=old.tariff != new.tariff,
            sections=tuple(k for k in new_sections if old_sections[k] != new_sections[k]),
        )

    @property
    def empty(self) -> bool:
        """True when the new config changes nothing the daemon uses."""
        return self == StationChange()

    @property
    def drops(self) -> tuple[str, ...]:
        """The piles whose current driver goes: removed or reconnected."""
        return (*self.removed, *self.reconnected)

    @property
    def builds(self) -> tuple[str, ...]:
        """The piles that get a new driver: added or reconnected."""
        return (*self.added, *self.reconnected)

    def summary(self) -> str:
        """One line for the log, naming every pile and section that changed."""
        parts = []
        for what, ids in (
            ("added", self.added),
            ("removed", self.removed),
            ("reconnected", self.reconnected),
            ("re-rated", self.rerated),
        ):
            if ids:
                parts.append(f"piles {what}: {', '.join(ids)}")
        if self.meter:
            parts.append("grid meter changed")
        if self.terminal:
            parts.append("terminal changed")
        if self.tariff:
            parts.append("tariff changed")
        if self.sections:
            parts.append(f"changed: {', '.join(self.sections)}")
        return "; ".join(parts) if parts else "nothing changed"
