"""Time as the package sees it, injectable so tests never wait on the wall clock.

The manager needs two kinds of time: wall time in UTC (the budget day, HTTP-date
``Retry-After`` values) and a monotonic clock (cooldowns, latency). It also needs to sleep
(retry backoff). :class:`SystemClock` is the real thing; :class:`ManualClock` is a clock a
test moves by hand, whose :meth:`ManualClock.sleep` advances time instantly and records
every requested wait, so a test can assert how long the code *would* have waited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "Sleep", "SystemClock"]

#: ``asyncio.sleep``-compatible: wait this many seconds.
Sleep = Callable[[float], Awaitable[None]]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (only differences mean anything)."""
        ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to. ``sleeps`` lists every wait requested through
    :meth:`sleep`; the sleep yields to the event loop once, then advances the clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
        if self._now.utcoffset() is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._monotonic = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._now.astimezone(UTC)

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot move backwards")
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds

    def set(self, moment: datetime) -> None:
        """Jump the wall clock to ``moment`` (not backwards); the monotonic clock follows."""
        delta = (moment - self._now).total_seconds()
        self.advance(delta)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)
        self.advance(max(0.0, seconds))
