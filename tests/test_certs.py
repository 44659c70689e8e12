"""`flexcharge certs init`: a station CA and the daemon's and simulator's certificates."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from base import certs
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
