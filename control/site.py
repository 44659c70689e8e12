"""What the controller knows of the site at one instant, and how fresh each piece is.

A `Feed` keeps one device's latest reading and its `base.health.Health`: told once when the
device fails and once when it recovers, never in between, as events from the device about it.
A `SiteSnapshot` gathers the feeds of one control cycle.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, TypeVar

from base.events import DeviceRef, Source
from base.health import Health, Notify
from base.stationdevices import PileConfig
from drivers.errors import DriverError
from drivers.meter import MeterReading
from drivers.pile import PileReading

log = logging.getLogger(__name__)
T = TypeVar("T")


class Feed(Generic[T]):
    """The latest good reading of one device and whether the device is healthy.

    A device is unhealthy while it does not answer or its answers fail a plausibility check;
    its `health` tells `notify` once when that starts and once when it ends.
    """

    def __init__(self, device: DeviceRef, notify: Notify | None = None) -> None:
        self.device = device
        self.health = Health(
            device.label, notify=notify, logger=log, source=Source.DEVICE, device=device
        )
        self.value: T | None = None
        self.at: float | None = None
        self.error: DriverError | None = None

    @property
    def label(self) -> str:
        """The device's name ("pile P03")."""
        return self.device.label

    @property
    def ok(self) -> bool:
        """True while the device answers plausibly."""
        return self.health.ok

    @property
    def failed_since(self) -> float | None:
        """When the current failure began (None while healthy)."""
        return self.health.since

    @property
    def episodes(self) -> int:
        """How many times the device has started failing."""
        return self.health.episodes

    def succeeded(self, value: T, now: float) -> bool:
        """Store a reading; return True if the device has just recovered."""
        self.value, self.at, self.error = value, now, None
        return self.health.recover(now)

    def failed(self, error: DriverError, now: float) -> bool:
        """Record a failure; return True if the device has just started failing."""
        self.error = error
        return self.health.fail(now, error.message)

    def fresh(self, now: float, max_age_s: float) -> T | None:
        """The reading if it is no older than `max_age_s`, else None."""
        if self.value is None or self.at is None or now - self.at > max_age_s:
            return None
        return self.value


@dataclass(frozen=True)
class PileView:
    """One pile in a snapshot: its config, its fresh reading (None if stale) and its last one.

    `current` is False when the fresh reading is from an earlier cycle (this cycle's read failed):
    such data may hold or lower power, never raise it. `armed` is False while the controller has
    not been able to set the pile's fail-safe: what it falls back to on its own is then unknown.

    What a cycle asks of every pile (its id, limits and what its vehicle wants) is worked out
    once, as the view is made; the rest when first asked (`cached_property`: the fields are
    frozen). A pile at rest keeps its view from step to step, and all of it with it.
    """

    config: PileConfig
    reading: PileReading | None
    last: PileReading | None
    current: bool = True
    armed: bool = True
    # The pile's id.
    id: str = field(init=False, repr=False, compare=False)
    # The lower of the configured and the reported rating.
    max_kw: float = field(init=False, repr=False, compare=False)
    # The higher of the configured and the reported minimum.
    min_kw: float = field(init=False, repr=False, compare=False)
    # What the pile may discharge (0 for a charge-only pile).
    max_discharge_kw: float = field(init=False, repr=False, compare=False)
    # What the vehicle would take now (0 without a vehicle, or when it is full).
    wants_kw: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Set once here, in place of a `cached_property` each: every cycle asks all of them of
        # every pile, and a cached property's first look costs more than working it out.
        config, reading = self.config, self.reading
        if reading is None:
            max_kw, min_kw = config.max_kw, config.min_kw
            max_discharge_kw, wants_kw = config.max_discharge_kw, 0.0
        else:
            max_kw = min(config.max_kw, reading.max_charge_kw)
            min_kw = max(config.min_kw, reading.min_kw)
            max_discharge_kw = min(config.max_discharge_kw, reading.max_discharge_kw)
            if not reading.state.vehicle_present:
                wants_kw = 0.0
            elif reading.ev_max_kw is None:
                wants_kw = max_kw
            else:
                wants_kw = min(max_kw, reading.ev_max_kw)
        put = object.__setattr__  # as a frozen dataclass sets its own fields
        put(self, "id", config.id)
        put(self, "max_kw", max_kw)
        put(self, "min_kw", min_kw)
        put(self, "max_discharge_kw", max_discharge_kw)
        put(self, "wants_kw", wants_kw)

    @cached_property
    def on_its_own_kw(self) -> float:
        """What the pile may draw when it falls back on its own: its fallback power if the
        controller set it, else (not knowing) its rating."""
        return self.config.fallback_kw if self.armed else self.config.max_kw

    @cached_property
    def vehicle_present(self) -> bool:
        """True if a fresh reading shows a vehicle plugged in."""
        return self.reading is not None and self.reading.state.vehicle_present


@dataclass(frozen=True)
class SiteSnapshot:
    """Everything one control cycle decides from."""

    time: float
    limit_kw: float
    grid_kw: float | None
    meter: MeterReading | None
    piles: tuple[PileView, ...]
    band: str
    price: float
    meter_current: bool = True
    # Worked out once, as the snapshot is made (a cycle asks for them often): the piles with a
    # fresh reading, those without, and the measured power of the first.
    read: tuple[PileView, ...] = field(init=False, repr=False, compare=False)
    blind: tuple[PileView, ...] = field(init=False, repr=False, compare=False)
    piles_kw: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        read = tuple(p for p in self.piles if p.reading is not None)
        put = object.__setattr__  # as a frozen dataclass sets its own fields
        put(self, "read", read)
        put(self, "blind", tuple(p for p in self.piles if p.reading is None))
        put(self, "piles_kw", sum(p.reading.power_kw for p in read if p.reading is not None))

    @property
    def background_kw(self) -> float | None:
        """The site's other load: grid minus piles (None without a fresh meter reading)."""
        if self.grid_kw is None or any(p.reading is None for p in self.piles):
            return None
        return self.grid_kw - self.piles_kw


class BackgroundWatch:
    """The highest background load seen recently: the worst case to assume when blind."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._maxima: deque[tuple[float, float]] = deque()

    def add(self, now: float, kw: float) -> None:
        """Record a measured background load."""
        while self._maxima and self._maxima[-1][1] <= kw:
            self._maxima.pop()
        self._maxima.append((now, kw))
        self._expire(now)

    def highest(self, now: float) -> float | None:
        """The maximum over the window, or None with no recent sample."""
        self._expire(now)
        return self._maxima[0][1] if self._maxima else None

    def _expire(self, now: float) -> None:
        while self._maxima and self._maxima[0][0] < now - self.window_s:
            self._maxima.popleft()
