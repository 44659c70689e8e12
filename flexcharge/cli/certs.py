"""`flexcharge certs`: a station CA and the certificates the daemon, the simulator, other
applications (TLS and OPC-UA) and OCPP charge points present, and the CA's revocation list."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    directory,
    existing_file,
    host_name,
    path_text,
    positive_int,
)

DIR_HELP = "the station's certificates directory (the station file's [security] certs)"
HOST_HELP = "another host name or address the certificate(s) must be valid for (repeatable)"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `certs` (and its `init`, `issue` and `revoke`) to the command line."""
    certs = sub.add_parser("certs", help="the station's certificates for TLS and OPC-UA")
    certs_sub = certs.add_subparsers(
        dest="certs_command", required=True, metavar="COMMAND", help="one of:"
    )
    init = certs_sub.add_parser(
        "init",
        help="create a station CA, its revocation list and the daemon's and simulator's "
        "certificates in DIR",
    )
    init.add_argument("dir", type=directory, help=DIR_HELP)
    init.add_argument(
        "--station", default="flexcharge station", type=_name, help="name in the certificates"
    )
    init.add_argument("--host", action="append", default=[], type=host_name, help=HOST_HELP)
    init.add_argument("--days", type=positive_int, default=825, help="validity in days")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_certs_init)

    issue = certs_sub.add_parser(
        "issue",
        help="a certificate from the station CA in DIR for another application or an OCPP "
        "charge point (DIR/NAME)",
    )
    issue.add_argument("dir", type=directory, help=DIR_HELP)
    issue.add_argument(
        "name",
        type=path_text,
        help="the application's directory in DIR, e.g. scada, or the charge point's identity",
    )
    kind = issue.add_mutually_exclusive_group(required=True)
    kind.add_argument("--uri", type=_uri, help="its OPC-UA application URI, e.g. urn:site:scada")
    kind.add_argument(
        "--charge-point",
        action="store_true",
        help="an OCPP charge point's certificate for security profile 3: NAME is its identity "
        "and the certificate's common name",
    )
    issue.add_argument("--host", action="append", default=[], type=host_name, help=HOST_HELP)
    issue.add_argument("--days", type=positive_int, default=825, help="validity in days")
    issue.set_defaults(func=cmd_certs_issue)

    revoke = certs_sub.add_parser(
        "revoke", help="add a certificate the station CA in DIR issued to its revocation list"
    )
    revoke.add_argument("dir", type=directory, help=DIR_HELP)
    revoke.add_argument("certificate", type=existing_file, help="the certificate file (PEM or DER)")
    revoke.set_defaults(func=cmd_certs_revoke)


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name")
    return text


def _uri(text: str) -> str:
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not rest or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a URI (e.g. urn:site:scada)")
    return text


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
            target,
            args.name,
            application_uri=args.uri,
            charge_point=args.charge_point,
            hosts=args.host,
            days=args.days,
        )
    except (certs.CertError, OSError) as exc:
        console.print(f"[bold red]{exc}[/]")
        return EXIT_FAILURE
    what = f"charge point {args.name}" if args.charge_point else args.uri
    console.print(f"certificate for {what} from the station CA:", highlight=False)
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
