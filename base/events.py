"""What the controller tells its operator, as records: when, from where, what kind, about which
device, and the words.

An `Event` is made where it happens (a device's health, the sensing checks, the control step,
the daemon, the simulator's fault script) and read as a record by everything downstream: the
daemon's status and API, telemetry, the live view, the demo, a simulation's report. `text` is the
whole line an operator reads ("pile P03: no answer"); `source` and `kind` say what it is without
reading it.

`DeviceRef` names one device of the station; its `label` ("pile P03") is the one place a
device's name is worded, in events, errors and config problems alike.

The kinds, by the source that tells them, and the level each is logged at (`Event.level`): a
fault is a warning or an error, its end is information.

| source    | kind                 | level   | when                                                  |
|-----------|----------------------|---------|-------------------------------------------------------|
| device    | failed               | ERROR   | a device stops answering, or answers implausibly      |
| device    | recovered            | INFO    | it answers plausibly again (with how long it was down) |
| device    | late                 | WARNING | its answers arrive more than a control period late    |
| device    | in-time              | INFO    | they arrive in time again                             |
| control   | failed, recovered    | ERROR, INFO | the optimiser, the scheduling problem, the state file or telemetry fails, or works again |
| control   | fault                | WARNING | a pile reports a fault, or does not follow its setpoint (about the pile) |
| control   | fault-cleared        | INFO    | it no longer does                                     |
| control   | observed             | INFO    | what the control step noticed following the site: arrivals, departures, a vehicle full or staying late, a new site limit |
| control   | curtailing           | INFO    | the site limit starts holding vehicles back           |
| control   | curtailment-ended    | INFO    | it no longer does                                     |
| control   | reload               | INFO    | a reload ended a session                              |
| operator  | override             | WARNING | an operator lowered the site limit                    |
| operator  | override-ended       | INFO    | the override was withdrawn or ran out                 |
| operator  | reload               | INFO    | a new config was applied                              |
| simulator | scripted-fault       | WARNING | a scripted fault starts                               |
| simulator | scripted-fault-ended | INFO    | it ends                                               |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

DeviceKind = Literal["pile", "meter", "terminal"]


@dataclass(frozen=True)
class DeviceRef:
    """One device of the station: a pile, the grid meter, or the utility's terminal."""

    kind: DeviceKind
    id: str

    @classmethod
    def pile(cls, pile_id: str) -> DeviceRef:
        """The pile `pile_id`."""
        return cls("pile", pile_id)

    @classmethod
    def meter(cls, meter_id: str) -> DeviceRef:
        """The grid meter `meter_id`."""
        return cls("meter", meter_id)

    @classmethod
    def terminal(cls, terminal_id: str) -> DeviceRef:
        """The utility's terminal `terminal_id`."""
        return cls("terminal", terminal_id)

    @property
    def label(self) -> str:
        """How the device is named to people: "pile P03"."""
        return f"{self.kind} {self.id}"


class Source(StrEnum):
    """Who or what an event comes from."""

    CONTROL = "control"
    DEVICE = "device"
    OPERATOR = "operator"
    SIMULATOR = "simulator"


class Kind(StrEnum):
    """What an event says (the module docstring tells which source tells which)."""

    FAILED = "failed"
    RECOVERED = "recovered"
    LATE = "late"
    IN_TIME = "in-time"
    FAULT = "fault"
    FAULT_CLEARED = "fault-cleared"
    OBSERVED = "observed"
    CURTAILING = "curtailing"
    CURTAILMENT_ENDED = "curtailment-ended"
    RELOAD = "reload"
    OVERRIDE = "override"
    OVERRIDE_ENDED = "override-ended"
    SCRIPTED_FAULT = "scripted-fault"
    SCRIPTED_FAULT_ENDED = "scripted-fault-ended"


# The level each kind is logged at (the module docstring's table); kinds not named are INFO.
LEVELS: Mapping[Kind, int] = {
    Kind.FAILED: logging.ERROR,
    Kind.LATE: logging.WARNING,
    Kind.FAULT: logging.WARNING,
    Kind.OVERRIDE: logging.WARNING,
    Kind.SCRIPTED_FAULT: logging.WARNING,
}


@dataclass(frozen=True)
class Event:
    """One thing the operator is told: at `time` (station epoch seconds), from `source`, of
    `kind`, about `device` if it is about one, in the words of `text`."""

    time: float
    source: Source
    kind: Kind
    text: str
    device: DeviceRef | None = None

    @property
    def level(self) -> int:
        """The logging level it is logged at: a fault's, or information."""
        return LEVELS.get(self.kind, logging.INFO)

    def log(self, logger: logging.Logger) -> None:
        """Log the event's text at its level."""
        logger.log(self.level, "%s", self.text)
