"""`flexcharge certs`: a station CA, its revocation list and the certificates it issues."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from base import certs
from drivers.opcua.security import trust_store
from flexcharge import cli


def test_certs_init_writes_private_keys_for_their_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys 0600 in 0700 directories, certificates readable; no key material on the console."""
    target = tmp_path / "certs"
    assert cli.main(["certs", "init", str(target), "--host", "charger-gw.local"]) == 0
    out = capsys.readouterr().out
    assert "PRIVATE KEY" not in out and "BEGIN" not in out
    for party in ("daemon", "simulator"):
        ident = certs.identity(target, party)
        assert ident.missing() == []
        assert stat.S_IMODE(ident.key_pem.stat().st_mode) == 0o600
        assert stat.S_IMODE(ident.key_pem.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(ident.cert_pem.stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "private" / "ca.key").stat().st_mode) == 0o600


def test_certificates_serve_opcua_and_tls_and_chain_to_the_ca(tmp_path: Path) -> None:
    """Application URI, host names, all four key usages, both EKUs, signed by the station CA."""
    certs.init(tmp_path, station="hub", hosts=["charger-gw.local", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    store = x509.verification.Store([ca])
    for party in ("daemon", "simulator"):
        ident = certs.identity(tmp_path, party)
        cert = x509.load_pem_x509_certificate(ident.cert_pem.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ident.application_uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert {"localhost", "charger-gw.local"} <= set(san.get_values_for_type(x509.DNSName))
        assert "10.0.0.5" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.content_commitment
        assert usage.key_encipherment and usage.data_encipherment and not usage.key_cert_sign
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        verifier = x509.verification.PolicyBuilder().store(store).build_client_verifier()
        verifier.verify(cert, [])  # raises if the chain does not hold
    intruder = certs.self_signed(tmp_path, name="intruder", application_uri="urn:intruder")
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(x509.load_pem_x509_certificate(intruder.cert_pem.read_bytes()), [])


def test_an_existing_ca_is_not_replaced_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replacing the CA would lock out every device that trusts it: --force is required."""
    assert cli.main(["certs", "init", str(tmp_path)]) == 0
    before = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert cli.main(["certs", "init", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().out
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == before
    assert cli.main(["certs", "init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca" / "ca.pem").read_bytes() != before


def test_init_writes_an_empty_crl_the_ca_signed(tmp_path: Path) -> None:
    """The CRL names the CA, lists nothing, says when the next one is due and is the CA's."""
    written = certs.init(tmp_path)
    crl_path = tmp_path / "crl" / certs.CRL_NAME
    assert crl_path in written
    assert stat.S_IMODE(crl_path.stat().st_mode) == 0o644
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.issuer == ca.subject and len(crl) == 0
    assert crl.is_signature_valid(ca.public_key())
    assert crl.next_update_utc == ca.not_valid_after_utc
    assert crl.last_update_utc is not None and crl.last_update_utc < crl.next_update_utc
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert certs.identity(tmp_path, "daemon").crl_dir == tmp_path / "crl"


def test_issue_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certs issue` adds an application's certificate from the CA, `certs revoke` lists it on
    the CRL (again: no second entry), and neither touches what is not the station CA's."""
    assert cli.main(["certs", "init", str(tmp_path)]) == 0
    assert cli.main(["certs", "issue", str(tmp_path), "scada", "--uri", "urn:example:scada"]) == 0
    scada = tmp_path / "scada" / "cert.pem"
    cert = x509.load_pem_x509_certificate(scada.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:example:scada"]
    assert stat.S_IMODE((tmp_path / "scada" / "key.pem").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cli.main(["certs", "issue", str(tmp_path), "scada", "--uri", "urn:x"]) == 1
    assert cli.main(["certs", "issue", str(tmp_path), "crl", "--uri", "urn:x"]) == 1
    assert "already holds" in capsys.readouterr().out

    crl_path = tmp_path / "crl" / certs.CRL_NAME
    for number in (2, 3):
        assert cli.main(["certs", "revoke", str(tmp_path), str(scada)]) == 0
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        assert [r.serial_number for r in crl] == [cert.serial_number]
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
        assert crl.is_signature_valid(ca.public_key())

    intruder = certs.self_signed(tmp_path / "x", name="intruder", application_uri="urn:intruder")
    before = crl_path.read_bytes()
    assert cli.main(["certs", "revoke", str(tmp_path), str(intruder.cert_pem)]) == 1
    assert "not issued by the station CA" in capsys.readouterr().out
    assert crl_path.read_bytes() == before


def test_issue_a_charge_point_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs issue DIR IDENTITY --charge-point`: a client certificate whose CN is the charge
    point's identity (what OCPP security profile 3 checks), with a URI but no host names;
    `certs.charge_point` returns it as it is, or issues one for an identity that has none."""
    assert cli.main(["certs", "init", str(tmp_path), "--station", "depot"]) == 0
    assert cli.main(["certs", "issue", str(tmp_path), "CP-2", "--charge-point"]) == 0
    assert "certificate for charge point CP-2" in capsys.readouterr().out
    pem = (tmp_path / "CP-2" / "cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["CP-2"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:flexcharge:charge-point:CP-2"
    ]
    assert san.get_values_for_type(x509.DNSName) == []
    assert san.get_values_for_type(x509.IPAddress) == []
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert certs.station_name(tmp_path / "ca" / "ca.pem") == "depot"

    assert certs.charge_point(tmp_path, "CP-2").cert_pem.read_bytes() == pem, "kept"
    made = certs.charge_point(tmp_path, "P01")
    assert made.cert_pem == tmp_path / "P01" / "cert.pem"
    cert = x509.load_pem_x509_certificate(made.cert_pem.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "P01"
    assert stat.S_IMODE(made.key_pem.stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_trust_store_uses_the_crl_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    """Both OPC-UA ends' trust store: trusted until revoked; a CRL another CA signed is an error."""
    certs.init(tmp_path / "station")
    certs.init(tmp_path / "other")
    daemon = certs.identity(tmp_path / "station", "daemon")
    cert = x509.load_pem_x509_certificate(daemon.cert_pem.read_bytes())
    store = await trust_store(daemon.trust_dir, daemon.crl_dir)
    assert store.is_trusted(cert) and not store.is_revoked(cert)
    certs.revoke(tmp_path / "station", daemon.cert_pem)
    store = await trust_store(daemon.trust_dir, daemon.crl_dir)
    assert store.is_trusted(cert) and store.is_revoked(cert)
    with pytest.raises(ValueError, match="not signed by a trusted CA"):
        await trust_store(daemon.trust_dir, tmp_path / "other" / "crl")
