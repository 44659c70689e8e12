"""A station's certificates: one CA, and a certificate for the daemon and for the simulator.

`flexcharge certs init DIR` writes this layout (what `[security] certs = DIR` expects):

    DIR/ca/ca.pem                 the station CA: the trust store of every party
    DIR/crl/ca.crl.pem            the CA's certificate revocation list (signed by the CA)
    DIR/private/ca.key            the CA's key (only needed to issue or revoke certificates)
    DIR/daemon/cert.pem, cert.der the daemon's certificate (OPC-UA and Modbus/TLS client)
    DIR/daemon/key.pem            its private key
    DIR/simulator/...             the same for the simulated hardware (OPC-UA and Modbus/TLS server)

`issue` adds a certificate for another application (DIR/NAME/..., e.g. a SCADA client) or for an
OCPP charge point (DIR/IDENTITY/..., its CN the identity, as security profile 3 asks) and
`revoke` adds a certificate to the CRL. The CRL starts empty; it names its next update as the day
the CA expires, since a station CA is offline and the CRL is only re-signed when a certificate is
revoked. OPC-UA peers read it beside the CA: a strict client refuses a CA-signed certificate
whose revocation it cannot check (BadCertificateRevocationUnknown).

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
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PARTIES = ("daemon", "simulator")
APPLICATION_URIS = {
    "daemon": "urn:flexcharge:daemon",
    "simulator": "urn:flexcharge:simulator",
}
KEY_BITS = 2048  # Basic256Sha256 and Aes128Sha256RsaOaep take 2048-4096-bit RSA keys
CRL_NAME = "ca.crl.pem"
RESERVED_NAMES = ("ca", "crl", "private")


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
    crl_dir: Path | None = None

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
    return _identity(certs_dir, party, APPLICATION_URIS[party])


def _identity(certs_dir: Path, name: str, application_uri: str) -> Identity:
    base = certs_dir / name
    return Identity(
        name=name,
        cert_pem=base / "cert.pem",
        cert_der=base / "cert.der",
        key_pem=base / "key.pem",
        ca_pem=certs_dir / "ca" / "ca.pem",
        application_uri=application_uri,
        crl_dir=certs_dir / "crl",
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
    written.append(_write_crl(certs_dir, ca_cert, ca_key, [], number=1, now=start))

    for party in PARTIES:
        ident = identity(certs_dir, party)
        written += _issue(ca_cert, ca_key, ident, f"{station} {party}", names, start, end)
    return written


def issue(
    certs_dir: Path,
    name: str,
    *,
    application_uri: str | None = None,
    charge_point: bool = False,
    hosts: Sequence[str] = (),
    days: int = 825,
    now: dt.datetime | None = None,
) -> Identity:
    """A certificate from the station CA for another application (`certs_dir`/`name`/...).

    An application's certificate is named "<station> <name>" and valid for this host's names
    and `hosts`; it needs its OPC-UA `application_uri`. With `charge_point` it is an OCPP charge
    point's client certificate instead: `name` is the charge point's identity and its common
    name (what security profile 3 checks), its URI `charge_point_uri(name)` unless given, and
    it names no host but `hosts`. Refuses a name that is taken: replacing a certificate is
    revoking it and issuing a new one.
    """
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    if not name or name in RESERVED_NAMES or name != Path(name).name or name.startswith("."):
        raise CertError(f"{name!r} cannot name a certificate's directory")
    if charge_point:
        application_uri = application_uri or charge_point_uri(name)
    if not application_uri:
        raise CertError("an OPC-UA application certificate needs an application URI")
    ident = _identity(certs_dir, name, application_uri)
    if ident.cert_pem.exists() or ident.key_pem.exists():
        raise CertError(f"{ident.cert_pem.parent} already holds a certificate")
    ca_cert, ca_key = _load_ca(certs_dir)
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    if charge_point:
        common_name, names = name, list(dict.fromkeys(hosts))
    else:
        common_name = f"{_common_name(ca_cert).removesuffix(' CA')} {name}"
        names = list(dict.fromkeys([*default_hosts(), *hosts]))
    _issue(ca_cert, ca_key, ident, common_name, names, start, end)
    return ident


def charge_point_uri(identity: str) -> str:
    """The URI (a SAN) in a charge point certificate `issue` makes."""
    return f"urn:flexcharge:charge-point:{urllib.parse.quote(identity, safe='')}"


def charge_point(certs_dir: Path, identity: str) -> Identity:
    """The certificate of the OCPP charge point `identity` in `certs_dir`/`identity`/: the one
    there, or else a new one from the station CA (`issue` with `charge_point`)."""
    ident = _identity(certs_dir, identity, charge_point_uri(identity))
    if ident.cert_pem.is_file() and ident.key_pem.is_file():
        return ident
    return issue(certs_dir, identity, charge_point=True)


def station_name(ca_pem: Path) -> str:
    """The station's name in its CA certificate (the CA's CN without " CA"), which `issue` puts
    before an application's name; "" when `ca_pem` holds no readable certificate."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    except (OSError, ValueError):
        return ""
    return _common_name(ca_cert).removesuffix(" CA")


def revoke(certs_dir: Path, certificate: Path, *, now: dt.datetime | None = None) -> Path:
    """Add `certificate` (PEM or DER, issued by the station CA) to the CA's CRL; return the CRL.

    Revoking it again changes nothing but the CRL's number and date.
    """
    ca_cert, ca_key = _load_ca(certs_dir)
    try:
        data = certificate.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read {certificate}: {exc.strerror}") from None
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    except ValueError as exc:
        raise CertError(f"{certificate} is not a certificate: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"{certificate} was not issued by the station CA in {certs_dir}") from None
    crl = read_crl(certs_dir / "crl" / CRL_NAME)
    revoked = list(crl) if crl is not None else []
    number = _crl_number(crl) + 1 if crl is not None else 1
    when = now or dt.datetime.now(dt.UTC)
    if all(r.serial_number != cert.serial_number for r in revoked):
        revoked.append(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(when)
            .build()
        )
    return _write_crl(certs_dir, ca_cert, ca_key, revoked, number=number, now=when)


def read_crl(path: Path) -> x509.CertificateRevocationList | None:
    """The CRL in `path` (PEM or DER), or None if there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


class Revocations:
    """The station CA's revocation list as it stands on disk, read again whenever the file
    changes (a certificate `revoke` shuts out is refused from its next connection on), and
    trusted only if the CA signed it. Without a list it can trust, every certificate is
    refused: whether one was revoked cannot be known."""

    def __init__(self, ca_pem: Path, crl_pem: Path) -> None:
        self.ca_pem = ca_pem
        self.crl_pem = crl_pem
        self._seen: tuple[int, int] | None = None
        self._list: x509.CertificateRevocationList | None = None
        self._error = ""

    def refusal(self, serial_number: int) -> str:
        """Why a certificate of the CA with this serial number may not be used ("" if it may)."""
        self._refresh()
        if self._list is None:
            return self._error
        if self._list.get_revoked_certificate_by_serial_number(serial_number) is not None:
            return f"certificate {serial_number:x} is revoked ({self.crl_pem})"
        return ""

    def _refresh(self) -> None:
        try:
            stat = self.crl_pem.stat()
        except OSError as exc:
            self._seen, self._list = None, None
            self._error = f"no revocation list to check against ({self.crl_pem}: {exc.strerror})"
            return
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return
        self._seen, self._list = seen, None
        try:
            crl = read_crl(self.crl_pem)
            ca = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        except (OSError, ValueError) as exc:
            self._error = f"cannot read the revocation list {self.crl_pem}: {exc}"
            return
        key = ca.public_key()
        if (
            crl is None
            or crl.issuer != ca.subject
            or not isinstance(key, rsa.RSAPublicKey)  # a station CA's, as `init` makes it
            or not crl.is_signature_valid(key)
        ):
            self._error = f"the revocation list {self.crl_pem} is not signed by the station CA"
            return
        self._list = crl


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


def _load_ca(certs_dir: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    ca_pem, ca_key_path = certs_dir / "ca" / "ca.pem", certs_dir / "private" / "ca.key"
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(
            f"{exc.filename} is missing: issuing and revoking need the station CA and its key "
            f"(flexcharge certs init {certs_dir})"
        ) from None
    if not isinstance(ca_key, rsa.RSAPrivateKey):
        raise CertError(f"{ca_key_path} is not an RSA key")
    return ca_cert, ca_key


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _issue(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    ident: Identity,
    common_name: str,
    hosts: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
) -> list[Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    builder = _leaf(ca_cert, ca_key, key, common_name, ident.application_uri, hosts)
    cert = builder.not_valid_before(start).not_valid_after(end).sign(ca_key, hashes.SHA256())
    return [
        _write_key(ident.key_pem, key),
        _write(ident.cert_pem, cert.public_bytes(serialization.Encoding.PEM)),
        _write(ident.cert_der, cert.public_bytes(serialization.Encoding.DER)),
    ]


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _write_crl(
    certs_dir: Path,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    revoked: Sequence[x509.RevokedCertificate],
    *,
    number: int,
    now: dt.datetime,
) -> Path:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    return _write(certs_dir / "crl" / CRL_NAME, crl.public_bytes(serialization.Encoding.PEM))


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
    # A peer may read the file (a CRL) while it is replaced: it sees the old one or the new one.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.chmod(0o644)
    partial.replace(path)
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
