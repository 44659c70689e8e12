"""TLS contexts for Modbus/TCP Security: mutual certificates against the station's CA.

Modbus/TCP Security (port 802) is plain Modbus inside TLS 1.2 or later where both ends present a
certificate the other trusts. pymodbus takes a ready `ssl.SSLContext`; these build them so that a
peer without a certificate from the station CA is refused during the handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from drivers.errors import DriverError

MODBUS_TLS_PORT = 802


def client_context(cert: Path, key: Path, ca: Path, *, device: str = "tls") -> ssl.SSLContext:
    """A client context: present `cert`, trust only servers whose certificate `ca` signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, cert, key, ca, device)
    return context


def server_context(cert: Path, key: Path, ca: Path, *, device: str = "tls") -> ssl.SSLContext:
    """A server context that refuses every client without a certificate `ca` signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, cert, key, ca, device)
    return context


def _load(context: ssl.SSLContext, cert: Path, key: Path, ca: Path, device: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DriverError(device, f"cannot load certificate {cert} with its key: {exc}") from exc
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise DriverError(device, f"cannot load trusted CA {ca}: {exc}") from exc
