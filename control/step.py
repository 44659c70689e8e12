"""One control step, readings and time in, decisions out: the same for the daemon and fast
simulation.

The shells read the site into a `SiteSnapshot` (the daemon from its devices, fast simulation
from the plant through the same checks), call `step`, write the setpoints it decided and tell
`Control.committed` which were written. Nothing here waits or touches a device.

What `Control.observe` noticed comes back as events from control: what it observed following the
site, and a pile's fault (reported, or not following its setpoint) and its end, about the pile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from base.events import Event
from control.cycle import Control
from control.decider import Decision
from control.ledger import SessionLedger
from control.site import SiteSnapshot


@dataclass(frozen=True)
class Cycle:
    """One pass of a shell's loop: what was seen, what was wanted, what was written."""

    time: float
    snapshot: SiteSnapshot
    budget_kw: float
    targets: Mapping[str, float]
    setpoints: Mapping[str, float]
    written: Mapping[str, bool]

    @property
    def wanted_kw(self) -> float:
        """What the connected vehicles would take together."""
        return sum(p.wants_kw for p in self.snapshot.piles)


@dataclass(frozen=True)
class Step:
    """What one step decided, and what it noticed on the way."""

    decision: Decision
    events: tuple[Event, ...]


def step(
    control: Control,
    snapshot: SiteSnapshot,
    dt: float,
    ledger: SessionLedger | None = None,
    plan: Callable[[SiteSnapshot], None] | None = None,
) -> Step:
    """Follow the site over the `dt` seconds to `snapshot` and decide the setpoints.

    With a `ledger`, sessions' energy accounts close before the controller sees a departure (so
    a session leaves with its final energy) and open or count after it has seen arrivals.
    `plan` runs between seeing the site and deciding: fast simulation plans there, inline; the
    daemon's plan loop runs on its own and leaves it None.
    """
    if ledger is not None:
        ledger.close_ended(snapshot)
    events = tuple(control.observe(snapshot, dt))
    if ledger is not None:
        ledger.follow(snapshot, control.sessions)
    if plan is not None:
        plan(snapshot)
    return Step(control.decide(snapshot, dt), events)
