"""OPC-UA security: policies, the station CA's trust store and the daemon's identity.

Security: SignAndEncrypt with the first of the configured policies (Basic256Sha256,
Aes128Sha256RsaOaep) the server offers; the client presents the daemon's certificate, whose
application URI it declares, and refuses a server whose certificate the station CA did not sign
or its CA's revocation list (`crl_dir`, read whenever a session opens) lists.
A user name and password are sent only inside the encrypted channel. An unencrypted link must be
asked for explicitly (`OpcUaSecurity.insecure()`) and is then anonymous.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.uacrypto import CertProperties
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)


PolicyName = Literal["Basic256Sha256", "Aes128Sha256RsaOaep"]


POLICIES: Mapping[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}


DEFAULT_POLICIES: tuple[PolicyName, ...] = ("Basic256Sha256", "Aes128Sha256RsaOaep")


async def trust_store(directory: Path, crl_dir: Path | None = None) -> TrustStore:
    """asyncua's `TrustStore` of the certificates in `directory` (the station CA's directory) and
    the revocation lists in `crl_dir` (each must be signed by one of those CAs: `ValueError`)."""
    store = _StationTrustStore([directory], [crl_dir] if crl_dir is not None else [])
    await store.load()
    return store


class _StationTrustStore(TrustStore):
    """asyncua's trust store, reading its few small local files directly (asyncua reads them
    through anyio, whose worker thread outlives the call and every test's thread-leak check),
    checking that a CRL is its CA's, and answering without logging: the caller reports."""

    def __init__(self, trust_locations: list[Path], crl_locations: list[Path]) -> None:
        super().__init__(trust_locations, crl_locations)
        self._authorities: list[x509.Certificate] = []
        self._crls: list[x509.CertificateRevocationList] = []

    async def load_trust(self) -> None:
        self._authorities = []
        await super().load_trust()

    async def _load_trust_location(self, location: Path) -> list[x509.Certificate]:
        found = _certificates_in(location)
        self._authorities.extend(found)
        return found

    async def load_crl(self) -> None:
        self._crls = []
        await super().load_crl()

    async def _load_crl_location(self, location: Path) -> list[x509.RevokedCertificate]:
        revoked: list[x509.RevokedCertificate] = []
        for path, crl in _crls_in(location):
            if not any(_signed_by(crl, ca) for ca in self._authorities):
                raise ValueError(f"{path} is not signed by a trusted CA")
            self._crls.append(crl)
            revoked.extend(crl)
        return revoked

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        """True if a CRL of the certificate's issuer lists its serial number."""
        return any(
            crl.issuer == certificate.issuer
            and crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None
            for crl in self._crls
        )

    def is_trusted(self, certificate: x509.Certificate) -> bool:
        """True if one of the trusted CAs issued the certificate (or it is one of them)."""
        if self._trust_store is None:
            return False
        verifier = self.policy_builder.store(self._trust_store).build_client_verifier()
        try:
            verifier.verify(certificate, [])
        except x509.verification.VerificationError:
            return False
        return True


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    public_key = ca.public_key()
    return (
        crl.issuer == ca.subject
        and isinstance(public_key, rsa.RSAPublicKey)
        and crl.is_signature_valid(public_key)
    )


def _certificates_in(directory: Path) -> list[x509.Certificate]:
    """Every certificate in the .pem and .der files of `directory`."""
    certificates = []
    for path in sorted(Path(directory).iterdir()):
        if path.suffix.lower() == ".pem":
            certificates.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        elif path.suffix.lower() == ".der":
            certificates.append(x509.load_der_x509_certificate(path.read_bytes()))
    return certificates


def _crls_in(directory: Path) -> list[tuple[Path, x509.CertificateRevocationList]]:
    """The CRLs in the .pem, .der and .crl files of `directory` (none if it does not exist)."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in (".pem", ".der", ".crl") or not path.is_file():
            continue
        data = path.read_bytes()
        if data.lstrip().startswith(b"-----"):
            found.append((path, x509.load_pem_x509_crl(data)))
        else:
            found.append((path, x509.load_der_x509_crl(data)))
    return found


def read_identity(certificate: Path, private_key: Path) -> tuple[bytes, bytes]:
    """The PEM bytes of a certificate and its key (read here: asyncua would read them through
    anyio's lingering worker thread)."""
    return certificate.read_bytes(), private_key.read_bytes()


@dataclass(frozen=True, kw_only=True)
class OpcUaSecurity:
    """How a link authenticates itself and its server, and encrypts.

    `encrypt=True` (SignAndEncrypt) needs the client's certificate and key and the directory of
    the CAs it trusts servers by (and, if given, the directory of their revocation lists); `insecure()` says explicitly that a link is not encrypted. The
    password never appears in `repr`, logs or error messages.
    """

    encrypt: bool
    certificate: Path | None = None
    private_key: Path | None = None
    trust_dir: Path | None = None
    crl_dir: Path | None = None
    application_uri: str = "urn:flexcharge:daemon"
    policies: tuple[str, ...] = DEFAULT_POLICIES
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.encrypt and None in (self.certificate, self.private_key, self.trust_dir):
            raise ValueError("SignAndEncrypt needs a certificate, its private key and a trust dir")
        if not self.policies:
            raise ValueError("at least one security policy is needed")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown security policies {unknown}; known: {sorted(POLICIES)}")
        if (self.user is None) != (self.password is None):
            raise ValueError("a user name needs a password and a password a user name")
        if self.user is not None and not self.encrypt:
            raise ValueError("a password is never sent over an unencrypted link")

    @classmethod
    def insecure(cls) -> OpcUaSecurity:
        """No encryption, no signatures, an anonymous session: only where asked for explicitly."""
        return cls(encrypt=False)


def pem_properties(data: bytes) -> CertProperties:
    """A PEM certificate or key as asyncua takes it."""
    return CertProperties(data, extension="pem")
