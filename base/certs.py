"""A station's certificates: one CA, and a certificate for the daemon and for the simulator.

`flexcharge certs init DIR` writes this layout (what `[security] certs = DIR` expects):

    DIR/ca/ca.pem                 the station CA: the trust store of every party
    DIR/private/ca.key            the CA's key (only needed to issue more certificates)
    DIR/daemon/cert.pem, cert.der the daemon's certificate (OPC-UA and Modbus/TLS client)
    DIR/daemon/key.pem            its private key
    DIR/simulator/...             the same for the simulated hardware (OPC-UA and Modbus/TLS server)

Keys are written with mode 0600 in directories of mode 0700 and are never logged. The leaf
certificates carry what OPC-UA asks of an application instance certificate (the application URI as
a URI SAN, all four key usages, client and server authentication) and what TLS asks (host names
and addresses as SANs), so one certificate serves both protocols.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PARTIES = ("daemon", "simulator")
APPLICATION_URIS = {
    "daemon": "urn:flexcharge:daemon",
    "simulator": "urn:flexcharge:simulator",
}
KEY_BITS = 2048  # Basic256Sha256 and Aes128Sha256RsaOaep take 2048-4096-bit RSA keys


class CertError(Exception):
    """Certificates cannot be created or are missing."""


@dataclass(frozen=True)
class Identity:
    """Where one party's certificate and key sit, and the CA that vouches for them."""

    name: str
    cert_pem: Path
    cert_der: Path
    key_pem: Path
    ca_pem: Path
    application_uri: str

    @property
    def trust_dir(self) -> Path:
        """The directory holding the trusted CA (an OPC-UA trust store location)."""
        return self.ca_pem.parent

    def missing(self) -> list[Path]:
        """Files of this identity that do not exist."""
        return [
            p for p in (self.cert_pem, self.cert_der, self.key_pem, self.ca_pem) if not p.is_file()
        ]


def identity(certs_dir: Path, party: str) -> Identity:
    """The files of `party` ("daemon" or "simulator") in a directory made by `init`."""
    if party not in PARTIES:
        raise ValueError(f"unknown party {party!r}; expected one of {', '.join(PARTIES)}")
    base = certs_dir / party
    return Identity(
        name=party,
        cert_pem=base / "cert.pem",
        cert_der=base / "cert.der",
        key_pem=base / "key.pem",
        ca_pem=certs_dir / "ca" / "ca.pem",
        application_uri=APPLICATION_URIS[party],
    )


def default_hosts() -> list[str]:
    """Names and addresses a certificate made here should be valid for."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return hosts


def init(
    certs_dir: Path,
    *,
    station: str = "flexcharge station",
    hosts: Sequence[str] = (),
    days: int = 825,
    force: bool = False,
    now: dt.datetime | None = None,
) -> list[Path]:
    """Create the station CA and the daemon's and simulator's certificates; return the files.

    Refuses to overwrite an existing CA unless `force`: replacing it would lock out every device
    that trusts it.
    """
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    ca_key_path = certs_dir / "private" / "ca.key"
    ca_pem = certs_dir / "ca" / "ca.pem"
    if not force and (ca_pem.exists() or ca_key_path.exists()):
        raise CertError(f"{certs_dir} already holds a station CA; pass --force to replace it")
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    names = list(dict.fromkeys([*default_hosts(), *hosts]))
    written: list[Path] = []

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flexcharge"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{station} CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    written.append(_write_key(ca_key_path, ca_key))
    written.append(_write(ca_pem, ca_cert.public_bytes(serialization.Encoding.PEM)))

    for party in PARTIES:
        ident = identity(certs_dir, party)
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        builder = _leaf(ca_cert, ca_key, key, f"{station} {party}", ident.application_uri, names)
        cert = builder.not_valid_before(start).not_valid_after(end).sign(ca_key, hashes.SHA256())
        written.append(_write_key(ident.key_pem, key))
        written.append(_write(ident.cert_pem, cert.public_bytes(serialization.Encoding.PEM)))
        written.append(_write(ident.cert_der, cert.public_bytes(serialization.Encoding.DER)))
    return written


def self_signed(
    directory: Path, *, name: str, application_uri: str, hosts: Iterable[str] = ("localhost",)
) -> Identity:
    """A certificate signed by nobody the station trusts: what an intruder would present.

    Used by tests and by `certs` users who need to prove a peer is refused.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = _leaf(None, key, key, name, application_uri, list(hosts), subject=subject)
    cert = builder.not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
    signed = cert.sign(key, hashes.SHA256())
    ident = Identity(
        name=name,
        cert_pem=directory / name / "cert.pem",
        cert_der=directory / name / "cert.der",
        key_pem=directory / name / "key.pem",
        ca_pem=directory / name / "cert.pem",
        application_uri=application_uri,
    )
    _write_key(ident.key_pem, key)
    _write(ident.cert_pem, signed.public_bytes(serialization.Encoding.PEM))
    _write(ident.cert_der, signed.public_bytes(serialization.Encoding.DER))
    return ident


def _leaf(
    ca_cert: x509.Certificate | None,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    common_name: str,
    application_uri: str,
    hosts: Sequence[str],
    *,
    subject: x509.Name | None = None,
) -> x509.CertificateBuilder:
    subject = subject or x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flexcharge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    issuer = ca_cert.subject if ca_cert is not None else subject
    # A self-signed certificate is its own authority: its caller passes its key as `ca_key`.
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                # OPC-UA requires all four on an application instance certificate.
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(authority, False)
    )


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with 0600 from the start: a chmod after writing leaves a window where others can read.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path
