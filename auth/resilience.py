"""Retry backoff and a circuit breaker for calls to a remote service.

The breaker counts consecutive transport failures (UNAVAILABLE, DEADLINE_EXCEEDED). After
``failure_threshold`` of them it opens: calls fail at once, without touching the network.
After ``cooldown_seconds`` it lets one trial call through (half-open); success closes it,
failure opens it again for another cooldown. The clock is injectable for tests.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker", "backoff_delay"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        cooldown_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._trial_in_flight = False
        if self._opened_at is not None:
            self._opened_at = self._clock()  # a failed trial: another full cooldown
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = self._clock()
            self.times_opened += 1

    def release(self) -> None:
        """A call that was allowed ended without telling anything about the remote."""
        self._trial_in_flight = False


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rng(0.0, min(cap, base * (2 ** max(0, attempt - 1))))
