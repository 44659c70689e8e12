"""Every reading checked before the controller uses it, the same way in the daemon and in simulation.

`Sensors` keeps one `Feed` per device (grid meter, the utility's terminal, each pile) and turns
the results of one cycle's reads into a `SiteSnapshot`. A reading is used only if it is fresh
and plausible:

- age: a reading older than `stale_after_s` is not used; one from an earlier cycle (this cycle's
  read failed or came late) may hold or lower power, never raise it;
- range: grid power that is NaN or beyond what the connection can carry, pile power beyond what
  the pile can draw, are failures of the device, not measurements;
- frozen: a meter whose every value stays the same while the piles it measures change, or for
  `frozen_after_s`, has stopped measuring. A meter is judged by the piles only once it has had
  the chance to move: a value read again one period later may simply not have been updated yet
  (the meter's own measuring interval, a subscription's next publish), and the piles must have
  been measured when the value first came. After start-up and after a meter could not be read
  (a reconnect), its next value starts the watch afresh;
- clock: a meter whose own clock jumps is not trusted until the clock has been steady again for a
  few readings;
- follow: a pile whose own read-back says it does not apply what it was told is in fault (the
  follow judge, `control.follow`, decides).

Each failure is reported once when it starts and once when it ends, as an event about the device.

The site limit is the transformer's, lowered by any utility limit the meters relay and by an
operator's override (`override_limit`, from the API), which may only lower it and ends by itself.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, TypeVar

from base.config import Station
from base.events import DeviceRef, Event, Kind, Source
from base.health import Notify
from base.stationdevices import PileConfig
from base.tariff import Tariff
from control.follow import FollowWatch
from control.site import Feed, PileView, SiteSnapshot
from drivers.errors import BadValue, DriverError
from drivers.meter import MeterReading
from drivers.pile import PileReading

T = TypeVar("T")
log = logging.getLogger(__name__)
LimitSource = Literal["transformer", "utility", "operator"]

# Readings a meter's clock must keep steady after a jump before it is trusted again.
STEADY_READINGS = 3
# A meter value unchanged for more than this many control periods was read again after the meter
# had a whole period to move: only then can the piles' moves call it frozen.
MOVE_CHANCE_PERIODS = 1.5


@dataclass(frozen=True)
class LimitOverride:
    """An operator's lower site limit, in force from `set_at` until `until` (station time)."""

    kw: float
    until: float
    set_at: float
    reason: str = ""


@dataclass
class _MeterWatch:
    """What one meter's earlier readings say about the next one."""

    same: MeterReading | None = None
    same_since: float = 0.0
    # The piles' power when `same` first came (None until the piles have been measured).
    piles_kw_then: float | None = None
    clock_offset: float | None = None
    steady_needed: int = 0
    frozen: bool = False

    def interrupted(self) -> None:
        """The meter could not be read: its next value starts the watch afresh (a frozen meter
        that says the same again is still frozen)."""
        if not self.frozen:
            self.same, self.piles_kw_then = None, None


class Sensors:
    """The feeds of one station's devices, with freshness and plausibility checks."""

    def __init__(
        self, station: Station, notify: Notify | None = None, follow: FollowWatch | None = None
    ) -> None:
        """`follow`: the follow judge to use (the controller's, so that one judge decides);
        by default one with the station's thresholds."""
        self.station = station
        self.follow = follow if follow is not None else FollowWatch.of(station.control)
        self.settings = station.control
        gm, term = station.grid_meter, station.terminal
        self.meter: Feed[MeterReading] = Feed(DeviceRef.meter(gm.id), notify)
        self.terminal: Feed[MeterReading] | None = (
            None if term is None else Feed(DeviceRef.terminal(term.id), notify)
        )
        self.piles: dict[str, Feed[PileReading]] = {
            p.id: Feed(DeviceRef.pile(p.id), notify) for p in station.piles
        }
        self._watches: dict[DeviceRef, _MeterWatch] = {}
        # The piles' power in the last snapshot (None before the first).
        self._piles_kw: float | None = None
        self._notify = notify
        self._late: set[DeviceRef] = set()
        self._relayed: dict[DeviceRef, float | None] = {}
        # Piles whose fail-safe the controller could not set (the daemon keeps this up to date).
        self.unarmed: set[str] = set()
        # Each pile's view in the last snapshot (`_view`).
        self._views: dict[str, PileView] = {}
        # Each pile's last reading that passed its checks for good (`FollowWatch.settled`): the
        # reading, the config it was checked against, when, and what the checks made of it. A
        # pile at rest gives the very same reading step after step.
        self._passed: dict[str, tuple[PileReading, PileConfig, float, PileReading]] = {}
        self.override: LimitOverride | None = None
        # What set the limit of the last snapshot: "transformer", "utility" or "operator".
        self.limit_source: LimitSource = "transformer"
        # The band of the last snapshot: its tariff, and from when until when it holds.
        self._band: tuple[Tariff, float, float, str] | None = None

    @property
    def meter_max_kw(self) -> float:
        """The largest grid power that can be a measurement."""
        configured = self.settings.meter_max_kw
        return configured if configured is not None else 2.0 * self.station.transformer.rating_kva

    def feeds(self) -> list[Feed[MeterReading] | Feed[PileReading]]:
        """Every feed, meters first."""
        meters: list[Feed[MeterReading] | Feed[PileReading]] = [self.meter]
        if self.terminal is not None:
            meters.append(self.terminal)
        return [*meters, *self.piles.values()]

    # -- taking readings ---------------------------------------------------------------------

    def take_meter(
        self, result: MeterReading | DriverError, now: float, at: float | None = None
    ) -> bool:
        """The grid meter's read result (measured at `at`, default `now`); True if it recovered."""
        return self._take_meter(self.meter, result, now, now if at is None else at)

    def take_terminal(
        self, result: MeterReading | DriverError, now: float, at: float | None = None
    ) -> bool:
        """The utility terminal's read result; True if it recovered."""
        if self.terminal is None:
            return False
        return self._take_meter(self.terminal, result, now, now if at is None else at)

    def take_pile(
        self, pile_id: str, result: PileReading | DriverError, now: float, at: float | None = None
    ) -> bool:
        """One pile's read result; True if it has just recovered (it may need re-arming)."""
        feed = self.piles[pile_id]
        at = now if at is None else at
        if not isinstance(result, DriverError):
            result = self._check_pile(pile_id, result, at)
        return _store(feed, result, at)

    def _take_meter(
        self, feed: Feed[MeterReading], result: MeterReading | DriverError, now: float, at: float
    ) -> bool:
        if isinstance(result, DriverError):
            watch = self._watches.get(feed.device)
            if watch is not None:
                watch.interrupted()
        else:
            result = self._check_meter(feed, result, at)
        return _store(feed, result, at)

    def _check_meter(
        self, feed: Feed[MeterReading], reading: MeterReading, at: float
    ) -> MeterReading | DriverError:
        device, label = feed.device, feed.label
        power = reading.power_kw
        if not math.isfinite(power):
            return BadValue(label, f"power reads {power}: not a measurement")
        if abs(power) > self.meter_max_kw:
            return BadValue(
                label,
                f"power reads {power:,.0f} kW, beyond the {self.meter_max_kw:,.0f} kW "
                "the connection can carry: not a measurement",
            )
        watch = self._watches.setdefault(device, _MeterWatch())
        jumped = self._check_clock(label, watch, reading, at)
        if jumped is not None:
            return jumped
        if reading != watch.same:
            watch.same, watch.same_since, watch.piles_kw_then = reading, at, self._piles_kw
            watch.frozen = False
            return reading
        still_for = at - watch.same_since
        then, piles_kw = watch.piles_kw_then, self._piles_kw
        moved = 0.0 if then is None or piles_kw is None else abs(piles_kw - then)
        had_the_chance = still_for > MOVE_CHANCE_PERIODS * self.settings.period_s
        if (
            watch.frozen
            or still_for >= self.settings.frozen_after_s
            or (had_the_chance and moved > self._frozen_move_kw())
        ):
            # Frozen until a value moves again.
            watch.frozen = True
            return BadValue(
                label,
                f"frozen: every value unchanged for {still_for:.0f} s"
                + (f" while the piles moved {moved:.0f} kW" if moved > 1 else ""),
            )
        return reading

    def _frozen_move_kw(self) -> float:
        """A change in the piles' power that a working meter cannot miss."""
        return max(20.0, 0.02 * self.station.limit_kw)

    def _check_clock(
        self, device: str, watch: _MeterWatch, reading: MeterReading, at: float
    ) -> DriverError | None:
        if reading.device_time is None:
            return None
        offset = reading.device_time - at
        before, watch.clock_offset = watch.clock_offset, offset
        if before is None:
            return None
        step = offset - before
        if abs(step) > self.settings.clock_jump_s:
            watch.steady_needed = STEADY_READINGS
            return BadValue(device, f"its clock jumped by {step:+.0f} s: readings not trusted")
        if watch.steady_needed > 0:
            watch.steady_needed -= 1
            if watch.steady_needed > 0:
                return BadValue(device, "its clock jumped: waiting for it to keep steady time")
        return None

    def _check_pile(
        self, pile_id: str, reading: PileReading, at: float
    ) -> PileReading | DriverError:
        config = self.station.pile(pile_id)
        passed = self._passed.get(pile_id)
        if passed is not None and passed[0] is reading and passed[1] is config and at >= passed[2]:
            return passed[3]
        power = reading.power_kw
        # Beyond half again its rating (plus a little for small piles) a pile cannot draw.
        top = 1.5 * config.max_kw + 10.0
        bottom = -(1.5 * config.max_discharge_kw + 10.0)
        if not math.isfinite(power) or not bottom <= power <= top:
            return BadValue(
                self.piles[pile_id].label,
                f"power reads {power:g} kW, outside what the pile can draw",
            )
        judged = self.follow.judge(config, reading, at)
        if self.follow.settled(reading, at):
            self._passed[pile_id] = (reading, config, at, judged)
        return judged

    # -- the cycle's snapshot ----------------------------------------------------------------

    def _view(
        self, pid: str, reading: PileReading | None, last: PileReading | None, current: bool
    ) -> PileView:
        """The pile's view: the last one again while all it is made of is the same (a pile at
        rest gives the very same reading step after step), so that what the cycle works out of
        a view (`PileView`'s cached id) is kept too."""
        config = self.station.pile(pid)
        armed = pid not in self.unarmed
        view = self._views.get(pid)
        if (
            view is None
            or view.reading is not reading
            or view.last is not last
            or view.config is not config
            or view.current != current
            or view.armed != armed
        ):
            view = self._views[pid] = PileView(config, reading, last, current=current, armed=armed)
        return view

    def snapshot(self, now: float, tariff: Tariff) -> SiteSnapshot:
        """What the controller may use this cycle."""
        max_age = self.settings.stale_after_s
        self._check_late(now)
        views = tuple(
            self._view(pid, feed.fresh(now, max_age), feed.value, feed.at == now)
            for pid, feed in self.piles.items()
        )
        meter = self.meter.fresh(now, max_age)
        meter_current = self.meter.at == now
        terminal = None if self.terminal is None else self.terminal.fresh(now, max_age)
        if meter is None and terminal is not None and self.terminal is not None:
            # The terminal measures the same connection: it stands in for a lost grid meter.
            meter = terminal
            meter_current = self.terminal.at == now
        snapshot = SiteSnapshot(
            time=now,
            limit_kw=self._overridden_limit(self._relayed_limit(now, max_age), now),
            grid_kw=None if meter is None else meter.power_kw,
            meter=meter,
            piles=views,
            band=(band := self._band_at(tariff, now)),
            price=tariff.band_prices[band],
            meter_current=meter_current,
        )
        piles_kw = self._piles_kw = snapshot.piles_kw
        for watch in self._watches.values():
            if watch.same is not None and watch.piles_kw_then is None:
                # The meter's value came before the piles were first measured: they were this.
                watch.piles_kw_then = piles_kw
        return snapshot

    def _band_at(self, tariff: Tariff, now: float) -> str:
        """`tariff.band_at(now)`, worked out again only where the band may change
        (`Tariff.next_change`): a few times a day, where every cycle asks."""
        kept = self._band
        if kept is None or kept[0] is not tariff or not kept[1] <= now < kept[2]:
            until = tariff.next_change(now).timestamp()
            kept = self._band = (tariff, now, until, tariff.band_at(now))
        return kept[3]

    def _check_late(self, now: float) -> None:
        """Report devices whose answers arrive more than a control period late."""
        period = self.settings.period_s
        for feed in self.feeds():
            at = feed.at
            # Health last: most feeds answered this cycle.
            late = at is not None and now - at > period and feed.ok
            if late == (feed.device in self._late):
                continue
            if late:
                self._late.add(feed.device)
                assert feed.at is not None
                kind = Kind.LATE
                text = (
                    f"{feed.label}: answers {now - feed.at:.0f} s late: its readings may "
                    "hold or lower power, not raise it"
                )
            else:
                self._late.discard(feed.device)
                kind, text = Kind.IN_TIME, f"{feed.label}: answers in time again"
            self._tell(Event(now, Source.DEVICE, kind, text, feed.device))

    def _relayed_limit(self, now: float, max_age: float) -> float:
        """The transformer's limit, lowered by the utility limit the meters relay.

        A fresh reading says whether a utility limit is in force (None: the signal was
        withdrawn). While a meter that relayed one is lost, its last limit stays in force: the
        utility has not said it ended.
        """
        limit = self.station.limit_kw
        self.limit_source = "transformer"
        for feed in (self.meter, self.terminal):
            if feed is None:
                continue
            reading = feed.fresh(now, max_age)
            if reading is not None:
                relayed = reading.utility_limit_kw
                self._relayed[feed.device] = (
                    relayed if relayed is not None and relayed >= 0 else None
                )
            kept = self._relayed.get(feed.device)
            if kept is not None and kept < limit:
                limit, self.limit_source = kept, "utility"
        return limit

    @property
    def utility_limit_kw(self) -> float | None:
        """The lowest utility limit in force (relayed by a meter), or None."""
        kept = [kw for kw in self._relayed.values() if kw is not None]
        return min(kept) if kept else None

    # -- the operator's override -------------------------------------------------------------

    def override_limit(
        self, kw: float, until: float, now: float, reason: str = ""
    ) -> LimitOverride:
        """Lower the site limit to `kw` until station time `until` (replacing any override).

        Raises `ValueError` for a limit above the transformer's (an override only lowers the
        limit), a negative or non-finite one, or an expiry not in the future.
        """
        top = self.station.limit_kw
        if not math.isfinite(kw) or kw < 0:
            raise ValueError(f"a limit of {kw} kW is not a limit")
        if kw > top:
            raise ValueError(
                f"an override may only lower the site limit: {kw:,.0f} kW is above the "
                f"transformer's limit of {top:,.0f} kW"
            )
        if not math.isfinite(until) or until <= now:
            raise ValueError("an override must expire in the future")
        self.override = LimitOverride(kw, until, now, reason)
        text = f"operator override: site limit at most {kw:,.0f} kW" + _why(reason)
        self._tell(Event(now, Source.OPERATOR, Kind.OVERRIDE, text))
        return self.override

    def clear_override(self, now: float) -> LimitOverride | None:
        """End the operator's override now; return it (None if there was none)."""
        ended, self.override = self.override, None
        if ended is not None:
            self._tell(_override_ended(now, ended, "withdrawn"))
        return ended

    def _overridden_limit(self, limit: float, now: float) -> float:
        override = self.override
        if override is not None and now >= override.until:
            self.override = None
            self._tell(_override_ended(now, override, "expired"))
        elif override is not None and override.kw < limit:
            limit, self.limit_source = override.kw, "operator"
        return limit

    def _tell(self, event: Event) -> None:
        event.log(log)
        if self._notify is not None:
            self._notify(event)


def _why(reason: str) -> str:
    return f" ({reason})" if reason else ""


def _override_ended(now: float, override: LimitOverride, how: str) -> Event:
    text = f"operator override of {override.kw:,.0f} kW {how}"
    return Event(now, Source.OPERATOR, Kind.OVERRIDE_ENDED, text)


def _store(feed: Feed[T], result: T | DriverError, at: float) -> bool:
    if isinstance(result, DriverError):
        feed.failed(result, at)
        return False
    return feed.succeeded(result, at)
