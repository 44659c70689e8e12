"""The station's log: the daemon's own lines, and the libraries' kept readable.

flexcharge tells each failure of a device, a link, the telemetry sink, the state file or the
optimiser once when it starts and once when it ends (`base.health`), naming what failed. The
libraries under it speak for themselves, and at their own rhythm: asyncua logs every publish
response at INFO (once a second per subscription) and, while a peer keeps failing, the same
warning or error, with its traceback, at every attempt (the client's refused certificate, the
server's untrusted client, a reply that comes after its request timed out); pymodbus every
failed request; uvicorn every malformed request. A station's log would be those lines.

`configure` sets the libraries' loggers to the levels of `LIBRARY_LEVELS` and puts
`LibraryRepeats` on the handler: a library's record is shown once per episode, a record that
repeats one shown or held back less than `quiet_s` before (same logger, level and words, numbers
aside) is held back, and a library's traceback is cut to its exception's line. What the library
keeps saying is the failure flexcharge has already told, once, with its recovery. At DEBUG every
record is shown as it comes, tracebacks and all.

Under systemd (stderr is the journal's stream, `JOURNAL_STREAM`) each line starts with its syslog
priority, so the journal keeps every line's level (`journalctl -p warning`). `--log-file` adds a
file, rotated by size.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from logging.handlers import RotatingFileHandler
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

# The libraries' loggers and the levels they are kept at (at DEBUG, everything is shown).
LIBRARY_LEVELS: Mapping[str, int] = {
    "asyncua": logging.WARNING,
    # asyncua's certificate checks log under this name.
    "asyncuagds": logging.WARNING,
    # The drivers report every Modbus failure once, with the device named; pymodbus's own
    # messages about the same failures would only repeat them, every cycle.
    "pymodbus": logging.CRITICAL,
    "uvicorn": logging.WARNING,
    # The ocpp library logs every message it sends or receives at INFO; the OCPP drivers and the
    # simulated charge points say what matters, with the charge point named.
    "ocpp": logging.WARNING,
    "websockets": logging.WARNING,
    "influxdb_client": logging.WARNING,
    "urllib3": logging.WARNING,
}

# A library's message not seen for this long (s) starts a new episode, shown again.
QUIET_S = 600.0
# Held-back messages remembered at most (the oldest are forgotten first).
REMEMBERED = 1000

_NUMBER = re.compile(r"\d+")


def library_of(name: str) -> str | None:
    """The library of `LIBRARY_LEVELS` a logger belongs to, or None (flexcharge's own)."""
    for library in LIBRARY_LEVELS:
        if name == library or name.startswith(library + "."):
            return library
    return None


class LibraryRepeats(logging.Filter):
    """Shows a library's message once per episode, its traceback cut to one line; lets
    everything else through untouched.

    An episode of a message (its logger, level and words, with every number alike) lasts while
    it comes again within `quiet_s` of its last coming; the times are the records' own.
    """

    def __init__(self, quiet_s: float = QUIET_S, remembered: int = REMEMBERED) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.remembered = remembered
        self.held_back = 0
        self._last: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a library's repeat; a library's shown record loses its traceback."""
        if library_of(record.name) is None:
            return True
        key = (record.name, record.levelno, _NUMBER.sub("#", record.getMessage())[:300])
        last = self._last.pop(key, None)
        self._last[key] = record.created
        if len(self._last) > self.remembered:
            del self._last[next(iter(self._last))]
        if last is not None and record.created - last < self.quiet_s:
            self.held_back += 1
            return False
        _cut_traceback(record)
        return True


def _cut_traceback(record: logging.LogRecord) -> None:
    """The record as one line: its message, and the exception it carried in a few words."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
        return
    words = str(exc).splitlines()[0] if str(exc) else ""
    record.msg = f"{record.getMessage()} ({type(exc).__name__}{': ' if words else ''}{words})"
    record.args = ()
    record.exc_info = None
    record.exc_text = None


# syslog priorities by logging level: journald reads a line's `<N>` prefix as its priority.
SYSLOG_PRIORITY: Mapping[int, int] = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

# The log file's size (bytes) before it is rotated, and how many rotated files are kept.
LOG_FILE_BYTES = 10_000_000
LOG_FILE_KEEP = 5

_LINE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JournalFormatter(logging.Formatter):
    """Lines for journald: each prefixed with the record's syslog priority, `<6>` for INFO (the
    sd-daemon convention), without a time (the journal stamps each line itself)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record's lines, each with its priority (a traceback's lines too)."""
        prefix = f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True if stderr is the journal's stream systemd gave this process: JOURNAL_STREAM holds
    its device and inode (a child whose stderr was redirected inherits the variable, not the
    stream)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def configure(
    level: str,
    console: Console | None = None,
    *,
    log_file: Path | None = None,
    log_file_bytes: int = LOG_FILE_BYTES,
    log_file_keep: int = LOG_FILE_KEEP,
) -> logging.Handler:
    """Log at `level` to stderr (through rich on `console`, for the demo's live view; with
    syslog priorities when stderr is the journal), and to `log_file` if given (rotated at
    `log_file_bytes`, `log_file_keep` old files kept), the libraries at their levels with their
    repeats held back; return the stderr handler. Raises `OSError` if the file cannot be
    opened."""
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JournalFormatter() if stderr_is_journal() else logging.Formatter(_LINE_FORMAT)
        )
    handlers: list[logging.Handler] = [handler]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = RotatingFileHandler(
            log_file, maxBytes=log_file_bytes, backupCount=log_file_keep, encoding="utf-8"
        )
        to_file.setFormatter(logging.Formatter(_LINE_FORMAT))
        handlers.append(to_file)
    debug = level.upper() == "DEBUG"
    if not debug:
        # One filter each: a filter shared by two handlers would take the second's look at a
        # record for a repeat.
        for each in handlers:
            each.addFilter(LibraryRepeats())
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, RotatingFileHandler):
            old.close()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for library, library_level in LIBRARY_LEVELS.items():
        logging.getLogger(library).setLevel(logging.DEBUG if debug else library_level)
    return handler
