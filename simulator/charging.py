"""How a pile's power moves and what its vehicle takes, integrated exactly over a stretch of time.

Within a stretch the pile is told one limit `L` (kW, negative to discharge). Its power heads for
`L` at its ramp rate; a charging vehicle's BMS accepts at most `acceptance(soc)`: the vehicle's
maximum up to `taper_soc`, then `max_kw * (1 - soc) / (1 - taper_soc)` (the constant-voltage
phase, never below 5 % of the maximum), and nothing once the battery reaches its target. The BMS
cuts its demand at once; only the pile's rises are ramp-limited. So the power is
`min(ramp towards L, acceptance)`, which `advance` follows phase by phase in closed form:

- ramping: the power moves linearly (the energy is a trapezoid);
- flat: the pile holds `L` below what the battery accepts;
- accepting: the battery takes all it accepts: a constant below the taper, an exponential approach
  to full above it (`1 - soc` decays as `exp(-k t)`, `k = max_kw / (capacity (1 - taper_soc))`),
  a constant trickle at the 5 % floor.

The energy is exact for this model however long the stretch (a minute-long fast-simulation step
gives a vehicle what sixty one-second steps give it), with one approximation: a ramp that meets a
tapering acceptance is taken to meet it where the acceptance stood when the ramp began. `advance`
also returns the power's breakpoints, between which it is linear or convex (the exponential), so
the site's highest power and its energy above a limit follow from the breakpoints alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Below this fraction of its maximum, a tapering battery's acceptance stops falling.
TRICKLE = 0.05
# Discharging stops at this state of charge.
DISCHARGE_FLOOR_SOC = 0.05
_EPS_S = 1e-9
_EPS_KW = 1e-9


@dataclass
class Battery:
    """A vehicle's battery as its BMS sees it."""

    capacity_kwh: float
    soc: float
    soc_target: float
    max_kw: float
    taper_soc: float

    @property
    def full(self) -> bool:
        """True once the BMS has reached its target."""
        return self.soc >= self.soc_target - 1e-9

    def accepts_kw(self, soc: float) -> float:
        """What the BMS accepts at `soc`, as long as it is not full."""
        if soc <= self.taper_soc:
            return self.max_kw
        return max(TRICKLE, (1.0 - soc) / (1.0 - self.taper_soc)) * self.max_kw

    def acceptance_kw(self) -> float:
        """What the BMS accepts now."""
        return 0.0 if self.full else self.accepts_kw(self.soc)

    def room_kwh(self) -> float:
        """Energy until the target."""
        return max(0.0, (self.soc_target - self.soc) * self.capacity_kwh)

    def soc_accepting(self, kw: float) -> float:
        """The state of charge at which the BMS's acceptance falls to `kw` (1 if it never does)."""
        if kw >= self.max_kw:
            return self.taper_soc
        if kw <= TRICKLE * self.max_kw:
            return 1.0
        return 1.0 - kw * (1.0 - self.taper_soc) / self.max_kw


@dataclass
class Stretch:
    """What `advance` did: the energy the vehicle took (kWh, negative when discharged), the power
    at the end, and the power's breakpoints (time, kW) from start to end. A jump (a battery that
    reaches its target stops at once) is two breakpoints at one time."""

    kwh: float
    power_kw: float
    times: list[float]
    kw: list[float]


def ramp_seconds(kwh: float, p0: float, slope: float) -> float:
    """Seconds after which a power starting at `p0` kW and moving at `slope` kW/s has delivered
    `kwh` (the smallest non-negative root of p0 t + slope t^2 / 2 = 3600 kwh; inf if never)."""
    target = kwh * 3600.0
    if target <= 0:
        return 0.0
    if abs(slope) < 1e-12:
        return target / p0 if p0 > 0 else math.inf
    disc = p0 * p0 + 2.0 * slope * target
    if disc < 0:
        return math.inf
    denominator = p0 + math.sqrt(disc)
    # 2 target / (p0 + root) is (-p0 + root) / slope without its cancellation.
    return 2.0 * target / denominator if denominator > 0 else math.inf


def advance(
    battery: Battery | None,
    power_kw: float,
    limit_kw: float,
    ramp_kw_per_s: float,
    t0: float,
    t1: float,
) -> Stretch:
    """Move a pile from `t0` to `t1` under `limit_kw`, starting at `power_kw` (see the module).

    `battery` is updated in place; without one nothing flows (the power drops to 0 at once).
    """
    if battery is None:
        if power_kw == 0.0:
            return Stretch(0.0, 0.0, [t0, t1], [0.0, 0.0])
        return Stretch(0.0, 0.0, [t0, t0, t1], [power_kw, 0.0, 0.0])
    if t1 <= t0:
        return Stretch(0.0, power_kw, [t0, t1], [power_kw, power_kw])
    if limit_kw >= 0 and power_kw >= 0:
        return _charge(battery, power_kw, limit_kw, ramp_kw_per_s, t0, t1)
    return _bidirectional(battery, power_kw, limit_kw, ramp_kw_per_s, t0, t1)


class _Path:
    """Breakpoints and energy, appended phase by phase."""

    def __init__(self, t0: float, p0: float) -> None:
        self.times = [t0]
        self.kw = [p0]
        self.kwh = 0.0

    def point(self, t: float, p: float) -> None:
        self.times.append(t)
        self.kw.append(p)


def _charge(b: Battery, p: float, limit: float, rate: float, t0: float, t1: float) -> Stretch:
    path = _Path(t0, p)
    t = t0
    # Every phase either ends the stretch, fills the battery, or reaches a boundary of one of a
    # handful of regimes; the bound only guards against a rounding loop.
    for _ in range(10_000):
        left = t1 - t
        if left <= _EPS_S:
            break
        if b.full:
            if p != 0.0:
                path.point(t, 0.0)
                p = 0.0
            break
        accept = b.acceptance_kw()
        if p > accept + _EPS_KW:
            path.point(t, accept)  # the BMS cuts its demand at once
            p = accept
        goal = min(limit, accept)
        # Within a millionth of the battery's maximum, power is taken to be at a level.
        near = 1e-6 * b.max_kw
        flat_edge = _edge_kwh(b, p) if p > 0 else b.room_kwh()
        if (limit >= accept - near and p >= accept - near) or (
            abs(goal - p) <= near and flat_edge <= 1e-12
        ):
            # The battery takes all it accepts (also from a level it is just falling below).
            span, kwh = _accepting(b, left)
            t += span
            path.kwh += kwh
            p = b.accepts_kw(b.soc)
            path.point(t, p)
            continue
        if abs(goal - p) > near and rate > 0:
            slope = rate if goal > p else -rate
            span = min(left, abs(goal - p) / rate)
            # Going up, stop where the battery leaves its flat region or fills up, and take
            # what comes next from there. A ramp that meets a falling acceptance is taken to
            # meet it where it stands now.
            if goal < limit:
                edge = b.room_kwh() if b.soc > b.taper_soc else _edge_kwh(b, b.max_kw)
            else:
                edge = _edge_kwh(b, goal)
            if edge <= 1e-12:
                edge = b.room_kwh()
            kwh = (p + slope * span / 2.0) * span / 3600.0
            if kwh > edge:
                span = min(span, ramp_seconds(edge, p, slope))
                kwh = edge
            t += span
            p = max(0.0, p + slope * span)
            _take(b, kwh)
            path.kwh += kwh
            path.point(t, p)
            continue
        # Flat at the limit, below what the battery accepts, until acceptance falls to it.
        span = min(left, flat_edge * 3600.0 / p) if p > 0 else left
        kwh = p * span / 3600.0
        t += span
        _take(b, kwh)
        path.kwh += kwh
        path.point(t, p)
    else:  # pragma: no cover - a phase always makes progress
        raise RuntimeError("charging model made no progress")
    if path.times[-1] < t1:
        path.point(t1, p)
    return Stretch(path.kwh, p, path.times, path.kw)


def _take(b: Battery, kwh: float) -> None:
    b.soc = min(b.soc + kwh / b.capacity_kwh, 1.0)
    if abs(b.soc - b.soc_target) < 1e-12:
        b.soc = b.soc_target


def _edge_kwh(b: Battery, kw: float) -> float:
    """Energy the battery takes before its acceptance falls to `kw`, or it is full."""
    crossing = min(b.soc_accepting(kw), b.soc_target)
    return max(0.0, (crossing - b.soc) * b.capacity_kwh)


def _accepting(b: Battery, seconds: float) -> tuple[float, float]:
    """The battery takes all it accepts for up to `seconds`; (seconds, kWh) until the first
    change of regime (the taper, the trickle floor, full) or the end."""
    start = b.soc
    target = b.soc_target
    if start < b.taper_soc:
        until = min(target, b.taper_soc)
        need = (until - start) * b.capacity_kwh / b.max_kw * 3600.0
        if need <= seconds:
            b.soc = until
            return need, (until - start) * b.capacity_kwh
        kwh = b.max_kw * seconds / 3600.0
        b.soc = start + kwh / b.capacity_kwh
        return seconds, kwh
    floor_soc = 1.0 - TRICKLE * (1.0 - b.taper_soc)
    if start < floor_soc:
        k = b.max_kw / (b.capacity_kwh * (1.0 - b.taper_soc)) / 3600.0
        until = min(target, floor_soc)
        need = math.log((1.0 - start) / (1.0 - until)) / k if until < 1.0 else math.inf
        if need <= seconds:
            b.soc = until
            return need, (until - start) * b.capacity_kwh
        b.soc = 1.0 - (1.0 - start) * math.exp(-k * seconds)
        return seconds, (b.soc - start) * b.capacity_kwh
    trickle = TRICKLE * b.max_kw
    need = (target - start) * b.capacity_kwh / trickle * 3600.0
    if need <= seconds:
        b.soc = target
        return need, (target - start) * b.capacity_kwh
    kwh = trickle * seconds / 3600.0
    b.soc = start + kwh / b.capacity_kwh
    return seconds, kwh


def _bidirectional(
    b: Battery, p: float, limit: float, rate: float, t0: float, t1: float
) -> Stretch:
    """Discharging, or moving between discharging and charging: the power ramps linearly to the
    limit (to 0 once the battery is down to its discharge floor); charging energy on the way is
    not limited by the BMS (a ramp through zero is short)."""
    path = _Path(t0, p)
    goal = limit if limit >= 0 or b.soc > DISCHARGE_FLOOR_SOC else 0.0
    if limit >= 0:
        goal = min(goal, b.acceptance_kw())
    t = t0
    if abs(goal - p) > _EPS_KW and rate > 0:
        slope = rate if goal > p else -rate
        span = min(t1 - t, abs(goal - p) / rate)
        kwh = (p + slope * span / 2.0) * span / 3600.0
        t += span
        p += slope * span
        path.kwh += kwh
        path.point(t, p)
    if t1 - t > _EPS_S and p < 0:
        # Flat discharge until the floor.
        available = max(0.0, (b.soc - DISCHARGE_FLOOR_SOC) * b.capacity_kwh + path.kwh)
        span = min(t1 - t, available * 3600.0 / -p)
        path.kwh += p * span / 3600.0
        t += span
        path.point(t, p)
        if t < t1 - _EPS_S:
            path.point(t, 0.0)
            p = 0.0
    elif t1 - t > _EPS_S and p > 0:
        # Reached a charging limit: the rest is an ordinary charge.
        b.soc = min(1.0, max(0.0, b.soc + path.kwh / b.capacity_kwh))
        rest = _charge(b, p, limit, rate, t, t1)
        return Stretch(
            path.kwh + rest.kwh, rest.power_kw, path.times + rest.times[1:], path.kw + rest.kw[1:]
        )
    b.soc = min(1.0, max(0.0, b.soc + path.kwh / b.capacity_kwh))
    if path.times[-1] < t1:
        path.point(t1, p)
    return Stretch(path.kwh, p, path.times, path.kw)
