"""Run slots: how many runs one user, and the whole runner, may have at once.

A run takes one slot of its user and one of the runner when it is accepted and gives both
back when it has ended, whatever the ending. A request past either limit is refused at
once (never queued) with :class:`~dispatch.agents.api.RunLimitExceededError`; one user at
their limit leaves every other user unaffected. Taking and giving back never await, so
within one event loop two requests cannot both take the last slot.
"""

from __future__ import annotations

from collections import Counter

from dispatch.agents.api import RunLimitExceededError

__all__ = ["RunSlots"]


class RunSlots:
    """Per-user and global counters of live runs; see the module docstring."""

    def __init__(self, *, per_user: int, total: int) -> None:
        if per_user < 1 or total < 1:
            raise ValueError("run limits must be at least 1")
        self._per_user = per_user
        self._total = total
        self._active: Counter[str] = Counter()
        self.refused_user = 0
        self.refused_global = 0

    @property
    def per_user_limit(self) -> int:
        return self._per_user

    @property
    def total_limit(self) -> int:
        return self._total

    def active(self, user_id: str | None = None) -> int:
        """Live runs of ``user_id``, or of everyone."""
        if user_id is None:
            return sum(self._active.values())
        return self._active[user_id]

    def per_user(self) -> dict[str, int]:
        return {user: count for user, count in self._active.items() if count}

    def acquire(self, user_id: str) -> None:
        """Take a slot for ``user_id`` or raise RunLimitExceededError."""
        if self._active[user_id] >= self._per_user:
            self.refused_user += 1
            raise RunLimitExceededError(
                f"you already have {self._per_user} runs in progress; wait for one to "
                "finish or cancel one",
                scope="user",
            )
        if self.active() >= self._total:
            self.refused_global += 1
            raise RunLimitExceededError(
                "the service is running as many agent runs as it can; retry shortly",
                scope="global",
            )
        self._active[user_id] += 1

    def release(self, user_id: str) -> None:
        """Give back one of ``user_id``'s slots."""
        if self._active[user_id] <= 1:
            del self._active[user_id]
        else:
            self._active[user_id] -= 1
