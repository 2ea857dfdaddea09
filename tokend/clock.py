"""Where time comes from: the real clocks, or a virtual one in tests (nothing else reads time).

Keepers take a :class:`Clock`, so their flows are tested with virtual time and no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Where a keeper reads time and waits."""

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""

    def time(self) -> float:
        """Seconds since the epoch on the wall clock."""

    async def wait(self, event: asyncio.Event, until: float) -> None:
        """Return when ``event`` is set or the monotonic clock reaches ``until``."""


class SystemClock:
    """The real clocks."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def wait(self, event: asyncio.Event, until: float) -> None:
        """Return when ``event`` is set or the monotonic clock reaches ``until``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, until - time.monotonic()))
