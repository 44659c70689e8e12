"""The one judge of whether piles do what they are told.

Drivers only report facts: what they last wrote and since when, what the device says it applies
(and whether it uses its setpoint at all), the step it reports in, and what it draws. `FollowWatch`
judges them with one set of thresholds, the station's [control] `follow_grace_s`,
`follow_tolerance_kw` and `follow_tolerance_pct` (never finer than the device's own step), in two
ways:

- a device whose own read-back contradicts what it was written, once it has had the grace to
  apply it, is at fault (`judge`): its reading is marked `PileState.FAULT`, with fault code
  `NOT_FOLLOWING` (unless it reports its own) and the reason, before the controller uses it;
- a pile that draws clearly more than the highest setpoint it was given over the last grace
  (which covers its delay and ramp), or clearly less than the lowest (and its vehicle would take
  more), is flagged (`check`). While flagged:

  - a pile drawing more counts its excess as load the controller does not control, so the
    others make room for it;
  - a pile drawing less is offered only a little more than it draws, so the headroom it does
    not use goes to the others.

  A flagged pile is trusted again once it has followed what it is told for three graces.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from base.devicemap import PileState
from base.events import DeviceRef, Event, Kind, Source
from base.stationdevices import PileConfig
from base.stationsettings import ControlSettings
from control.site import PileView
from drivers.pile import PileReading

# A reading's fault code when the pile does not apply what it was told.
NOT_FOLLOWING = 900

# A condition must hold this long (s) before a pile is flagged or a flag is cleared: one
# cycle's reading is not enough to call a pile faulty.
SETTLE_S = 5.0
# A flagged pile must follow for this many graces before it is trusted again.
CLEAR_GRACES = 3


class Deviation(StrEnum):
    """How a pile fails to follow."""

    OVER = "over"
    UNDER = "under"


@dataclass
class _Track:
    told: deque[tuple[float, float]] = field(default_factory=deque)
    flagged: Deviation | None = None
    seen_since: float | None = None
    clear_since: float | None = None
    drawing_kw: float = 0.0
    told_kw: float = 0.0
    flagged_at_kw: float = 0.0


class FollowWatch:
    """Which piles do not do what they were told, and by how much."""

    def __init__(
        self,
        grace_s: float,
        tolerance_kw: float,
        tolerance_pct: float,
        notify: Callable[[Event], None] | None = None,
    ) -> None:
        """`notify` hears a pile flagged for not following (a fault of the pile) and its end."""
        self.grace_s = grace_s
        self.tolerance_kw = tolerance_kw
        self.tolerance_pct = tolerance_pct
        self.notify = notify
        self._tracks: dict[str, _Track] = {}
        # Each pile's tolerance and what it was worked out from (its config and the step it
        # reports in): asked for every pile every cycle, it changes only with those.
        self._tolerances: dict[str, tuple[PileConfig, float, float]] = {}

    @classmethod
    def of(
        cls, settings: ControlSettings, notify: Callable[[Event], None] | None = None
    ) -> FollowWatch:
        """The judge with a station's [control] thresholds."""
        return cls(
            settings.follow_grace_s,
            settings.follow_tolerance_kw,
            settings.follow_tolerance_pct,
            notify,
        )

    # -- what the device says it applies -----------------------------------------------------

    def misapplied(self, config: PileConfig, reading: PileReading, at: float) -> str:
        """Why the pile's own reading, taken at `at`, says it does not apply what it was told
        (empty: it does, or it has not yet had the grace to)."""
        told, since = reading.commanded_kw, reading.commanded_since
        if told is None or since is None or at - since < self.grace_s:
            return ""
        if reading.setpoint_unused:
            return reading.setpoint_unused
        if reading.fallback_countdown_s == 0:
            return ""  # on its fallback power: the controller fell silent, the pile did right
        applied = reading.applied_setpoint_kw
        if applied > max(told, 0.0) + self._tolerance(config, reading.resolution_kw):
            return f"applies {applied:.1f} kW, told {told:.1f} kW"
        return ""

    def settled(self, reading: PileReading, at: float) -> bool:
        """Whether `judge` says of `reading` at any time from `at` on what it says at `at`: only
        the grace a new setpoint has depends on the time."""
        since = reading.commanded_since
        return reading.commanded_kw is None or since is None or at - since >= self.grace_s

    def judge(self, config: PileConfig, reading: PileReading, at: float) -> PileReading:
        """The reading as the controller may use it: a pile that does not apply what it was
        told (`misapplied`) is in fault, whatever state it reports."""
        why = self.misapplied(config, reading, at)
        if not why:
            return reading
        return replace(
            reading,
            state=PileState.FAULT,
            fault_code=reading.fault_code or NOT_FOLLOWING,
            fault=why,
        )

    # -- what the pile draws -------------------------------------------------------------------

    def told(self, pile_id: str, now: float, kw: float) -> None:
        """Record the setpoint written to `pile_id` at `now`."""
        track = self._tracks.get(pile_id)
        if track is None:
            track = self._tracks[pile_id] = _Track()
        if track.told and track.told[-1][1] == kw:
            return
        track.told.append((now, kw))
        self._prune(track, now)

    def _prune(self, track: _Track, now: float) -> None:
        # Keep the setpoint in force at the start of the window, and everything after.
        while len(track.told) > 1 and track.told[1][0] <= now - self.grace_s:
            track.told.popleft()

    def flagged(self, pile_id: str) -> Deviation | None:
        """How the pile is failing to follow, if it is."""
        track = self._tracks.get(pile_id)
        return None if track is None else track.flagged

    def excess_kw(self, pile_id: str) -> float:
        """What a pile flagged as drawing too much draws beyond its setpoint now."""
        track = self._tracks.get(pile_id)
        if track is None or track.flagged is not Deviation.OVER:
            return 0.0
        return max(0.0, track.drawing_kw - track.told_kw)

    def cap_kw(self, view: PileView) -> float | None:
        """The most a pile flagged as drawing too little should be offered (None: no cap)."""
        track = self._tracks.get(view.id)
        if track is None or track.flagged is not Deviation.UNDER:
            return None
        return track.drawing_kw + self._view_tolerance(view)

    def check(self, view: PileView, now: float) -> None:
        """Compare the pile's fresh reading with what it was told."""
        track = self._tracks.get(view.id)
        reading = view.reading
        if track is None or not track.told or reading is None or not view.current:
            return
        self._prune(track, now)
        if track.told[0][0] > now - self.grace_s:
            return  # not yet a whole grace of history: the pile may still be on its way
        if len(track.told) == 1:  # one setpoint over the whole grace (most cycles)
            highest = lowest = latest = track.told[0][1]
        else:
            told = [kw for _, kw in track.told]
            highest, lowest, latest = max(told), min(told), told[-1]
        tolerance = self._tolerance(view.config, reading.resolution_kw)
        drawing = reading.power_kw
        track.drawing_kw, track.told_kw = drawing, latest
        over = drawing > highest + tolerance
        wants = view.wants_kw
        under = lowest > 0 and drawing < min(lowest, wants) - tolerance and wants > drawing
        deviation = Deviation.OVER if over else Deviation.UNDER if under else None
        if track.flagged is None:
            if deviation is None:
                track.seen_since = None
                return
            if track.seen_since is None:
                track.seen_since = now
            if now - track.seen_since >= SETTLE_S:
                track.flagged, track.seen_since, track.clear_since = deviation, None, None
                track.flagged_at_kw = drawing
                self._tell(
                    now,
                    view.id,
                    Kind.FAULT,
                    f"not following: draws {drawing:.0f} kW, told {latest:.0f} kW"
                    + (" (counted as load it takes on its own)" if over else " (offered less)"),
                )
            return
        if track.flagged is Deviation.UNDER:
            # Offered only a little more than it draws, a stuck pile looks as if it followed:
            # it has to show it can rise (or its vehicle has to want no more).
            recovering = (
                drawing >= track.flagged_at_kw + tolerance / 2 or wants <= drawing + tolerance
            )
            if over:
                deviation = Deviation.OVER
            elif not recovering:
                deviation = Deviation.UNDER
        if deviation is not None:
            # A pile may swing from one to the other (a slow ramp): still the same failure.
            if deviation is not track.flagged:
                track.flagged_at_kw = drawing
            track.flagged, track.clear_since = deviation, None
            return
        # Following what it is told for a while earns it its share back.
        if track.clear_since is None:
            track.clear_since = now
        if now - track.clear_since >= CLEAR_GRACES * self.grace_s:
            track.flagged, track.clear_since = None, None
            self._tell(now, view.id, Kind.FAULT_CLEARED, "following its setpoint again")

    def forget(self, pile_id: str) -> None:
        """Drop what is known of a pile (it was removed)."""
        self._tracks.pop(pile_id, None)

    def _tolerance(self, config: PileConfig, resolution_kw: float) -> float:
        # Finer than the step the device takes and reports setpoints in, a difference is the
        # device's rounding, not a failure to follow.
        kept = self._tolerances.get(config.id)
        if kept is not None and kept[0] is config and kept[1] == resolution_kw:
            return kept[2]
        tolerance = max(self.tolerance_kw, self.tolerance_pct / 100 * config.max_kw, resolution_kw)
        self._tolerances[config.id] = (config, resolution_kw, tolerance)
        return tolerance

    def _view_tolerance(self, view: PileView) -> float:
        reading = view.reading
        return self._tolerance(view.config, 0.0 if reading is None else reading.resolution_kw)

    def _tell(self, now: float, pile_id: str, kind: Kind, what: str) -> None:
        if self.notify is not None:
            pile = DeviceRef.pile(pile_id)
            self.notify(Event(now, Source.CONTROL, kind, f"{pile.label}: {what}", pile))
