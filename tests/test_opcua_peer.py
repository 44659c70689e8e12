"""node-opcua, an independent OPC-UA client stack, against the simulator's OPC-UA server.

`make opcua-peer` installs node-opcua's client from npm into `tests/opcua_peer/node_modules`
(pinned by its package-lock.json); without node or that directory these tests are skipped,
naming the target. The simulated reference station serves its metering terminal and piles P01 and
P02 over OPC-UA with certificates from a station CA made by `certs.init`, and `peer.js` runs every
case below in one node process, each a client of its own with a timeout of 30 s, far above what an
answer takes: a case the server left unanswered ends as "timeout", which no case expects.

Accepted: SignAndEncrypt with Basic256Sha256 and with Aes128Sha256RsaOaep, a user and password;
the client checks the server's certificate against the CA and its revocation list (it refuses
the same server when it is given the CA without the list: BadCertificateRevocationUnknown, the
strict client's answer before `certs init` wrote one). It reads the terminal and a pile, and one
Write of a read-only and a writable variable gets BadNotWritable and Good, the latter applied.

Refused by the server: Sign without encryption (BadSecurityModeRejected); the deprecated policies
Basic256 and Basic128Rsa15 (the server answers with an Error message BadSecurityPolicyRejected,
which node-opcua reports only as a closed connection, so the status is read from the server's
log); a certificate no trusted CA issued (BadSecurityChecksFailed), a revoked one
(BadCertificateRevoked), an application URI that is not the certificate's
(BadCertificateUriInvalid); a wrong password (BadUserAccessDenied). An unencrypted session is not
a case here: node-opcua will not ask for one the server's endpoints do not offer
(`test_opcua_loopback.py` asks for it with asyncua and gets BadSecurityPolicyRejected).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from base import certs
from base.clock import VirtualClock
from base.config import Station
from simulator.hardware import StationSimulator
from tests.conftest import local_time, on_free_ports, on_one_opcua_endpoint

pytestmark = [pytest.mark.loopback, pytest.mark.timeout(400)]

PEER = Path(__file__).resolve().parent / "opcua_peer"
USER = "operator"
PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "FLEXCHARGE_TEST_OPCUA_PASSWORD"
TIMEOUT_MS = 30_000
FALLBACK_KW = 110.0


@dataclass(frozen=True)
class Case:
    """One client: what it asks for, and what it should get."""

    name: str
    outcome: str  # "session" or "refused"
    status: str | None  # the status the peer reports; None: it reports none
    options: dict[str, Any] = field(default_factory=dict)
    server_status: str | None = None  # the refusal the server logs, where the peer shows none


SIGN_AND_ENCRYPT = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}
CASES = [
    Case("Basic256Sha256 SignAndEncrypt", "session", "Good", SIGN_AND_ENCRYPT),
    Case(
        "Aes128Sha256RsaOaep SignAndEncrypt",
        "session",
        "Good",
        {"policy": "Aes128_Sha256_RsaOaep", "mode": "SignAndEncrypt"},
    ),
    Case(
        "server checked without the CA's CRL",
        "refused",
        "BadCertificateRevocationUnknown",
        {**SIGN_AND_ENCRYPT, "crl": False},
    ),
    Case(
        "Sign only, Basic256Sha256",
        "refused",
        "BadSecurityModeRejected",
        {"policy": "Basic256Sha256", "mode": "Sign", "pin_server": True},
    ),
    Case(
        "Sign only, Aes128Sha256RsaOaep",
        "refused",
        "BadSecurityModeRejected",
        {"policy": "Aes128_Sha256_RsaOaep", "mode": "Sign", "pin_server": True},
    ),
    Case(
        "deprecated Basic256",
        "refused",
        None,
        {"policy": "Basic256", "mode": "SignAndEncrypt", "pin_server": True},
        server_status="BadSecurityPolicyRejected",
    ),
    Case(
        "deprecated Basic128Rsa15",
        "refused",
        None,
        {"policy": "Basic128Rsa15", "mode": "SignAndEncrypt", "pin_server": True},
        server_status="BadSecurityPolicyRejected",
    ),
    Case(
        "certificate no trusted CA issued",
        "refused",
        "BadSecurityChecksFailed",
        {**SIGN_AND_ENCRYPT, "identity": "intruder"},
    ),
    Case(
        "revoked certificate",
        "refused",
        "BadCertificateRevoked",
        {**SIGN_AND_ENCRYPT, "identity": "revoked"},
    ),
    Case(
        "application URI not the certificate's",
        "refused",
        "BadCertificateUriInvalid",
        {**SIGN_AND_ENCRYPT, "declare_uri": "urn:example:not-this-certificate"},
    ),
    Case(
        "wrong password",
        "refused",
        "BadUserAccessDenied",
        {**SIGN_AND_ENCRYPT, "password": "not the password"},
    ),
]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: `make opcua-peer` installs Debian's nodejs and npm")
    if not (PEER / "node_modules" / "node-opcua-client").is_dir():
        pytest.skip("node-opcua is not installed: `make opcua-peer` installs it from npm")
    return node


def _opcua_station(reference: Station, certs_dir: Path) -> Station:
    """The reference station with the terminal and piles P01, P02 on one OPC-UA endpoint."""
    return on_one_opcua_endpoint(on_free_ports(reference), certs_dir, USER, PASSWORD_ENV)


class _Refusals(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "simulator.opcua_guard" and "refused" in record.getMessage():
            self.lines.append(record.getMessage())
        if record.levelno >= logging.ERROR or record.exc_info:
            self.errors.append(f"{record.name}: {record.getMessage()}")


@dataclass
class PeerRun:
    """What the peer reported per case, and what the server logged and did meanwhile."""

    results: dict[str, dict[str, Any]]
    refusals: list[str]
    errors: list[str]
    fallback_kw: float


def _spec(station: Station, certs_dir: Path, scratch: Path) -> dict[str, Any]:
    daemon = station.identity("daemon")
    intruder = certs.self_signed(scratch, name="intruder", application_uri="urn:example:intruder")
    peer = certs.issue(certs_dir, "node-peer", application_uri="urn:example:node-peer")
    revoked = certs.issue(certs_dir, "node-revoked", application_uri="urn:example:revoked")
    certs.revoke(certs_dir, revoked.cert_pem)
    identities = {"peer": peer, "intruder": intruder, "revoked": revoked}
    cases = []
    for case in CASES:
        options = dict(case.options)
        ident = identities[options.pop("identity", "peer")]
        cases.append(
            {
                "name": case.name,
                "cert": str(ident.cert_pem),
                "key": str(ident.key_pem),
                "user": USER,
                "password": PASSWORD,
                "read": ["ns=2;s=terminal.frequency", "ns=2;s=P01.state"],
                "write": [
                    {"node": "ns=2;s=P01.state", "type": "Int64", "value": 3},
                    {"node": "ns=2;s=P01.fallback_power", "type": "Double", "value": FALLBACK_KW},
                ],
                **options,
            }
        )
    return {
        "url": station.grid_meter.opcua_url,
        "server_cert": str(station.identity("simulator").cert_pem),
        "ca": str(daemon.ca_pem),
        "crl": str(certs_dir / "crl" / certs.CRL_NAME),
        "pki": str(scratch / "pki"),
        "timeout_ms": TIMEOUT_MS,
        "cases": cases,
    }


async def _run(station: Station, spec_path: Path, out_path: Path, node: str) -> float:
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock) as sim:
            peer = await asyncio.create_subprocess_exec(
                node,
                str(PEER / "peer.js"),
                str(spec_path),
                str(out_path),
                cwd=PEER,
                stdout=subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await peer.communicate()
            if peer.returncode != 0:
                pytest.fail(f"the peer failed (exit {peer.returncode}):\n{stderr.decode()[-3000:]}")
            return sim.plant.piles["P01"].fallback_kw


@pytest.fixture(scope="module")
def peer_run(reference: Station, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerRun]:
    """node-opcua's run of every case against the simulated station, once for the module."""
    node = _node()
    scratch = tmp_path_factory.mktemp("opcua-peer")
    certs_dir = scratch / "certs"
    certs.init(certs_dir)
    station = _opcua_station(reference, certs_dir)
    spec_path, out_path = scratch / "cases.json", scratch / "results.jsonl"
    spec_path.write_text(json.dumps(_spec(station, certs_dir, scratch)))
    handler = _Refusals()
    logger = logging.getLogger("simulator.opcua_guard")
    level = logger.level
    logger.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    os.environ[PASSWORD_ENV] = PASSWORD
    try:
        fallback_kw = asyncio.run(_run(station, spec_path, out_path, node))
    finally:
        del os.environ[PASSWORD_ENV]
        logging.getLogger().removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    yield PeerRun({r["name"]: r for r in lines}, handler.lines, handler.errors, fallback_kw)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_opcua_client(peer_run: PeerRun, case: Case) -> None:
    """Each case ends as expected, with the status the server gave, never at the timeout."""
    result = peer_run.results[case.name]
    assert (result["outcome"], result["status"]) == (case.outcome, case.status), result
    if case.outcome == "session":
        reads = {r["node"]: r for r in result["reads"]}
        assert reads["ns=2;s=terminal.frequency"] == {
            "node": "ns=2;s=terminal.frequency",
            "status": "Good",
            "value": 50.0,
        }
        assert reads["ns=2;s=P01.state"]["status"] == "Good"
        assert result["writes"] == ["BadNotWritable", "Good"], "a result per item"
    if case.server_status is not None:
        assert "rejected by server" in result["message"], result
        refusals = [line for line in peer_run.refusals if case.server_status in line]
        policy = case.options["policy"]
        assert any(f"policy {policy}" in line for line in refusals), peer_run.refusals


def test_the_server_answered_every_refusal_and_logged_no_error(peer_run: PeerRun) -> None:
    """One refusal line per refused case (the CRL case is the client's own refusal), no error
    or traceback in the server's log, and the writable item of each Write applied."""
    refused_by_server = [
        c for c in CASES if c.outcome == "refused" and c.status != "BadCertificateRevocationUnknown"
    ]
    assert len(peer_run.refusals) == len(refused_by_server), peer_run.refusals
    assert peer_run.errors == []
    assert peer_run.fallback_kw == FALLBACK_KW
