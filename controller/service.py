"""Services: the parts of the daemon that run beside each other, each owning its tasks and threads.

A `Service` starts (and may fail to), and stops, awaiting everything it started. `Lifecycle`
starts services in order and stops them in reverse, so each service stops while those it needs
still run; a service that fails to start stops the ones already started before the failure
propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something the daemon runs, in its event loop."""

    async def start(self) -> None:
        """Start; raise if that is impossible (nothing is left running then)."""
        ...

    async def stop(self) -> None:
        """Stop and wait until its tasks and threads have ended (nothing to do if not started)."""
        ...


class Lifecycle:
    """Services started in order, stopped in reverse."""

    def __init__(self) -> None:
        self._running: list[Service] = []

    @property
    def running(self) -> tuple[Service, ...]:
        """The services started and not yet stopped, in start order."""
        return tuple(self._running)

    async def start(self, services: Iterable[Service]) -> None:
        """Start each in order; if one fails, stop those started (in reverse) and raise."""
        try:
            for service in services:
                await self.add(service)
        except BaseException:
            await self.stop()
            raise

    async def add(self, service: Service) -> None:
        """Start one more service (it will stop first)."""
        await service.start()
        self._running.append(service)

    async def remove(self, service: Service) -> None:
        """Stop one service now, out of turn."""
        if service in self._running:
            self._running.remove(service)
            await _stop(service)

    async def stop(self) -> None:
        """Stop every running service, the last started first; a failure to stop is logged."""
        while self._running:
            await _stop(self._running.pop())


async def _stop(service: Service) -> None:
    try:
        await service.stop()
    except Exception:
        log.exception("could not stop %r cleanly", service)
