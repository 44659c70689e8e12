"""The station file's settings sections: everything but its device entries.

[station], [transformer], [control], [background], [security], [api], [scheduler], [[groups]],
[phase_limits], [simulator] (with its [[simulator.arrivals]]) and [telemetry], each a strict
pydantic model that checks its own fields. Checks across sections are in `base.stationchecks`.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, PositiveFloat, SecretStr, field_validator

from base.loading import Kw, PositiveKw, Strict, minute_of_day, zone_name
from base.stationdevices import ChargePointQuirks


class StationInfo(Strict):
    """[station]: name, local time zone, tariff file and where device maps live."""

    name: str = Field(min_length=1)
    timezone: str
    tariff: str = Field(min_length=1)
    devices: str = "../devices"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return zone_name(value)


class Transformer(Strict):
    """[transformer]: the grid connection's rating and how much of it the site may use."""

    rating_kva: PositiveKw
    power_factor: float = Field(gt=0, le=1)
    margin: float = Field(gt=0, le=1)

    @property
    def limit_kw(self) -> float:
        """The site's import limit in kW: rating x power factor x margin."""
        return self.rating_kva * self.power_factor * self.margin


class ControlSettings(Strict):
    """[control]: how the fast loop runs."""

    period_s: float = Field(default=1.0, gt=0, le=60)
    ramp_kw_per_s: PositiveKw
    reserve_kw: Kw
    stale_after_s: float = Field(default=5.0, gt=0)
    io_timeout_s: float = Field(default=0.5, gt=0, le=30)
    background_margin_kw: Kw
    # How long to keep the highest background seen, to assume when the grid meter is lost.
    background_window_s: float = Field(default=3600.0, gt=0)
    # A meter whose every value stays the same this long is frozen, not measuring.
    frozen_after_s: float = Field(default=20.0, gt=0)
    # Grid power beyond this (either way) is not a measurement; default: twice the rating.
    meter_max_kw: float | None = Field(default=None, gt=0)
    # A device clock that moves this much more or less than ours has jumped.
    clock_jump_s: float = Field(default=30.0, gt=0)
    # A pile that draws other than it is told, by more than the tolerance, for longer than the
    # grace, is not following (the grace covers the pile's delay and ramp).
    follow_grace_s: float = Field(default=20.0, gt=0)
    follow_tolerance_kw: float = Field(default=2.0, ge=0)
    follow_tolerance_pct: float = Field(default=5.0, ge=0, le=100)


class BackgroundProfile(Strict):
    """[background]: the site's own load by local hour (the simulator plays it back)."""

    profile_kw: list[Kw] = Field(min_length=24, max_length=24)
    noise_kw: Kw = 0.0


class SecuritySettings(Strict):
    """[security]: certificates and credentials for encrypted links.

    `certs` is a directory made by `flexcharge certs init` (relative to the station file). The
    OPC-UA password is never written in a station file: it comes from the environment variable
    `opcua_password_env` or from the file `opcua_password_file` (readable by the daemon only).
    """

    certs: str = Field(min_length=1)
    opcua_user: str | None = Field(default=None, min_length=1)
    opcua_password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    opcua_password_file: str | None = Field(default=None, min_length=1)
    opcua_policies: list[Literal["Basic256Sha256", "Aes128Sha256RsaOaep"]] = Field(
        default=["Basic256Sha256", "Aes128Sha256RsaOaep"], min_length=1
    )


class ApiSettings(Strict):
    """[api]: the HTTP API, Prometheus metrics and live page the daemon serves.

    Writes (session information, limit overrides) need the bearer token found in the environment
    variable `token_env`; the token is never written in a station file and never logged. Without
    it writes are refused. `reads_need_token` asks for the token on reads too.

    The server's limits: a request body of at most `max_body_kb` (413 above it, before it is
    read), its headers within `header_timeout_s` of the connection opening (or of the previous
    answer), its body within `body_timeout_s`; at most `max_connections` connections at once (the
    next ones get 503 and are closed).
    """

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    token_env: str = Field(default="FLEXCHARGE_API_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    reads_need_token: bool = False
    history_h: float = Field(default=6.0, gt=0, le=48)
    max_body_kb: int = Field(default=64, ge=1, le=10240)
    header_timeout_s: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    body_timeout_s: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    max_connections: int = Field(default=100, ge=1, le=10_000)

    def token(self) -> str | None:
        """The bearer token writes need, read from the environment now (None if unset or empty)."""
        return os.environ.get(self.token_env) or None


class ArrivalWave(Strict):
    """[[simulator.arrivals]]: a wave of truck arrivals around a time of day."""

    name: str = Field(min_length=1)
    share: float = Field(gt=0, le=1)
    mean: str
    spread_h: float = Field(ge=0, le=12)
    dwell_h: tuple[PositiveKw, PositiveKw]

    @field_validator("mean")
    @classmethod
    def _time(cls, value: str) -> str:
        minute_of_day(value)
        return value

    @property
    def mean_h(self) -> float:
        """Mean arrival, hours after local midnight."""
        return minute_of_day(self.mean) / 60


class SchedulerSettings(Strict):
    """[scheduler]: how plans are made (every field has a documented default)."""

    @field_validator("later_slots")
    @classmethod
    def _coarser_later(cls, stages: list[tuple[float, float]]) -> list[tuple[float, float]]:
        hours = [after for after, _ in stages]
        minutes = [length for _, length in stages]
        if hours != sorted(set(hours)) or any(m > 24 * 60 for m in minutes):
            raise ValueError(
                "each stage starts later than the one before (hours after now, increasing) and "
                "has slots of at most a day"
            )
        return stages

    policy: Literal["mpc", "equal-share", "edf", "llf", "uncontrolled"] = "mpc"
    slot_minutes: float = Field(default=15.0, gt=0, le=60)
    # Coarser slots for the far part of a plan: [[after hours, slot minutes], ...].
    later_slots: list[tuple[PositiveFloat, PositiveFloat]] = Field(default_factory=list)
    horizon_h: float = Field(default=24.0, gt=0, le=24 * 14)
    plan_period_s: float = Field(default=60.0, gt=0)
    solve_deadline_s: float = Field(default=10.0, gt=0)
    target_soc: float = Field(default=0.95, gt=0, le=1)
    default_dwell_h: float = Field(default=8.0, gt=0)
    default_energy_kwh: float = Field(default=300.0, gt=0)
    efficiency: float = Field(default=0.95, gt=0, le=1)
    taper_soc: float | None = Field(default=0.8, gt=0, lt=1)
    ramp_kw_per_min: float | None = Field(default=None, gt=0)
    degradation_per_kwh: float = Field(default=0.05, ge=0)
    unmet_penalty_per_kwh: float = Field(default=1000.0, gt=0)
    expected_unmet_penalty_per_kwh: float = Field(default=1000.0, gt=0)
    deviation_kwh: float = Field(default=5.0, gt=0)
    forecast_arrivals: bool = True


class GroupConfig(Strict):
    """[[groups]]: a limit over some piles (a feeder, a switchboard)."""

    name: str = Field(min_length=1)
    piles: list[str] = Field(min_length=1)
    limit_kw: PositiveKw


class PhaseLimits(Strict):
    """[phase_limits]: current limit per phase at the connection, for AC sites."""

    l1_a: PositiveKw
    l2_a: PositiveKw
    l3_a: PositiveKw
    voltage_v: float = Field(default=230.0, gt=0)


class SimulatorSettings(Strict):
    """[simulator]: how the hardware simulator plays the station (`charge_points`: the quirks
    of its simulated OCPP charge points, by pile id)."""

    seed: int
    step_s: float = Field(default=1.0, gt=0, le=10)
    pile_ramp_kw_per_s: PositiveKw
    pile_delay_s: Kw
    vehicles_per_day: float = Field(ge=0)
    battery_kwh: list[PositiveKw] = Field(min_length=1)
    soc_arrival: tuple[float, float]
    soc_target: tuple[float, float]
    vehicle_max_kw: tuple[PositiveKw, PositiveKw]
    taper_soc: float = Field(gt=0, lt=1)
    arrivals: list[ArrivalWave] = Field(min_length=1)
    charge_points: dict[str, ChargePointQuirks] = Field(default_factory=dict)

    def quirks(self, pile_id: str) -> ChargePointQuirks:
        """The quirks of the charge point `pile_id` (the defaults if the station names none)."""
        return self.charge_points.get(pile_id) or ChargePointQuirks()


class TelemetrySettings(Strict):
    """[telemetry]: where the daemon and `simulate --telemetry` write their time series.

    With `url`, an InfluxDB 2.x write API (`org`, `bucket`, and a token from the environment
    variable `token_env`, or `token` itself); without it, the embedded local store
    (`local_store`, by default <station file stem>.sqlite). The disk buffer goes in `buffer_dir`.
    Relative paths (and the defaults) are in the daemon's telemetry directory (telemetry/ in its
    state directory), never the working directory. The token never appears in logs or output.

    The local store keeps `retention_days` of points in at most `store_max_mb`, its oldest
    deleted first; cycles older than `downsample_after_h` are rolled up into one point per
    `downsample_to_s` (a `downsample_after_h` at or beyond the retention keeps every cycle).
    With `url`, the database's own retention applies and these are refused.
    """

    enabled: bool = True
    url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    org: str | None = Field(default=None, min_length=1)
    bucket: str | None = Field(default=None, min_length=1)
    token: SecretStr | None = None
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    batch_size: int = Field(default=500, ge=1, le=50_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=600)
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    queue_max_points: int = Field(default=100_000, ge=100)
    buffer_dir: str | None = Field(default=None, min_length=1)
    buffer_max_mb: float = Field(default=256.0, gt=0, allow_inf_nan=False)
    local_store: str | None = Field(default=None, min_length=1)
    retention_days: float = Field(default=30.0, gt=0, le=3650, allow_inf_nan=False)
    store_max_mb: float = Field(default=1000.0, ge=1, allow_inf_nan=False)
    downsample_after_h: float = Field(default=24.0, gt=0, allow_inf_nan=False)
    downsample_to_s: float = Field(default=60.0, ge=2, le=86400, allow_inf_nan=False)

    @property
    def token_source(self) -> str:
        """Where the token comes from, for output that must not show it."""
        if self.token_env is not None:
            return f"token from ${self.token_env}"
        return "token in the station file" if self.token is not None else "no token"


# What keeps the local store, not a database.
LOCAL_STORE_ONLY = frozenset(
    {"retention_days", "store_max_mb", "downsample_after_h", "downsample_to_s"}
)
