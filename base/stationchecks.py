"""What a station file's schema cannot check: rules across its entries and sections.

Each check takes the parsed models (None for a section that failed its own checks) and adds
what it finds to a `Problems` collector, in the order the loader reports them: a pile above the
site limit, two devices at one address, a serial line with two settings, OCPP charge points
without an [ocpp] server, passwords without a user, a map of the wrong kind, and the like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from base.devicemap import RegisterMap
from base.events import DeviceRef
from base.loading import Problems
from base.stationdevices import (
    NOT_FOR_OCPP,
    SERIAL_FIELDS,
    DeviceEndpoint,
    MeterConfig,
    OcppSettings,
    PileConfig,
)
from base.stationsettings import (
    LOCAL_STORE_ONLY,
    BackgroundProfile,
    ControlSettings,
    GroupConfig,
    PhaseLimits,
    SecuritySettings,
    SimulatorSettings,
    StationInfo,
    TelemetrySettings,
    Transformer,
)
from base.tariff import Tariff


def check_station(
    problems: Problems,
    *,
    info: StationInfo | None,
    transformer: Transformer | None,
    control: ControlSettings | None,
    background: BackgroundProfile | None,
    meters: list[MeterConfig],
    piles: list[PileConfig],
    groups: list[GroupConfig],
    phase_limits: PhaseLimits | None,
    security: SecuritySettings | None,
    telemetry: TelemetrySettings | None,
    ocpp: OcppSettings | None,
    ocpp_given: bool,
    simulator: SimulatorSettings | None,
    device_maps: Mapping[str, RegisterMap],
    tariff: Tariff | None,
) -> None:
    """Add to `problems` every rule across the station's entries and sections it breaks.

    `meters`: the grid meter and the terminal, those that parsed; `ocpp_given`: the file has an
    [ocpp] section (`ocpp` is None also when it has one with mistakes).
    """
    _check_groups(problems, piles, groups, phase_limits)
    _check_security(problems, security, [*meters, *piles])
    _check_serial_lines(problems, [*meters, *piles])
    _check_telemetry(problems, telemetry)
    _check_ocpp(problems, ocpp, ocpp_given, piles, control, security)
    _check_charge_points(problems, simulator, piles)
    _cross_check(
        problems, transformer, control, background, meters, piles, device_maps, tariff, info
    )


def check_ocpp_entry(problems: Problems, label: str, entry: Mapping[str, object]) -> None:
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
    for name in SERIAL_FIELDS:
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
