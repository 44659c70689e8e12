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
from dataclasses import dataclass, field

from base.events import Event
from control.cycle import Control
from control.decider import Decision
from control.site import SiteSnapshot


@dataclass(frozen=True)
class Cycle:
    """One pass of a shell's loop: what was seen, what was wanted, what was written, and the
    energy of each pile's session in progress, by its account (`control.ledger`)."""

    time: float
    snapshot: SiteSnapshot
    budget_kw: float
    targets: Mapping[str, float]
    setpoints: Mapping[str, float]
    written: Mapping[str, bool]
    session_kwh: Mapping[str, float] = field(default_factory=dict)

    @property
    def wanted_kw(self) -> float:
        """What the connected vehicles would take together."""
        return sum(p.wants_kw for p in self.snapshot.piles)


@dataclass(frozen=True)
class Step:
    """What one step decided, and what it noticed on the way."""

    decision: Decision
    events: tuple[Event, ...]


def cycle_of(
    now: float,
    snapshot: SiteSnapshot,
    decision: Decision,
    written: Mapping[str, bool],
    control: Control,
) -> Cycle:
    """The record of a pass that made `decision` from `snapshot` and wrote what `written` says,
    with each session's energy as its account has it now."""
    return Cycle(
        now,
        snapshot,
        decision.budget_kw,
        decision.targets,
        decision.setpoints,
        written,
        {pile: session.delivered_kwh for pile, session in control.sessions.items()},
    )


def step(
    control: Control,
    snapshot: SiteSnapshot,
    dt: float,
    plan: Callable[[SiteSnapshot], None] | None = None,
) -> Step:
    """Follow the site over the `dt` seconds to `snapshot` (sessions and their energy accounts
    included) and decide the setpoints.

    `plan` runs between seeing the site and deciding: fast simulation plans there, inline; the
    daemon's plan loop runs on its own and leaves it None.
    """
    events = tuple(control.observe(snapshot, dt))
    if plan is not None:
        plan(snapshot)
    return Step(control.decide(snapshot, dt), events)
