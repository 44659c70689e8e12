"""The session model: a vehicle's session as the controller knows it (with its energy account),
what its driver said of it, and the visit it leaves behind.

One `Session` serves the controller (what a vehicle needs, when it leaves), the ledger (its
energy by the pile's lifetime counter, `EnergyAccount`) and the state file, which stores it
through one column map (`controller.store`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wish:
    """What a driver or fleet system said about a session (anything left None is estimated)."""

    vehicle_id: str | None = None
    energy_kwh: float | None = None
    departure: float | None = None
    target_soc: float | None = None
    v2g: bool = False
    min_soc: float = 0.2


@dataclass
class EnergyAccount:
    """A session's energy by the pile's lifetime import counter, the figure that is billed.

    `start_counter_kwh` is the counter where the account starts, `last_counter_kwh` the counter
    last seen; `energy_kwh` is the difference (plus what was counted before a counter reset).
    """

    start_counter_kwh: float
    energy_kwh: float
    last_counter_kwh: float

    @property
    def counted_to_kwh(self) -> float:
        """The counter reading where this account ends (so far)."""
        return self.start_counter_kwh + self.energy_kwh


@dataclass
class Session:
    """A vehicle plugged into a pile, as the controller knows it."""

    vehicle_id: str
    pile: str
    session_id: int
    plugged_at: float
    need_kwh: float
    departure: float
    departure_known: bool
    max_kw: float
    delivered_kwh: float = 0.0
    capacity_kwh: float | None = None
    soc: float | None = None
    v2g: bool = False
    min_soc: float = 0.2
    plan_serial: int | None = None
    plan_from: float = 0.0
    plan_baseline_kwh: float = 0.0
    # The most its BMS has asked for (above the pile's rating, its taper starts from there).
    battery_kw: float | None = None
    # When its driver said it would leave (None if nobody said).
    said_departure: float | None = None
    # Its energy account (`control.ledger`), once the ledger has opened one.
    account: EnergyAccount | None = None
    # When the ledger closed it (None while the vehicle is plugged in).
    ended_at: float | None = None

    @property
    def key(self) -> tuple[str, int, float]:
        """What identifies the session: pile, the pile's session id, when it was plugged in."""
        return (self.pile, self.session_id, self.plugged_at)

    @property
    def remaining_kwh(self) -> float:
        """Energy still to deliver."""
        return max(0.0, self.need_kwh - self.delivered_kwh)


@dataclass(frozen=True)
class PastVisit:
    """A finished session, remembered to forecast tomorrow's."""

    plugged_at: float
    left_at: float
    delivered_kwh: float
    wanted_kwh: float
    max_kw: float
    vehicle_id: str = ""
    # When its driver said it would leave (None if nobody said).
    said_departure: float | None = None

    @classmethod
    def of(cls, session: Session, left_at: float) -> PastVisit:
        """The visit a session leaves behind when its vehicle leaves at `left_at`.

        A session that wanted nothing (a vehicle plugged in only to be discharged, or one whose
        need is unknown) delivered nothing towards a wish: its energy does not teach the
        estimates what such a vehicle needs.
        """
        return cls(
            plugged_at=session.plugged_at,
            left_at=left_at,
            delivered_kwh=session.delivered_kwh if session.need_kwh > 0 else 0.0,
            wanted_kwh=max(session.need_kwh, session.delivered_kwh),
            max_kw=session.max_kw,
            vehicle_id=session.vehicle_id,
            said_departure=session.said_departure,
        )
