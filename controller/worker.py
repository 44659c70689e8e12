"""A worker thread a service owns: blocking work (a solve, a file write) off the event loop.

The one way the daemon's services run blocking calls: each service that needs a thread owns a
`Worker`, starts it with itself and stops it (waiting for the call in progress) when it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Worker:
    """One named thread, started and stopped by its owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._executor is not None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    def run(self, call: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """`call(*args)` in the thread, as a future of the running loop."""
        assert self._executor is not None, f"{self.name} is not running"
        return asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def stop(self) -> None:
        """Wait for the call in progress, then end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
