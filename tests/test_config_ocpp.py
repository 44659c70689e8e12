"""Station files with OCPP piles ([ocpp] and protocol = "ocpp"): what loads, and every mistake
reported with its file, pile and field. Broken stations are edited copies of the configs/ tree
(see tests/test_config.py), with some reference piles turned into OCPP charge points.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from base.config import load_station
from base.loading import ConfigError, ConfigProblem
from tests.test_config import STATION, configs, edit, find

__all__ = ["configs"]

OCPP = """
[ocpp]
host = "127.0.0.1"
port = 15040
security_profile = 0
profile_validity_s = 30
"""


def ocpp_station(root: Path) -> Path:
    """The reference depot with P01 a 1.6 charge point and P02 a 2.0.1 one (with an identity)."""
    edit(
        root,
        STATION,
        'id = "P01"\nport = 15021\n',
        'id = "P01"\nprotocol = "ocpp"\nocpp_version = "1.6"\n',
    )
    edit(
        root,
        STATION,
        'id = "P02"\nport = 15022\n',
        'id = "P02"\nprotocol = "ocpp"\nocpp_version = "2.0.1"\nocpp_identity = "CP-2"\n'
        "connector = 2\n",
    )
    return edit(root, STATION, "[pile_defaults]\n", OCPP + "\n[pile_defaults]\n")


def problems_of(root: Path) -> list[ConfigProblem]:
    """The problems load_station reports for the copy (fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_station(root / STATION)
    return info.value.problems


def test_ocpp_piles_load_without_endpoint_or_map(configs: Path) -> None:
    """An OCPP pile takes nothing of [pile_defaults]' endpoint; its timeout is the validity."""
    ocpp_station(configs)
    station = load_station(configs / STATION)
    p01, p02, p03 = station.pile("P01"), station.pile("P02"), station.pile("P03")
    assert station.ocpp is not None and station.ocpp.port == 15040
    assert (p01.ocpp, p01.identity, p01.connector, p01.ocpp_version) == (True, "P01", 1, "1.6")
    assert (p02.identity, p02.connector, p02.supply) == ("CP-2", 2, "dc")
    assert p01.device == "" and p01.host == "" and p01.comm_timeout_s == 30.0
    assert p01.address == "ocpp:P01/1" and p02.address == "ocpp:CP-2/2"
    # The defaults still apply where they make sense for OCPP piles.
    assert (p01.min_kw, p01.fallback_kw) == (20.0, 100.0)
    assert not p03.ocpp and p03.device == "flexcharge-dc-pile" and p03.comm_timeout_s == 10.0
    # Tests move Modbus devices to free ports; OCPP piles have none to move.
    moved = station.with_endpoints({"P01": 1, "P03": 2})
    assert moved.pile("P01") == p01 and moved.pile("P03").port == 2
    assert station.with_ocpp(port=0).ocpp == station.ocpp.model_copy(update={"port": 0})


def test_ocpp_pile_fields_that_do_not_apply(configs: Path) -> None:
    """host, port, unit, device, comm_timeout_s, serial and OPC-UA fields in an OCPP pile's own
    entry are mistakes; a missing ocpp_version is one; OCPP fields on a Modbus pile too."""
    path = ocpp_station(configs)
    edit(
        configs,
        STATION,
        'ocpp_version = "1.6"\n',
        'host = "10.0.0.1"\nunit = 3\ndevice = "flexcharge-dc-pile"\ncomm_timeout_s = 5.0\n'
        'baudrate = 19200\nobject = "x"\n',
    )
    edit(
        configs, STATION, 'id = "P03"\nport = 15023\n', 'id = "P03"\nport = 15023\nconnector = 2\n'
    )
    problems = problems_of(configs)
    for name in ("host", "unit", "device", "baudrate", "object"):
        find(problems, path, "pile P01", name, "does not apply to OCPP piles")
    find(problems, path, "pile P01", "comm_timeout_s", "profile_validity_s")
    find(problems, path, "pile P01", "ocpp_version", "required")
    find(problems, path, "pile P03", "connector", "only OCPP piles")
    # Nothing about the fields P02 inherits from [pile_defaults] (device, host, unit, timeout).
    assert not [p for p in problems if p.device == "pile P02"]


def test_ocpp_piles_need_the_section_and_distinct_connectors(configs: Path) -> None:
    """No [ocpp] section; two piles on one identity+connector; one identity, two versions;
    V2G over 1.6."""
    path = ocpp_station(configs)
    edit(configs, STATION, OCPP, "")
    edit(
        configs,
        STATION,
        'id = "P03"\nport = 15023\n',
        'id = "P03"\nprotocol = "ocpp"\nocpp_version = "2.0.1"\nocpp_identity = "CP-2"\n'
        "connector = 2\n",
    )
    edit(
        configs,
        STATION,
        'id = "P04"\nport = 15024\n',
        'id = "P04"\nprotocol = "ocpp"\nocpp_version = "1.6"\nocpp_identity = "CP-2"\n'
        "max_discharge_kw = 100.0\n",
    )
    problems = problems_of(configs)
    problem = find(problems, path, None, "ocpp", "needs an [ocpp] section")
    assert "P01" in problem.message and "P04" in problem.message
    find(problems, path, "pile P03", "connector", "already used by pile P02")
    find(problems, path, "pile P04", "ocpp_version", "differs from 2.0.1 of pile P02")
    find(problems, path, "pile P04", "max_discharge_kw", "needs ocpp_version 2.0.1")


def test_ocpp_security_profile_rules(configs: Path) -> None:
    """Profiles 1-2 need exactly one password source, 0 and 3 take none; TLS needs [security];
    the validity outlasts two control periods; unknown fields are named."""
    path = ocpp_station(configs)
    edit(
        configs,
        STATION,
        "security_profile = 0\n",
        'security_profile = 2\npassword_env = "A"\npassword_file = "pw"\n',
    )
    edit(configs, STATION, "profile_validity_s = 30", "profile_validity_s = 1.5")
    problems = problems_of(configs)
    find(problems, path, "ocpp", "password_env", "exactly one")
    find(problems, path, "ocpp", "security_profile", "needs [security]")
    find(problems, path, "ocpp", "profile_validity_s", "twice the control period")
    edit(configs, STATION, "security_profile = 2\n", "security_profile = 0\n")
    find(problems_of(configs), path, "ocpp", "password_file", "takes no password")
    edit(configs, STATION, "security_profile = 0\n", "security_profile = 0\ncolour = 1\n")
    problems = problems_of(configs)
    find(problems, path, None, "ocpp.colour", "unknown field")
    assert not [p for p in problems if "needs an [ocpp] section" in p.message]


def test_ocpp_password_comes_from_env_or_file(configs: Path) -> None:
    """The basic-auth password is read when asked for, from the variable or the file."""
    ocpp_station(configs)
    edit(configs, STATION, "security_profile = 0\n", 'security_profile = 1\npassword_file = "pw"\n')
    station = load_station(configs / STATION)
    with pytest.raises(ConfigError, match=r"ocpp\.password_file"):
        station.ocpp_password()
    (configs / "stations" / "pw").write_text("s3cret\n", encoding="utf-8")
    assert station.ocpp_password() == "s3cret"
    name = "FLEXCHARGE_TEST_OCPP_PASSWORD"
    by_env = station.with_ocpp(password_file=None, password_env=name)
    os.environ.pop(name, None)
    with pytest.raises(ConfigError, match=name):
        by_env.ocpp_password()
    os.environ[name] = "from-env"
    try:
        assert by_env.ocpp_password() == "from-env"
    finally:
        del os.environ[name]
    assert station.with_ocpp(security_profile=0, password_file=None).ocpp_password() is None
