"""One health pattern for everything that can fail and recover: a device, a link, a telemetry sink,
a queue, a solve, the state file.

`Health` is told of every success and every failure, and speaks only at the edges: once when the
thing starts failing (with why, an error) and once when it recovers (with how long it was down,
information), never in between, the way Home Assistant's DataUpdateCoordinator logs an
integration. It counts episodes and the time spent down, for metrics. Times come from the
caller's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from base.events import DeviceRef, Event, Kind, Source

Notify = Callable[[Event], None]

log = logging.getLogger(__name__)


class Health:
    """Whether one thing works, and the edges of its failures."""

    def __init__(
        self,
        name: str,
        *,
        notify: Notify | None = None,
        logger: logging.Logger | None = None,
        source: Source = Source.CONTROL,
        device: DeviceRef | None = None,
    ) -> None:
        """`notify(event)` hears each edge too (the daemon's events), told from `source` about
        `device`; `logger` logs them."""
        self.name = name
        self.notify = notify
        self.source = source
        self.device = device
        self.logger = logger or log
        self.ok = True
        self.why = ""
        self.since: float | None = None
        self.episodes = 0
        self._down_s = 0.0

    def fail(self, now: float, why: str, *, text: str | None = None) -> bool:
        """A failure; True (and told, as `text` or "<name>: <why>") if it starts an episode."""
        self.why = why
        if not self.ok:
            return False
        self.ok, self.since = False, now
        self.episodes += 1
        told = text if text is not None else f"{self.name}: {why}"
        self._tell(Event(now, self.source, Kind.FAILED, told, self.device))
        return True

    def recover(self, now: float, says: Callable[[float], str] | None = None) -> bool:
        """A success; True (and told) if it ends an episode.

        `says(down_s)` words the recovery; by default "<name>: back to normal after N s".
        """
        if self.ok:
            return False
        down = max(0.0, now - (self.since if self.since is not None else now))
        self._down_s += down
        self.ok, self.since, self.why = True, None, ""
        text = says(down) if says is not None else f"{self.name}: back to normal after {down:.0f} s"
        self._tell(Event(now, self.source, Kind.RECOVERED, text, self.device))
        return True

    def down_s(self, now: float) -> float:
        """Time spent failing so far, the current episode included."""
        current = now - self.since if self.since is not None else 0.0
        return self._down_s + max(0.0, current)

    def _tell(self, event: Event) -> None:
        event.log(self.logger)
        if self.notify is not None:
            self.notify(event)
