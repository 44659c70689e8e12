"""What a run records: the interface the daemon's telemetry writer offers both shells.

Fast simulation records its steps through it exactly as the daemon does, without depending on
the daemon's services.
"""

from __future__ import annotations

from typing import Protocol

from base.events import Event
from control.step import Cycle
from scheduler.plan import Plan


class Recorder(Protocol):
    """Where cycles, plans and events go (the telemetry writer implements it)."""

    def cycle(self, cycle: Cycle, *, block: bool = False) -> None:
        """Record one control cycle."""
        ...

    def plan(self, plan: Plan, when: float, *, block: bool = False) -> None:
        """Record a new plan."""
        ...

    def event(self, event: Event, *, block: bool = False) -> None:
        """Record an event."""
        ...
