"""Per-user daily token budgets.

A call first *reserves* its estimated cost (prompt tokens counted by
:mod:`dispatch.llm.tokens` plus the completion ceiling ``max_tokens``); the reservation is
refused, with :class:`~dispatch.llm.api.TokenBudgetExceededError`, when it would take the
user past the day's limit. After the call the reservation is *settled* to what the provider
actually reported (zero for a call that failed before any output). Reserving up front
makes the limit hold under concurrency: two simultaneous calls of one user cannot both
spend the last tokens.

Days are UTC calendar days; a reservation is settled against the day it was made on, so
a call that straddles midnight does not leak into the next day. Each user's counter is
keyed by that user alone; one user exhausting a budget never affects another.

:class:`TokenBudgetStore` is the seam for a shared store (Redis: ``INCRBY`` the
reservation, ``DECRBY`` it back when the result exceeds the limit, key
``llm:budget:<user>:<day>`` expiring after two days); :class:`InMemoryTokenBudgetStore` is
the embedded default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol, runtime_checkable

from dispatch.llm.api import BudgetStatus, TokenBudgetExceededError
from dispatch.llm.clock import Clock, SystemClock

__all__ = [
    "InMemoryTokenBudgetStore",
    "Reservation",
    "TokenBudget",
    "TokenBudgetStore",
    "next_reset",
]


def next_reset(day: date) -> datetime:
    """The UTC midnight that ends ``day``."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


@runtime_checkable
class TokenBudgetStore(Protocol):
    async def try_reserve(self, user_id: str, day: date, tokens: int, limit: int) -> int | None:
        """Add ``tokens`` to the user's count for ``day`` if the result stays within
        ``limit``; return the new count, or ``None`` (and change nothing) if it would not."""
        ...

    async def adjust(self, user_id: str, day: date, delta: int) -> None:
        """Add ``delta`` (may be negative) to the user's count for ``day``."""
        ...

    async def used(self, user_id: str, day: date) -> int: ...


class InMemoryTokenBudgetStore:
    """Counters in a dict; days older than yesterday are dropped as new days arrive."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, date], int] = {}
        self._newest_day: date | None = None

    def _prune(self, day: date) -> None:
        if self._newest_day is None or day > self._newest_day:
            self._newest_day = day
            horizon = day - timedelta(days=1)
            for key in [key for key in self._counts if key[1] < horizon]:
                del self._counts[key]

    async def try_reserve(self, user_id: str, day: date, tokens: int, limit: int) -> int | None:
        self._prune(day)
        current = self._counts.get((user_id, day), 0)
        if current + tokens > limit:
            return None
        self._counts[(user_id, day)] = current + tokens
        return current + tokens

    async def adjust(self, user_id: str, day: date, delta: int) -> None:
        key = (user_id, day)
        self._counts[key] = max(0, self._counts.get(key, 0) + delta)

    async def used(self, user_id: str, day: date) -> int:
        return self._counts.get((user_id, day), 0)


@dataclass(frozen=True, slots=True)
class Reservation:
    user_id: str
    day: date
    tokens: int


class TokenBudget:
    """The budget policy over a store: a default daily limit, optional per-user limits."""

    def __init__(
        self,
        store: TokenBudgetStore,
        *,
        daily_limit: int,
        user_limits: Mapping[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if daily_limit < 0:
            raise ValueError("daily_limit must not be negative")
        self._store = store
        self._daily_limit = daily_limit
        self._user_limits = dict(user_limits or {})
        self._clock: Clock = clock or SystemClock()

    def limit_for(self, user_id: str) -> int:
        return self._user_limits.get(user_id, self._daily_limit)

    def today(self) -> date:
        return self._clock.now().astimezone(UTC).date()

    async def reserve(self, user_id: str, tokens: int) -> Reservation:
        """Reserve ``tokens`` of today's budget or raise TokenBudgetExceededError."""
        day = self.today()
        limit = self.limit_for(user_id)
        if await self._store.try_reserve(user_id, day, tokens, limit) is None:
            used = await self._store.used(user_id, day)
            raise TokenBudgetExceededError(
                f"daily token budget exceeded: {used} of {limit} tokens used today, this "
                f"request may need up to {tokens}; the budget resets at 00:00 UTC",
                resets_at=next_reset(day),
            )
        return Reservation(user_id, day, tokens)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reservation with the tokens actually used."""
        delta = max(0, actual_tokens) - reservation.tokens
        if delta:
            await self._store.adjust(reservation.user_id, reservation.day, delta)

    async def status(self, user_id: str) -> BudgetStatus:
        day = self.today()
        limit = self.limit_for(user_id)
        used = await self._store.used(user_id, day)
        return BudgetStatus(
            day=day,
            limit=limit,
            used=used,
            remaining=max(0, limit - used),
            resets_at=next_reset(day),
        )
