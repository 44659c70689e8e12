"""Station configs (`configs/stations/*.toml`): the models and their loader.

Each loader reads TOML into pydantic models, then checks what a schema cannot (a pile above the
transformer, overlapping tariff bands, registers that overlap) and raises one `ConfigError` that
lists every problem it found, each naming the file, the device and the field. Nothing is
defaulted silently: a missing required value, an unknown field (a typo) or a value that makes no
sense is an error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PositiveFloat,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails

from base import certs
from base.devicemap import (
    RegisterMap,
)
from base.events import DeviceRef
from base.loading import (
    ConfigError,
    ConfigProblem,
    Kw,
    Port,
    PositiveKw,
    Problems,
    Strict,
    UnitId,
    field_key,
    minute_of_day,
    read_toml,
    zone_name,
)
from base.mapfile import load_register_map
from base.tariff import Tariff
from base.tarifffile import load_tariff

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
REFERENCE_STATION = CONFIG_ROOT / "stations" / "bozhou-depot.toml"

# --------------------------------------------------------------------------- stations


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


LinkProtocol = Literal[
    "modbus-tcp", "modbus-tls", "modbus-rtu", "modbus-rtu-over-tcp", "opcua", "ocpp"
]
# The rates RS-485 meters and chargers offer.
BaudRate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]
_SERIAL_FIELDS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")
# What an OCPP pile has no use for: it connects to us, by its identity, and has no register map.
NOT_FOR_OCPP = (
    "host",
    "port",
    "unit",
    "device",
    *_SERIAL_FIELDS,
    "path",
    "object",
    "opcua_security",
    "comm_timeout_s",
)
# What only OCPP piles take.
OCPP_ONLY = ("ocpp_version", "ocpp_identity", "connector", "supply")
OcppVersion = Literal["1.6", "2.0.1"]
OpcUaSecurity = Literal["sign-and-encrypt", "none"]


def _again(error: ErrorDetails) -> InitErrorDetails:
    """An error pydantic found, as it takes errors to raise again."""
    detail: InitErrorDetails = {"type": error["type"], "loc": error["loc"], "input": error["input"]}
    if "ctx" in error:
        detail["ctx"] = error["ctx"]
    return detail


class DeviceEndpoint(Strict):
    """A device of the station: its id, its map and where it answers.

    `protocol` is plain Modbus TCP, Modbus/TCP Security (TLS with mutual certificates, port 802
    by default), Modbus RTU on a serial line (`serial_port`, `baudrate`, `parity`, `stopbits`,
    `bytesize`; host and port are ignored; devices on one line share it as a bus), Modbus RTU framing over
    TCP to a serial gateway (host and port as for Modbus TCP), OPC-UA, or OCPP (piles only: the
    charge point connects to the daemon's [ocpp] server; no host, port or map). OPC-UA devices are reached at `opc.tcp://host:port{path}` and are the
    object `object` (default: the device's id) of the flexcharge address space; they use
    SignAndEncrypt unless `opcua_security = "none"` says otherwise, which the daemon warns about.
    """

    id: str = Field(min_length=1)
    # device: required for every protocol but ocpp; host and port: for every protocol but
    # modbus-rtu and ocpp (checked with the other fields, so a missing one is named like any
    # other); the defaults stand for "not given".
    device: str = Field(default="", min_length=1)
    host: str = Field(default="", min_length=1)
    port: Port = 0
    unit: UnitId = 1
    protocol: LinkProtocol = "modbus-tcp"
    serial_port: str | None = Field(default=None, min_length=1)
    baudrate: BaudRate = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    path: str = Field(default="/flexcharge", pattern=r"^/[\w./-]*$")
    object: str | None = Field(default=None, min_length=1)
    opcua_security: OpcUaSecurity = "sign-and-encrypt"

    @model_validator(mode="wrap")
    @classmethod
    def _network_address(
        cls, data: Any, handler: ModelWrapValidatorHandler[DeviceEndpoint]
    ) -> DeviceEndpoint:
        # host and port have defaults only because modbus-rtu devices have neither; every other
        # protocol needs both, reported as missing with the entry's other errors.
        missing: list[InitErrorDetails] = []
        if isinstance(data, Mapping):
            protocol = data.get("protocol")
            needed = {"modbus-rtu": ("device",), "ocpp": ()}.get(
                protocol if isinstance(protocol, str) else "", ("device", "host", "port")
            )
            missing = [
                {"type": "missing", "loc": (name,), "input": data}
                for name in needed
                if name not in data
            ]
        try:
            device = handler(data)
        except ValidationError as exc:
            if not missing:
                raise
            found = [_again(error) for error in exc.errors(include_url=False)]
            raise ValidationError.from_exception_data(exc.title, found + missing) from None
        if missing:
            raise ValidationError.from_exception_data(cls.__name__, missing)
        return device

    @property
    def secure(self) -> bool:
        """True if the link to the device is encrypted and both ends authenticated."""
        return self.protocol == "modbus-tls" or (
            self.protocol == "opcua" and self.opcua_security == "sign-and-encrypt"
        )

    @property
    def serial(self) -> bool:
        """True if the device hangs on a serial line (Modbus RTU) rather than a network."""
        return self.protocol == "modbus-rtu"

    @property
    def address(self) -> str:
        """Where the device answers, for messages: host:port, the serial port, or (OCPP) the
        charge point's identity and connector."""
        if self.serial:
            return str(self.serial_port)
        if isinstance(self, PileConfig) and self.ocpp:
            return f"ocpp:{self.identity}/{self.connector}"
        return f"{self.host}:{self.port}"

    @property
    def opcua_url(self) -> str:
        """The OPC-UA endpoint URL (OPC-UA devices only)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self.port}{self.path}"

    @property
    def opcua_object(self) -> str:
        """The name of the device's object in the address space."""
        return self.object or self.id


_Endpoint = TypeVar("_Endpoint", bound=DeviceEndpoint)


class MeterConfig(DeviceEndpoint):
    """[grid_meter] (the meter the fast loop controls on) or [terminal] (the utility's smart
    metering terminal at the same connection: it relays the utility's limit and stands in for
    the grid meter while that one is lost)."""


class PileConfig(DeviceEndpoint):
    """One [[piles]] entry (after [pile_defaults] is applied).

    An OCPP pile (`protocol = "ocpp"`) is a charge point that connects to the daemon's [ocpp]
    server as `ocpp_identity` (default: the pile's id), speaking `ocpp_version`; the pile is its
    `connector` (1.6 connectorId, 2.0.1 evseId), `supply` "dc" or "ac". Its `comm_timeout_s` is
    the [ocpp] profile validity (the loader sets it): every dynamic profile expires after it.
    """

    max_kw: PositiveKw
    min_kw: Kw
    # Not given for OCPP piles: the loader sets it to [ocpp] profile_validity_s.
    comm_timeout_s: float = Field(gt=0, le=3600)
    fallback_kw: Kw
    max_discharge_kw: Kw = 0.0
    phases: Literal[1, 3] = 3
    phase: Literal["L1", "L2", "L3"] | None = None
    voltage_v: float = Field(default=230.0, ge=100, le=400)
    ocpp_version: OcppVersion | None = None
    ocpp_identity: str | None = Field(default=None, pattern=r"^[A-Za-z0-9*\-_=:+|@.]{1,48}$")
    connector: int = Field(default=1, ge=1, le=255)
    supply: Literal["dc", "ac"] = "dc"
    # A DC pile's link voltage: how its current limits (A) turn into kW and back.
    dc_voltage_v: float = Field(default=750.0, gt=0, le=1500)

    @property
    def kw_per_a(self) -> float:
        """kW per ampere of a current limit: phases x voltage_v for AC, dc_voltage_v for DC."""
        volts = self.dc_voltage_v if self.supply == "dc" else self.phases * self.voltage_v
        return volts / 1000.0

    @property
    def bidirectional(self) -> bool:
        """True if the pile may discharge a vehicle."""
        return self.max_discharge_kw > 0

    @property
    def ocpp(self) -> bool:
        """True if the pile is an OCPP charge point (connector)."""
        return self.protocol == "ocpp"

    @property
    def identity(self) -> str:
        """The OCPP identity its charge point connects as (the path of its websocket URL)."""
        return self.ocpp_identity or self.id


class OcppSettings(Strict):
    """[ocpp]: the daemon as the OCPP server (CSMS) its OCPP piles connect to.

    Charge points connect to ws://host:port/<identity> (wss:// for security profiles 2-3),
    subprotocol "ocpp1.6" or "ocpp2.0.1" on the one port. `security_profile` 0 is plain ws
    without authentication (the daemon warns), 1 basic auth over ws, 2 basic auth over TLS (the
    server certificate is the station's "daemon" identity from `flexcharge certs init`), 3 mutual
    TLS (client certificates signed by the station CA). The basic-auth password (the user is the
    charge point's identity) comes from the environment variable `password_env` or the file
    `password_file`, never from the station file. `id_tags` empty accepts every idTag.

    Every dynamic charging profile expires `profile_validity_s` after it is sent (and is renewed
    before), so that a charge point left alone falls back to its pile's fallback_kw; a setpoint
    that moves less than `deadband_kw` is not re-sent. `heartbeat_s` is the Heartbeat interval
    given in BootNotification's answer, `meter_values_s` the meter sample interval asked of
    each charge point.
    """

    host: str = Field(default="127.0.0.1", min_length=1)
    # 0: any free port (tests); the server says which it got.
    port: int = Field(default=15040, ge=0, le=65535)
    security_profile: Literal[0, 1, 2, 3] = 0
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    password_file: str | None = Field(default=None, min_length=1)
    id_tags: list[str] = Field(default_factory=list)
    profile_validity_s: float = Field(default=60.0, gt=0, le=86400, allow_inf_nan=False)
    deadband_kw: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    heartbeat_s: int = Field(default=60, ge=1, le=86400)
    meter_values_s: int = Field(default=5, ge=1, le=3600)

    @property
    def tls(self) -> bool:
        """True for the security profiles served over TLS (wss)."""
        return self.security_profile >= 2

    @property
    def basic_auth(self) -> bool:
        """True for the security profiles that ask for a password."""
        return self.security_profile in (1, 2)


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


# The profile purposes of OCPP 1.6 (ChargePointMaxProfile) and 2.0.1 (ChargingStationMaxProfile).
ProfilePurpose = Literal[
    "ChargePointMaxProfile", "ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile"
]


class ChargePointQuirks(Strict):
    """[simulator.charge_points.<pile id>]: how a simulated OCPP charge point behaves, field
    quirks included: the profile purposes it answers Rejected, whether it applies the profiles
    it accepts (and how late), the rate units it takes, its ChargingScheduleMaxPeriods and
    ChargeProfileMaxStackLevel, and whether it keeps its last profile past its validity."""

    rejects_purposes: list[ProfilePurpose] = Field(default_factory=list)
    applies_profiles: bool = True
    apply_delay_s: float = Field(default=0.0, ge=0, le=3600, allow_inf_nan=False)
    rate_units: list[Literal["A", "W"]] = Field(default=["A", "W"], min_length=1)
    max_periods: int = Field(default=24, ge=1, le=1024)
    max_stack_level: int = Field(default=3, ge=0, le=1000)
    keeps_last_profile: bool = False

    @field_validator("rate_units", "rejects_purposes")
    @classmethod
    def _once_each(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("names each value once")
        return values


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


def _check_telemetry(problems: Problems, telemetry: TelemetrySettings | None) -> None:
    if telemetry is None:
        return
    if telemetry.url is not None:
        for name in ("org", "bucket"):
            if getattr(telemetry, name) is None:
                problems.add(
                    None, f"telemetry.{name}", f"required with telemetry.url ({telemetry.url})"
                )
        if telemetry.token is not None and telemetry.token_env is not None:
            problems.add(None, "telemetry.token", "give token or token_env, not both")
        for name in sorted(LOCAL_STORE_ONLY & telemetry.model_fields_set):
            problems.add(
                None,
                f"telemetry.{name}",
                "applies only to the local store (with telemetry.url, set the database's "
                "retention)",
            )
    else:
        for name in ("org", "bucket", "token", "token_env"):
            if getattr(telemetry, name) is not None:
                problems.add(
                    None,
                    f"telemetry.{name}",
                    "applies only with telemetry.url (without one, telemetry goes to the local store)",
                )
    if telemetry.buffer_max_mb * 1e6 < 4 * telemetry.batch_size * 200:
        problems.add(
            None,
            "telemetry.buffer_max_mb",
            f"{telemetry.buffer_max_mb:g} MB holds fewer than four batches of "
            f"{telemetry.batch_size} points (about 200 bytes each)",
        )


@dataclass(frozen=True)
class Station:
    """A whole station: its devices, limits, control settings, tariff and register maps."""

    path: Path
    info: StationInfo
    transformer: Transformer
    control: ControlSettings
    background: BackgroundProfile
    grid_meter: MeterConfig
    piles: tuple[PileConfig, ...]
    tariff: Tariff
    device_maps: Mapping[str, RegisterMap]
    simulator: SimulatorSettings | None = None
    tariff_path: Path | None = None
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    groups: tuple[GroupConfig, ...] = ()
    phase_limits: PhaseLimits | None = None
    security: SecuritySettings | None = None
    terminal: MeterConfig | None = None
    api: ApiSettings | None = None
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    ocpp: OcppSettings | None = None

    @property
    def name(self) -> str:
        """The station's name."""
        return self.info.name

    @property
    def limit_kw(self) -> float:
        """The site import limit in kW."""
        return self.transformer.limit_kw

    @property
    def devices(self) -> tuple[DeviceEndpoint, ...]:
        """The grid meter and every pile."""
        meters = (self.grid_meter,) if self.terminal is None else (self.grid_meter, self.terminal)
        return (*meters, *self.piles)

    def pile(self, pile_id: str) -> PileConfig:
        """The config of one pile (`KeyError` if the station has none of that id)."""
        return self._piles_by_id[pile_id]

    @cached_property
    def _piles_by_id(self) -> Mapping[str, PileConfig]:
        # Asked for every pile every cycle: a scan of 200 piles each time adds up.
        return {pile.id: pile for pile in self.piles}

    @property
    def certs_dir(self) -> Path | None:
        """The certificate directory [security] names, resolved against the station file."""
        if self.security is None:
            return None
        return (self.path.parent / self.security.certs).resolve()

    def identity(self, party: str) -> certs.Identity:
        """The certificate and key of "daemon" or "simulator"; `ConfigError` if not created yet."""
        certs_dir = self.certs_dir
        if certs_dir is None:
            raise ConfigError(
                [
                    ConfigProblem(
                        self.path, None, "security", "encrypted links need a [security] section"
                    )
                ]
            )
        ident = certs.identity(certs_dir, party)
        missing = ident.missing()
        if missing:
            raise ConfigError(
                [
                    ConfigProblem(
                        self.path,
                        None,
                        "security.certs",
                        f"{party} certificate files missing ({', '.join(str(m) for m in missing)}); "
                        f"create them with: flexcharge certs init {certs_dir}",
                    )
                ]
            )
        return ident

    def opcua_credentials(self) -> tuple[str, str] | None:
        """The OPC-UA user name and password, or None when the station names no user.

        The password is read from the environment or a file at call time and never logged.
        """
        sec = self.security
        if sec is None or sec.opcua_user is None:
            return None
        if sec.opcua_password_env is not None:
            password = self._from_env(sec.opcua_password_env, "security.opcua_password_env")
            return sec.opcua_user, password
        assert sec.opcua_password_file is not None
        return sec.opcua_user, self._read_secret(
            sec.opcua_password_file, "security.opcua_password_file"
        )

    def _from_env(self, variable: str, setting: str) -> str:
        """A secret from the environment variable `variable`, which `setting` names."""
        value = os.environ.get(variable)
        if value is None:
            raise ConfigError(
                [
                    ConfigProblem(
                        self.path, None, setting, f"the environment variable {variable} is not set"
                    )
                ]
            )
        return value

    def ocpp_password(self) -> str | None:
        """The basic-auth password OCPP charge points must give (None when the security profile
        asks for none), read from the environment or a file at call time and never logged."""
        settings = self.ocpp
        if settings is None or not settings.basic_auth:
            return None
        if settings.password_env is not None:
            return self._from_env(settings.password_env, "ocpp.password_env")
        assert settings.password_file is not None  # the loader requires one of the two
        return self._read_secret(settings.password_file, "ocpp.password_file")

    def _read_secret(self, name: str, setting: str) -> str:
        """A secret from the file `name` (relative to the station file), which `setting` names."""
        file = (self.path.parent / name).resolve()
        try:
            return file.read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            why = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc})"
            raise ConfigError(
                [ConfigProblem(self.path, None, setting, f"cannot read {file}: {why}")]
            ) from None

    def with_ocpp(self, **changes: Any) -> Station:
        """A copy with [ocpp] settings changed (tests use a free port, other security)."""
        current = {} if self.ocpp is None else self.ocpp.model_dump()
        return replace(self, ocpp=OcppSettings.model_validate({**current, **changes}))

    def telemetry_token(self) -> str | None:
        """The telemetry database's token (None without one), read from the environment at call
        time when [telemetry] names a variable; never logged."""
        settings = self.telemetry
        if settings.token_env is not None:
            return self._from_env(settings.token_env, "telemetry.token_env")
        return None if settings.token is None else settings.token.get_secret_value()

    def with_telemetry(self, **changes: Any) -> Station:
        """A copy with [telemetry] settings changed (tests point it at a temporary server)."""
        return replace(
            self,
            telemetry=TelemetrySettings.model_validate({**self.telemetry.model_dump(), **changes}),
        )

    def with_security(self, **changes: Any) -> Station:
        """A copy with [security] settings changed (tests point `certs` at a temporary CA)."""
        if self.security is None:
            return replace(self, security=SecuritySettings.model_validate(changes))
        return replace(self, security=self.security.model_copy(update=changes))

    def map_for(self, device: str) -> RegisterMap:
        """The register map a device entry names."""
        return self.device_maps[device]

    def with_endpoints(self, ports: Mapping[str, int], host: str = "127.0.0.1") -> Station:
        """A copy with the named devices moved to other ports (tests use free ports); devices
        on a serial line stay where they are."""

        def moved(device: _Endpoint) -> _Endpoint:
            if device.serial or device.protocol == "ocpp":
                return device
            return device.model_copy(
                update={"host": host, "port": ports.get(device.id, device.port)}
            )

        terminal = None if self.terminal is None else moved(self.terminal)
        piles = tuple(moved(p) for p in self.piles)
        return replace(self, grid_meter=moved(self.grid_meter), piles=piles, terminal=terminal)

    def with_control(self, **changes: Any) -> Station:
        """A copy with some [control] settings changed."""
        return replace(self, control=self.control.model_copy(update=changes))


_STATION_SECTIONS = {
    "station",
    "transformer",
    "control",
    "scheduler",
    "background",
    "grid_meter",
    "terminal",
    "pile_defaults",
    "piles",
    "groups",
    "phase_limits",
    "security",
    "simulator",
    "api",
    "telemetry",
    "ocpp",
}


def load_station(path: Path | str, document: Mapping[str, Any] | None = None) -> Station:
    """Load and check a station file, its tariff and every register map it names.

    With `document`, that TOML document is checked as if it were the file at `path` (relative
    paths in it resolve against the file's directory): a variant of a station built in code.
    Raises `ConfigError` listing every problem found in any of those files.
    """
    path = Path(path)
    problems = Problems(path)
    raw = dict(document) if document is not None else read_toml(path, problems)
    for key in raw:
        if key not in _STATION_SECTIONS:
            problems.add(
                None,
                field_key(key),
                f"unknown section (misspelt?); expected one of {sorted(_STATION_SECTIONS)}",
            )

    def section(model: type[Strict], key: str, device: str | None = None) -> Any:
        data = raw.get(key)
        if data is None:
            problems.add(device, key, "required section, but missing")
            return None
        if not isinstance(data, dict):
            problems.add(device, key, "must be a table")
            return None
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problems.add_validation(err, device, key)
            return None

    info: StationInfo | None = section(StationInfo, "station")
    transformer: Transformer | None = section(Transformer, "transformer")
    control: ControlSettings | None = section(ControlSettings, "control")
    background: BackgroundProfile | None = section(BackgroundProfile, "background")
    meter_raw = raw.get("grid_meter")
    meter_label = (
        DeviceRef.meter(str(meter_raw["id"])).label
        if isinstance(meter_raw, dict) and meter_raw.get("id")
        else "grid meter"
    )
    grid_meter: MeterConfig | None = section(MeterConfig, "grid_meter", meter_label)
    terminal_raw = raw.get("terminal")
    terminal_label = (
        DeviceRef.terminal(str(terminal_raw["id"])).label
        if isinstance(terminal_raw, dict) and terminal_raw.get("id")
        else "terminal"
    )
    terminal: MeterConfig | None = (
        section(MeterConfig, "terminal", terminal_label) if "terminal" in raw else None
    )
    simulator: SimulatorSettings | None = (
        section(SimulatorSettings, "simulator") if "simulator" in raw else None
    )
    scheduler: SchedulerSettings | None = (
        section(SchedulerSettings, "scheduler") if "scheduler" in raw else SchedulerSettings()
    )
    phase_limits: PhaseLimits | None = (
        section(PhaseLimits, "phase_limits") if "phase_limits" in raw else None
    )
    security: SecuritySettings | None = (
        section(SecuritySettings, "security") if "security" in raw else None
    )
    api: ApiSettings | None = section(ApiSettings, "api") if "api" in raw else None
    telemetry: TelemetrySettings | None = (
        section(TelemetrySettings, "telemetry") if "telemetry" in raw else TelemetrySettings()
    )
    ocpp: OcppSettings | None = section(OcppSettings, "ocpp") if "ocpp" in raw else None
    groups: list[GroupConfig] = []
    raw_groups = raw.get("groups", [])
    if not isinstance(raw_groups, list):
        problems.add(None, "groups", "must be an array of tables ([[groups]])")
        raw_groups = []
    for index, entry in enumerate(raw_groups):
        label = (
            f"group {entry.get('name')}"
            if isinstance(entry, dict) and entry.get("name")
            else f"group #{index + 1}"
        )
        try:
            groups.append(GroupConfig.model_validate(entry))
        except ValidationError as err:
            problems.add_validation(err, label)

    defaults = raw.get("pile_defaults", {})
    if not isinstance(defaults, dict):
        problems.add(None, "pile_defaults", "must be a table")
        defaults = {}
    for key in list(defaults):
        if key not in PileConfig.model_fields or key == "id":
            problems.add(
                None,
                f"pile_defaults.{key}",
                "unknown field (misspelt?)" if key != "id" else "ids are per pile",
            )
            defaults = {k: v for k, v in defaults.items() if k != key}
    piles: list[PileConfig] = []
    raw_piles = raw.get("piles")
    if not isinstance(raw_piles, list) or not raw_piles:
        problems.add(None, "piles", "a station needs at least one [[piles]] entry")
        raw_piles = []
    for index, entry in enumerate(raw_piles):
        if not isinstance(entry, dict):
            problems.add(f"pile #{index + 1}", "", "must be a table")
            continue
        label = _pile_label(entry, index)
        merged = {**defaults, **entry}
        if merged.get("protocol") == "ocpp":
            _check_ocpp_entry(problems, label, entry)
            merged = {k: v for k, v in merged.items() if k not in NOT_FOR_OCPP}
            # The profile validity is what a comm timeout is for a Modbus pile.
            validity = ocpp.profile_validity_s if ocpp is not None else 60.0
            merged["comm_timeout_s"] = validity
        else:
            for name in OCPP_ONLY:
                if name in entry:
                    problems.add(label, name, 'only OCPP piles (protocol = "ocpp") take this')
        try:
            piles.append(PileConfig.model_validate(merged))
        except ValidationError as err:
            problems.add_validation(err, label)

    tariff: Tariff | None = None
    tariff_path: Path | None = None
    device_maps: dict[str, RegisterMap] = {}
    if info is not None:
        tariff_path = _resolve(path.parent / info.tariff)
        tariff = problems.referenced(
            partial(load_tariff, tariff_path),
            None,
            "station.tariff",
            f"the tariff {info.tariff!r} ({tariff_path})",
        )
        devices_dir = _resolve(path.parent / info.devices)
        wanted: dict[str, str] = {}
        # Check every map any entry names, even entries that failed their own checks.
        for entry, label in ((meter_raw, meter_label), (terminal_raw, terminal_label)):
            if isinstance(entry, dict) and isinstance(entry.get("device"), str):
                wanted.setdefault(entry["device"], label)
        for index, entry in enumerate(raw_piles):
            if isinstance(entry, dict) and {**defaults, **entry}.get("protocol") != "ocpp":
                device_name = entry.get("device", defaults.get("device"))
                if isinstance(device_name, str) and device_name:
                    wanted.setdefault(device_name, _pile_label(entry, index))
        for device_name, user in wanted.items():
            map_path = devices_dir / f"{device_name}.toml"
            if not _is_file(map_path):
                known = _maps_in(devices_dir)
                problems.add(
                    user,
                    "device",
                    f"no register map {device_name!r} in {devices_dir}; known: {known}",
                )
                continue
            loaded = problems.referenced(
                partial(load_register_map, map_path),
                user,
                "device",
                f"the register map {device_name!r} ({map_path})",
            )
            if loaded is not None:
                device_maps[device_name] = loaded

    _check_groups(problems, piles, groups, phase_limits)
    meters = [m for m in (grid_meter, terminal) if m is not None]
    _check_security(problems, security, [*meters, *piles])
    _check_serial_lines(problems, [*meters, *piles])
    _check_telemetry(problems, telemetry)
    _check_ocpp(problems, ocpp, "ocpp" in raw, piles, control, security)
    _check_charge_points(problems, simulator, piles)
    _cross_check(
        problems, transformer, control, background, meters, piles, device_maps, tariff, info
    )
    problems.raise_if_any()
    assert info and transformer and control and background and grid_meter and tariff
    return Station(
        path=path,
        info=info,
        transformer=transformer,
        control=control,
        background=background,
        grid_meter=grid_meter,
        piles=tuple(piles),
        tariff=tariff,
        device_maps=device_maps,
        simulator=simulator,
        tariff_path=tariff_path,
        scheduler=scheduler or SchedulerSettings(),
        groups=tuple(groups),
        phase_limits=phase_limits,
        security=security,
        terminal=terminal,
        api=api,
        telemetry=telemetry or TelemetrySettings(),
        ocpp=ocpp,
    )


def _pile_label(entry: Mapping[str, object], index: int) -> str:
    """A [[piles]] entry as a config problem names it: by its id, or its place if it has none."""
    pile_id = entry.get("id")
    return DeviceRef.pile(str(pile_id)).label if pile_id else f"pile #{index + 1}"


# A path from a station file may be one the OS refuses (a NUL in it, a name too long): it then
# names no file, and the loader reports that, instead of the OS error escaping.


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, ValueError):
        return path


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _maps_in(directory: Path) -> list[str]:
    try:
        return sorted(p.stem for p in directory.glob("*.toml"))
    except (OSError, ValueError):
        return []


def _check_ocpp_entry(problems: Problems, label: str, entry: Mapping[str, object]) -> None:
    """An OCPP pile's own entry names no field that does not apply to it ([pile_defaults] may:
    they are for the station's other piles)."""
    for name in NOT_FOR_OCPP:
        if name in entry:
            why = (
                "the [ocpp] profile_validity_s plays its part"
                if name == "comm_timeout_s"
                else "the charge point connects to the [ocpp] server by its identity"
            )
            problems.add(label, name, f"does not apply to OCPP piles: {why}")
    if "ocpp_version" not in entry:
        problems.add(label, "ocpp_version", 'required for OCPP piles ("1.6" or "2.0.1")')


def _check_ocpp(
    problems: Problems,
    ocpp: OcppSettings | None,
    given: bool,
    piles: list[PileConfig],
    control: ControlSettings | None,
    security: SecuritySettings | None,
) -> None:
    """[ocpp] is there when OCPP piles are; each charge point is one version, each connector one
    pile; passwords and certificates as the security profile needs them. `given`: the file has
    an [ocpp] section (`ocpp` is None also when it has one with mistakes)."""
    ocpp_piles = [p for p in piles if p.ocpp]
    if ocpp_piles and not given:
        names = ", ".join(p.id for p in ocpp_piles)
        problems.add(None, "ocpp", f"{names} use OCPP, which needs an [ocpp] section (the server)")
    versions: dict[str, tuple[str | None, str]] = {}
    connectors: dict[tuple[str, int], str] = {}
    for pile in ocpp_piles:
        label = DeviceRef.pile(pile.id).label
        key = (pile.identity, pile.connector)
        if key in connectors:
            problems.add(
                label,
                "connector",
                f"identity {pile.identity} connector {pile.connector} is already used by "
                f"{connectors[key]}",
            )
        connectors.setdefault(key, label)
        version, first = versions.setdefault(pile.identity, (pile.ocpp_version, label))
        if version != pile.ocpp_version:
            problems.add(
                label,
                "ocpp_version",
                f"{pile.ocpp_version} differs from {version} of {first} (one charge point, "
                f"identity {pile.identity})",
            )
        if pile.bidirectional and pile.ocpp_version != "2.0.1":
            problems.add(
                label, "max_discharge_kw", "discharging (V2G) over OCPP needs ocpp_version 2.0.1"
            )
    if ocpp is None:
        return
    sources = [ocpp.password_env, ocpp.password_file]
    if ocpp.basic_auth and sum(source is not None for source in sources) != 1:
        problems.add(
            "ocpp",
            "password_env",
            f"security profile {ocpp.security_profile} needs exactly one of password_env or "
            "password_file (passwords are never written in the station file)",
        )
    if not ocpp.basic_auth:
        for name in ("password_env", "password_file"):
            if getattr(ocpp, name) is not None:
                problems.add(
                    "ocpp",
                    name,
                    f"security profile {ocpp.security_profile} takes no password (only 1 and 2 do)",
                )
    if ocpp.tls and security is None:
        problems.add(
            "ocpp",
            "security_profile",
            f"security profile {ocpp.security_profile} (TLS) needs [security] certs = DIR "
            "(create DIR with: flexcharge certs init DIR)",
        )
    if control is not None and ocpp.profile_validity_s < 2 * control.period_s:
        problems.add(
            "ocpp",
            "profile_validity_s",
            f"{ocpp.profile_validity_s:g} s is less than twice the control period "
            f"({control.period_s:g} s): profiles would expire while the controller runs",
        )


def _address(device: DeviceEndpoint) -> tuple[str, int, str, int | str]:
    if device.protocol == "ocpp":
        # One namespace of their own (their duplicates are reported by _check_ocpp).
        return ("ocpp", 0, device.id, 0)
    if device.serial:
        return (str(device.serial_port), 0, "", device.unit)
    if device.protocol == "opcua":
        return (device.host, device.port, device.path, device.opcua_object)
    return (device.host, device.port, "", device.unit)


def _check_charge_points(
    problems: Problems, simulator: SimulatorSettings | None, piles: list[PileConfig]
) -> None:
    """Each [simulator.charge_points.<id>] names an OCPP pile of the station."""
    if simulator is None:
        return
    ocpp = {p.id for p in piles if p.ocpp}
    for pile_id in simulator.charge_points:
        if pile_id not in ocpp:
            known = ", ".join(sorted(ocpp)) or "none"
            problems.add(
                None,
                f"simulator.charge_points.{pile_id}",
                f"not an OCPP pile of the station (OCPP piles: {known})",
            )


def _check_security(
    problems: Problems, security: SecuritySettings | None, devices: list[DeviceEndpoint]
) -> None:
    secure = [d for d in devices if d.secure]
    if secure and security is None:
        names = ", ".join(d.id for d in secure)
        problems.add(
            None,
            "security",
            f"{names} use encrypted links, which need [security] certs = DIR "
            "(create DIR with: flexcharge certs init DIR)",
        )
    for device in devices:
        # The same label as every other problem about this pile or meter.
        label = _device_label(device)
        _check_link(problems, label, device)
        if device.protocol != "opcua":
            if device.object is not None:
                problems.add(label, "object", "only OPC-UA devices have an object name")
            if device.opcua_security != "sign-and-encrypt":
                problems.add(label, "opcua_security", "only OPC-UA devices take this")
    if security is None:
        return
    if security.opcua_user is not None:
        sources = [security.opcua_password_env, security.opcua_password_file]
        if sum(source is not None for source in sources) != 1:
            problems.add(
                "security",
                "opcua_user",
                "needs exactly one of opcua_password_env or opcua_password_file "
                "(passwords are never written in the station file)",
            )
    elif security.opcua_password_env or security.opcua_password_file:
        problems.add("security", "opcua_user", "a password is given but no user name")


def _check_link(problems: Problems, label: str, device: DeviceEndpoint) -> None:
    """A serial device names its serial port; only serial devices take the line's settings."""
    if device.serial:
        # host and port may come from [pile_defaults]; a serial device ignores them.
        if device.serial_port is None:
            problems.add(label, "serial_port", "required by modbus-rtu (e.g. /dev/ttyUSB0)")
        return
    for name in _SERIAL_FIELDS:
        if name in device.model_fields_set:
            problems.add(label, name, f"only modbus-rtu devices take this, not {device.protocol}")


def _check_serial_lines(problems: Problems, devices: list[DeviceEndpoint]) -> None:
    """Devices on one serial port share its line: one baud rate, parity, stop and data bits."""
    first: dict[str, DeviceEndpoint] = {}
    for device in devices:
        if not device.serial or device.serial_port is None:
            continue
        line = first.setdefault(device.serial_port, device)
        for name in ("baudrate", "parity", "stopbits", "bytesize"):
            mine, theirs = getattr(device, name), getattr(line, name)
            if mine != theirs:
                problems.add(
                    _device_label(device),
                    name,
                    f"{mine} differs from {theirs} of {_device_label(line)} on the same "
                    f"serial port {device.serial_port}: a line has one setting",
                )


def _device_label(device: DeviceEndpoint) -> str:
    return f"{'pile' if isinstance(device, PileConfig) else 'meter'} {device.id}"


def _check_charger(problems: Problems, label: str, pile: PileConfig, regmap: RegisterMap) -> None:
    if pile.bidirectional:
        problems.add(label, "max_discharge_kw", f"an AC charger ({regmap.title}) cannot discharge")
    if pile.protocol == "opcua":
        problems.add(label, "protocol", f"the {regmap.name} map is a Modbus map")
    min_kw = (regmap.min_current_a or 0.0) * pile.phases * pile.voltage_v / 1000
    if 0 < pile.fallback_kw < min_kw:
        problems.add(
            label,
            "fallback_kw",
            f"{pile.fallback_kw:g} kW is below the charger's minimum current "
            f"({regmap.min_current_a:g} A x {pile.phases} phase(s) x {pile.voltage_v:g} V = "
            f"{min_kw:.2f} kW): it would pause instead; use 0 or at least that",
        )


def _check_groups(
    problems: Problems,
    piles: list[PileConfig],
    groups: list[GroupConfig],
    phase_limits: PhaseLimits | None,
) -> None:
    known = {p.id for p in piles}
    names: set[str] = set()
    for group in groups:
        label = f"group {group.name}"
        if group.name in names:
            problems.add(label, "name", "another group has the same name")
        if phase_limits is not None and group.name in ("phase L1", "phase L2", "phase L3"):
            problems.add(label, "name", "is the name of a [phase_limits] group; choose another")
        names.add(group.name)
        for member in group.piles:
            if member not in known:
                problems.add(label, "piles", f"no pile {member!r} in this station")
    for pile in piles:
        if pile.phases == 1 and pile.phase is None:
            problems.add(
                DeviceRef.pile(pile.id).label,
                "phase",
                "a single-phase pile must name its phase (L1, L2 or L3)",
            )
        if pile.phases == 3 and pile.phase is not None:
            problems.add(
                DeviceRef.pile(pile.id).label,
                "phase",
                "a three-phase pile is on every phase; remove phase",
            )
    if phase_limits is None and any(p.phases == 1 for p in piles):
        problems.add(
            "phase_limits", "", "single-phase piles need [phase_limits] to keep the phases balanced"
        )


def _cross_check(
    problems: Problems,
    transformer: Transformer | None,
    control: ControlSettings | None,
    background: BackgroundProfile | None,
    meters: list[MeterConfig],
    piles: list[PileConfig],
    device_maps: Mapping[str, RegisterMap],
    tariff: Tariff | None,
    info: StationInfo | None,
) -> None:
    limit = transformer.limit_kw if transformer else math.inf
    seen_ids: set[str] = set()
    endpoints: dict[tuple[str, int, str, int | str], str] = {}
    for meter in meters:
        label = DeviceRef.meter(meter.id).label
        if meter.id in seen_ids:
            problems.add(label, "id", "another device has the same id")
        seen_ids.add(meter.id)
        if _address(meter) in endpoints:
            problems.add(label, "port", f"already used by {endpoints[_address(meter)]}")
        endpoints.setdefault(_address(meter), label)
        regmap = device_maps.get(meter.device)
        if regmap is not None and regmap.kind != "meter":
            problems.add(label, "device", f"{meter.device} is a {regmap.kind} map, not a meter map")
    for pile in piles:
        label = DeviceRef.pile(pile.id).label
        if pile.id in seen_ids:
            problems.add(label, "id", "another device has the same id")
        seen_ids.add(pile.id)
        endpoint = _address(pile)
        if endpoint in endpoints:
            what = (
                f"object {pile.opcua_object} at {pile.opcua_url}"
                if pile.protocol == "opcua"
                else f"{pile.address} unit {pile.unit}"
            )
            problems.add(label, "port", f"{what} is already used by {endpoints[endpoint]}")
        endpoints.setdefault(endpoint, label)
        if pile.max_kw > limit:
            problems.add(
                label,
                "max_kw",
                f"{pile.max_kw:g} kW is above the site limit of {limit:g} kW (transformer x power factor x margin)",
            )
        if pile.min_kw > pile.max_kw:
            problems.add(label, "min_kw", f"{pile.min_kw:g} kW is above max_kw {pile.max_kw:g} kW")
        if pile.fallback_kw > pile.max_kw:
            problems.add(
                label, "fallback_kw", f"{pile.fallback_kw:g} kW is above max_kw {pile.max_kw:g} kW"
            )
        if 0 < pile.fallback_kw < pile.min_kw:
            problems.add(
                label,
                "fallback_kw",
                f"{pile.fallback_kw:g} kW is between 0 and min_kw {pile.min_kw:g} kW",
            )
        if not pile.ocpp and control is not None and pile.comm_timeout_s < 2 * control.period_s:
            problems.add(
                label,
                "comm_timeout_s",
                f"{pile.comm_timeout_s:g} s is less than twice the control period ({control.period_s:g} s): the fail-safe would fire while the controller runs",
            )
        regmap = device_maps.get(pile.device)
        if regmap is not None and regmap.kind == "meter":
            problems.add(
                label, "device", f"{pile.device} is a meter map, not a pile or charger map"
            )
        if regmap is not None and regmap.kind == "charger":
            _check_charger(problems, label, pile, regmap)
        if (
            regmap is not None
            and regmap.kind == "pile"
            and pile.bidirectional
            and "max_discharge_power" not in regmap
        ):
            problems.add(
                label, "max_discharge_kw", f"the {pile.device} map has no discharge registers"
            )
    if background is not None:
        peak_background = max(background.profile_kw) + 3 * background.noise_kw
        if peak_background >= limit:
            problems.add(
                "background",
                "profile_kw",
                f"the site's own load peaks at {peak_background:g} kW, at or above the site limit of {limit:g} kW",
            )
        fallback_total = sum(p.fallback_kw for p in piles)
        if piles and fallback_total + peak_background > limit:
            problems.add(
                "piles",
                "fallback_kw",
                f"all piles at their fallback power ({fallback_total:g} kW) plus the site's own peak ({peak_background:g} kW) exceed the site limit of {limit:g} kW: the fail-safe would overload the transformer",
            )
    if control is not None and transformer is not None and control.reserve_kw >= limit:
        problems.add(
            "control",
            "reserve_kw",
            f"{control.reserve_kw:g} kW leaves nothing of the {limit:g} kW limit",
        )
    if tariff is not None and info is not None and tariff.timezone != info.timezone:
        problems.add(
            "station", "timezone", f"{info.timezone} differs from the tariff's {tariff.timezone}"
        )
