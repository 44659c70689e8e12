"""Station configs (`configs/stations/*.toml`): the loaded `Station` and its loader.

`load_station` reads the TOML into the section models (`base.stationsettings`, and
`base.stationdevices` for the device entries), checks what a schema cannot (a pile above the
transformer, two devices at one address: `base.stationchecks`), loads the tariff and every
register map the station names, and raises one `ConfigError` that lists every problem it found,
each naming the file, the device and the field. Nothing is defaulted silently: a missing required
value, an unknown field (a typo) or a value that makes no sense is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from base import certs
from base.devicemap import RegisterMap
from base.events import DeviceRef
from base.loading import ConfigError, ConfigProblem, Problems, Strict, field_key, read_toml
from base.mapfile import load_register_map
from base.stationchecks import check_ocpp_entry, check_station
from base.stationdevices import (
    NOT_FOR_OCPP,
    OCPP_ONLY,
    DeviceEndpoint,
    MeterConfig,
    OcppSettings,
    PileConfig,
)
from base.stationsettings import (
    ApiSettings,
    BackgroundProfile,
    ControlSettings,
    GroupConfig,
    PhaseLimits,
    SchedulerSettings,
    SecuritySettings,
    SimulatorSettings,
    StationInfo,
    TelemetrySettings,
    Transformer,
)
from base.tariff import Tariff
from base.tarifffile import load_tariff

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
REFERENCE_STATION = CONFIG_ROOT / "stations" / "bozhou-depot.toml"

_Endpoint = TypeVar("_Endpoint", bound=DeviceEndpoint)


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
            check_ocpp_entry(problems, label, entry)
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

    check_station(
        problems,
        info=info,
        transformer=transformer,
        control=control,
        background=background,
        meters=[m for m in (grid_meter, terminal) if m is not None],
        piles=piles,
        groups=groups,
        phase_limits=phase_limits,
        security=security,
        telemetry=telemetry,
        ocpp=ocpp,
        ocpp_given="ocpp" in raw,
        simulator=simulator,
        device_maps=device_maps,
        tariff=tariff,
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
