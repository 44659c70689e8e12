"""The device entries of a station file and how their links are reached.

[grid_meter], [terminal] and each [[piles]] entry (`DeviceEndpoint`, `MeterConfig`,
`PileConfig`): the device's id, its register map and where it answers (Modbus TCP or TLS, Modbus
RTU on a serial line or over TCP, OPC-UA, OCPP). Beside them what only OCPP piles involve: the
daemon's [ocpp] server (`OcppSettings`) and a simulated charge point's quirks
(`ChargePointQuirks`). Checks across entries are in `base.stationchecks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails

from base.loading import Kw, Port, PositiveKw, Strict, UnitId

LinkProtocol = Literal[
    "modbus-tcp", "modbus-tls", "modbus-rtu", "modbus-rtu-over-tcp", "opcua", "ocpp"
]
# The rates RS-485 meters and chargers offer.
BaudRate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]
# A serial line's settings (modbus-rtu devices only).
SERIAL_FIELDS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")
# What an OCPP pile has no use for: it connects to us, by its identity, and has no register map.
NOT_FOR_OCPP = (
    "host",
    "port",
    "unit",
    "device",
    *SERIAL_FIELDS,
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
