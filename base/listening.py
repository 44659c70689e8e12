"""What to say when a server cannot listen on its address."""

from __future__ import annotations

import errno


def cannot_listen(host: str, port: int, exc: BaseException | None, what: str = "") -> str:
    """One line on why `host:port` cannot be had (for `what`, e.g. "the API"): "already in use"
    when another socket holds it, else the system's reason."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    serving = f" (for {what})" if what else ""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"{address} is already in use{serving}: another program (another flexcharge?) "
            "listens there; stop it or choose another port"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"{address} is not an address of this machine{serving}"
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc or "unknown reason")
    return f"cannot listen on {address}{serving}: {reason}"
