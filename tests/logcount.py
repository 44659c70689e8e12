"""Count the log lines of a real `flexcharge run` (and its `sim-hardware`) while peers fail.

    python -m tests.logcount [--checkout DIR] [--seconds S] CASE

runs the mixed reference station's simulator and daemon as processes on loopback, in real time,
for `S` seconds (60), from the code in `DIR` (this checkout; another one measures it the same
way, so two commits can be compared), and prints how many lines each logged, by level and
logger. CASE:

- `untrusted-terminal`: the daemon's certificates are from another station CA than the
  simulator's, so its OPC-UA terminal (and its Modbus/TLS devices) refuse it, and it them;
- `pile-down`: nothing answers where the daemon looks for pile DC1 (Modbus TCP);
- `healthy`: every device answers.

It imports nothing of flexcharge itself: it only starts the console script with `PYTHONPATH`
pointing at the checkout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CASES = ("untrusted-terminal", "pile-down", "healthy")
PASSWORD = "correct horse battery staple"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \S+ (\S+)\s+(\S+): ")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stations(checkout: Path, work: Path, case: str) -> tuple[Path, Path]:
    """The simulator's and the daemon's station files for `case`."""
    shutil.copytree(checkout / "configs", work / "configs")
    text = (work / "configs" / "stations" / "mixed-site.toml").read_text()
    ports = iter(_free_ports(20))
    text = re.sub(r"^port = \d+$", lambda _: f"port = {next(ports)}", text, flags=re.M)
    served = text.replace('certs = "../../var/certs"', f'certs = "{work / "served"}"')
    daemon = text.replace(
        'certs = "../../var/certs"',
        f'certs = "{work / ("daemon" if case == "untrusted-terminal" else "served")}"',
    )
    if case == "pile-down":
        elsewhere = str(_free_ports(1)[0])
        served = re.sub(r'(id = "DC1"\n.*\nport = )\d+', lambda m: m.group(1) + elsewhere, served)
    paths = work / "configs" / "stations" / "sim.toml", work / "configs" / "stations" / "run.toml"
    paths[0].write_text(served)
    paths[1].write_text(daemon)
    return paths


def _summary(name: str, log: Path, seconds: float) -> None:
    lines = log.read_text(errors="replace").splitlines()
    records = Counter(" ".join(m.groups()) for m in map(RECORD.match, lines) if m is not None)
    tracebacks = sum(line.startswith("Traceback") for line in lines)
    print(f"{name}: {len(lines)} lines in {seconds:.0f} s ({tracebacks} tracebacks)")
    for what, count in records.most_common(8):
        print(f"  {count:6d}  {what}")


def main() -> int:
    """Run one case and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    flexcharge = str(Path(sys.executable).parent / "flexcharge")
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "PYTHONUNBUFFERED": "1",
        "FLEXCHARGE_OPCUA_PASSWORD": PASSWORD,
    }
    with tempfile.TemporaryDirectory(prefix="flexcharge-logcount-") as tmp:
        work = Path(tmp)
        # The daemon's state and telemetry stay in the run's directory.
        env["FLEXCHARGE_STATE_DIR"] = str(work / "state")
        env["FLEXCHARGE_RUNTIME_DIR"] = str(work / "run")
        for ca in ("served", "daemon"):
            subprocess.run(
                [flexcharge, "certs", "init", str(work / ca), "--station", ca],
                env=env,
                check=True,
                capture_output=True,
            )
        served, controlled = _stations(checkout, work, args.case)
        sim_log, run_log = work / "sim.log", work / "run.log"
        with sim_log.open("w") as sim_err, run_log.open("w") as run_err:
            sim = subprocess.Popen(
                [flexcharge, "sim-hardware", "--station", str(served)],
                env=env,
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=sim_err,
            )
            try:
                time.sleep(5)  # the simulator's servers are up
                run = subprocess.Popen(
                    [flexcharge, "run", "--station", str(controlled), "--status-every", "1e9"],
                    env=env,
                    cwd=work,
                    stdout=subprocess.DEVNULL,
                    stderr=run_err,
                )
                time.sleep(args.seconds)
                run.send_signal(signal.SIGINT)
                run.wait(30)
            finally:
                sim.send_signal(signal.SIGINT)
                sim.wait(30)
        print(f"{args.case}, the code in {checkout}:")
        _summary("flexcharge run", run_log, args.seconds)
        _summary("flexcharge sim-hardware", sim_log, args.seconds + 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
