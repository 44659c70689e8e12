"""`flexcharge certs init`: a station CA and the certificates the daemon and the simulator
present (TLS and OPC-UA)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from .common import EXIT_FAILURE, EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `certs` (and its `init`) to the command line."""
    certs = sub.add_parser("certs", help="the station's certificates for TLS and OPC-UA")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser(
        "init", help="create a station CA and the daemon's and simulator's certificates in DIR"
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
    for path in written:
        mode = path.stat().st_mode & 0o777
        console.print(f"  {oct(mode)[2:]}  {path}", highlight=False, markup=False)
    console.print(
        "point a station at it with [security] certs = DIR; private keys are readable by "
        "their owner only: keep private/ca.key offline once the devices are enrolled",
        markup=False,
    )
    return EXIT_OK
