"""`flexcharge certs`: a station CA and the certificates the daemon, the simulator and other
applications present (TLS and OPC-UA), and the CA's revocation list."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from .common import EXIT_FAILURE, EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `certs` (and its `init`, `issue` and `revoke`) to the command line."""
    certs = sub.add_parser("certs", help="the station's certificates for TLS and OPC-UA")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser(
        "init",
        help="create a station CA, its revocation list and the daemon's and simulator's "
        "certificates in DIR",
    )
    init.add_argument("dir")
    init.add_argument("--station", default="flexcharge station", help="name in the certificates")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        help="another host name or address the certificates must be valid for (repeatable)",
    )
    init.add_argument("--days", type=int, default=825, help="validity in days")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_certs_init)

    issue = certs_sub.add_parser(
        "issue", help="a certificate from the station CA in DIR for another application (DIR/NAME)"
    )
    issue.add_argument("dir")
    issue.add_argument("name", help="the application's directory in DIR, e.g. scada")
    issue.add_argument("--uri", required=True, help="its OPC-UA application URI")
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        help="another host name or address the certificate must be valid for (repeatable)",
    )
    issue.add_argument("--days", type=int, default=825, help="validity in days")
    issue.set_defaults(func=cmd_certs_issue)

    revoke = certs_sub.add_parser(
        "revoke", help="add a certificate the station CA in DIR issued to its revocation list"
    )
    revoke.add_argument("dir")
    revoke.add_argument("certificate", help="the certificate file (PEM or DER)")
    revoke.set_defaults(func=cmd_certs_revoke)


def cmd_certs_init(args: argparse.Namespace, console: Console) -> int:
    """Create a station CA and the certificates the daemon and the simulator present."""
    from base import certs

    target = Path(args.dir)
    try:
        written = certs.init(
            target, station=args.station, hosts=args.host, days=args.days, force=args.force
        )
    except (certs.CertError, OSError) as exc:
        console.print(f"[bold red]{exc}[/]")
        return EXIT_FAILURE
    console.print(f"station CA and certificates in {target}:", highlight=False)
    _list(console, written)
    console.print(
        "point a station at it with [security] certs = DIR; private keys are readable by "
        "their owner only: keep private/ca.key offline once the devices are enrolled",
        markup=False,
    )
    return EXIT_OK


def cmd_certs_issue(args: argparse.Namespace, console: Console) -> int:
    """Issue a certificate from the station CA for another application."""
    from base import certs

    target = Path(args.dir)
    try:
        ident = certs.issue(
            target, args.name, application_uri=args.uri, hosts=args.host, days=args.days
        )
    except (certs.CertError, OSError) as exc:
        console.print(f"[bold red]{exc}[/]")
        return EXIT_FAILURE
    console.print(f"certificate for {args.uri} from the station CA:", highlight=False)
    _list(console, [ident.cert_pem, ident.cert_der, ident.key_pem])
    return EXIT_OK


def cmd_certs_revoke(args: argparse.Namespace, console: Console) -> int:
    """Add a certificate to the station CA's revocation list."""
    from base import certs

    target = Path(args.dir)
    try:
        crl = certs.revoke(target, Path(args.certificate))
    except (certs.CertError, OSError) as exc:
        console.print(f"[bold red]{exc}[/]")
        return EXIT_FAILURE
    console.print(
        f"{args.certificate} revoked: {crl} lists it. OPC-UA peers read the list when they "
        "start (the daemon also whenever it opens a session): restart the simulator and every "
        "server or client that trusts this CA",
        highlight=False,
        markup=False,
    )
    return EXIT_OK


def _list(console: Console, paths: list[Path]) -> None:
    for path in paths:
        mode = path.stat().st_mode & 0o777
        console.print(f"  {oct(mode)[2:]}  {path}", highlight=False, markup=False)
