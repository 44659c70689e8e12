"""What the daemon's HTTP API answers and is told: pydantic models, which also make its OpenAPI
spec. Times are station-local ISO times with their offset; `t`, `t0`, `t1` are epoch seconds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from base.events import Kind, Source
from control.reasons import ReasonKind

# An operator's override lasts at most this long.
MAX_OVERRIDE_S = 7 * 86400
# A departure the API is told lies at most this far ahead.
MAX_DEPARTURE_S = 30 * 86400
# The latest events /api/status shows.
EVENTS_SHOWN = 20
# Free text a client sends: no control characters (they would forge lines in the log).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class Refusal(Exception):
    """A request the API refuses: the HTTP status and the reason, as the client is told."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        errors: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = tuple(headers)
        self.errors = errors

    @classmethod
    def invalid(cls, where: str, text: str) -> Refusal:
        """422 for one bad part of a request, shaped like a validation error."""
        return cls(
            422, f"{where}: {text}", errors=[{"type": "invalid", "loc": [where], "msg": text}]
        )

    def content(self) -> dict[str, Any]:
        """The JSON body: `{"detail": reason}`, or a validation error's `{"message", "detail"}`."""
        if self.errors is not None:
            return {"message": self.detail, "detail": list(self.errors)}
        return {"detail": self.detail}


# -- what the API answers --------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class OverrideOut(_Out):
    """An operator's override of the site limit, in force until `until`."""

    limit_kw: float
    until: datetime
    set_at: datetime
    reason: str


class SiteOut(_Out):
    """The grid connection: measured load and the limit the controller keeps under."""

    load_kw: float | None = Field(description="grid meter reading; null without a fresh one")
    limit_kw: float = Field(description="the limit in force")
    limit_source: Literal["transformer", "utility", "operator"]
    transformer_limit_kw: float
    utility_limit_kw: float | None = Field(description="limit the utility relays, if any")
    override: OverrideOut | None
    background_kw: float | None = Field(description="grid minus piles: the site's own load")
    piles_kw: float
    budget_kw: float | None = Field(description="what the piles may draw this cycle")


class TariffOut(_Out):
    """The tariff band now."""

    name: str
    band: str
    price: float = Field(description="import price, currency per kWh")
    currency: str
    next_change: datetime


class SessionOut(_Out):
    """A vehicle plugged into a pile, as the controller knows it."""

    pile: str
    vehicle_id: str
    session_id: int
    plugged_at: datetime
    departure: datetime
    departure_known: bool = Field(description="false: estimated, nobody told the station")
    need_kwh: float
    delivered_kwh: float
    remaining_kwh: float
    soc_pct: float | None
    capacity_kwh: float | None
    max_kw: float
    planned_kw: float | None = Field(description="what the current plan gives it now")


class ReasonOut(_Out):
    """Why a pile draws what it draws (`control.reasons`)."""

    kind: ReasonKind
    text: str
    until: datetime | None = Field(description="when it ends, if known (a waiting vehicle's slot)")
    until_t: float | None


class PileOut(_Out):
    """One pile: what it does, what it was told, and its vehicle."""

    id: str
    state: str = Field(description="the pile's state, or 'unknown' without a fresh reading")
    online: bool
    stale: bool = Field(description="true: no fresh reading, what is shown is not current")
    last_seen: datetime | None = Field(description="its last good reading (null: never read)")
    last_seen_t: float | None
    error: str | None = Field(description="why the pile is not read, while it is not")
    reason: ReasonOut
    power_kw: float | None
    setpoint_kw: float
    target_kw: float | None
    max_kw: float
    soc_pct: float | None
    fault: str
    session: SessionOut | None


class EventOut(_Out):
    """Something the daemon told the operator (`base.events`)."""

    time: datetime
    t: float
    text: str
    source: Source
    kind: Kind
    device: str | None = Field(description='the device it is about ("pile P03"), if any')


class DeviceOut(_Out):
    """One device the daemon reads, and its health."""

    device: str = Field(description='"grid meter grid", "pile P03"')
    ok: bool
    error: str | None
    since: datetime | None = Field(description="when its current failure began")
    last_seen: datetime | None = Field(description="its last good answer (null: never)")


class AlarmOut(_Out):
    """Something an operator must act on now: a device lost, or the daemon's data stale."""

    kind: Literal["meter", "piles", "terminal", "stale"]
    text: str
    since: datetime | None
    since_t: float | None


class StatusOut(_Out):
    """The station now."""

    station: str
    timezone: str = Field(description="the station's time zone (IANA), for showing its times")
    time: datetime = Field(description="station time of this answer")
    t: float = Field(description="the same, in seconds since the epoch")
    cycle_time: datetime | None = Field(description="time of the cycle the figures come from")
    policy: str
    site: SiteOut
    tariff: TariffOut
    piles: list[PileOut]
    alarms: list[AlarmOut] = Field(description="empty while every device answers")
    devices: list[DeviceOut]
    events: list[EventOut]


class SlotOut(_Out):
    """One slot of a plan (slot 0 may be partial)."""

    start: datetime
    end: datetime
    t0: float
    t1: float
    band: str
    price: float


class PlanVehicleOut(_Out):
    """What a plan gives one vehicle, slot by slot."""

    id: str
    pile: str | None
    expected: bool = Field(description="a vehicle the plan expects to arrive, not yet here")
    kw: list[float]
    unmet_kwh: float


class PlanOut(_Out):
    """The plan the controller follows."""

    status: str = Field(description="the solver's status, or 'none' before the first plan")
    message: str
    planned_at: datetime | None
    slots: list[SlotOut]
    vehicles: list[PlanVehicleOut]
    piles_kw: list[float] = Field(description="planned power of the vehicles here, per slot")


class SampleOut(_Out):
    """The site over one stretch of the history (the highest load, the lowest limit)."""

    t: float
    load_kw: float | None
    limit_kw: float
    piles_kw: float


class BandOut(_Out):
    """A stretch of one tariff band."""

    t0: float
    t1: float
    band: str
    price: float


class HistoryOut(_Out):
    """Site load and limit over the last hours, with the tariff bands from then to the plan's end."""

    samples: list[SampleOut]
    bands: list[BandOut]


class EndedOut(_Out):
    """The override a withdrawal ended (null if none was in force)."""

    ended: OverrideOut | None


# -- what the API is told --------------------------------------------------------------------


class _In(BaseModel):
    # NaN and Infinity are numbers to Python, not to the station ("NaN" as a string included).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SessionInfo(_In):
    """What a fleet system knows about the vehicle at a pile; every field is optional, give
    `energy_kwh` or `target_soc_pct`, not both."""

    vehicle_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=PRINTABLE)
    departure: AwareDatetime | None = Field(
        default=None, description="when it must leave (within 30 days)"
    )
    energy_kwh: float | None = Field(default=None, gt=0, le=5000, description="energy it needs")
    target_soc_pct: float | None = Field(default=None, gt=0, le=100)

    @model_validator(mode="after")
    def _one_need(self) -> SessionInfo:
        if self.energy_kwh is not None and self.target_soc_pct is not None:
            raise ValueError("give energy_kwh or target_soc_pct, not both")
        if all(
            value is None
            for value in (self.vehicle_id, self.departure, self.energy_kwh, self.target_soc_pct)
        ):
            raise ValueError(
                "nothing to tell: give vehicle_id, departure, energy_kwh or target_soc_pct"
            )
        return self


class LimitOverrideIn(_In):
    """Lower the site limit to `limit_kw` until `until`, or for `minutes` (one of them)."""

    limit_kw: float = Field(ge=0, description="at most the transformer's limit")
    until: AwareDatetime | None = None
    minutes: float | None = Field(default=None, gt=0, le=MAX_OVERRIDE_S / 60)
    reason: str = Field(default="", max_length=200, pattern=PRINTABLE)

    @model_validator(mode="after")
    def _one_expiry(self) -> LimitOverrideIn:
        if (self.until is None) == (self.minutes is None):
            raise ValueError("give exactly one of until (a time) or minutes")
        return self
