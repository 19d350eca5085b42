"""Per-user, per-tool rate limits per minute, hour and day (the ``limits`` library).

Each permission group has a default :class:`RateLimitPolicy`; a tool may declare its own.
The effective limit for each period is the tightest of the two, so a tool can only be
limited harder than its group, never looser. Windows are moving windows
(:class:`limits.aio.strategies.MovingWindowRateLimiter`): exact counts, no burst at a
window edge.

Storage is in-process memory by default (``memory://``); a Redis URL
(``async+redis://host:port/db``, ``redis://`` works too) shares the counts between engine
processes. Keys are namespaced ``<prefix>/<user_id>/<tool_name>/<amount>/<period>``, so one
user's calls never count against another user, nor one tool's against another tool.
A storage that cannot be reached makes :meth:`ToolRateLimiter.hit` raise
:class:`RateLimitStorageError`; the engine then refuses the call (fail closed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import structlog
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from pydantic import BaseModel, ConfigDict, Field

from dispatch.engine.api import PermissionGroup

__all__ = [
    "DEFAULT_GROUP_LIMITS",
    "RateLimitDecision",
    "RateLimitPolicy",
    "RateLimitStorageError",
    "ToolRateLimiter",
]

log = structlog.get_logger(__name__)

_KEY_PREFIX = "ssot-tools"


class RateLimitPolicy(BaseModel):
    """How many calls of one tool one user may make per minute, hour and day.

    ``None`` means no limit for that period.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_minute: int | None = Field(default=None, ge=1)
    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)

    def tightest(self, other: RateLimitPolicy | None) -> RateLimitPolicy:
        """The smaller limit of ``self`` and ``other`` for each period."""
        if other is None:
            return self
        return RateLimitPolicy(
            per_minute=_smaller(self.per_minute, other.per_minute),
            per_hour=_smaller(self.per_hour, other.per_hour),
            per_day=_smaller(self.per_day, other.per_day),
        )

    def items(self) -> tuple[RateLimitItem, ...]:
        """The ``limits`` items for the set periods, shortest period first."""
        items: list[RateLimitItem] = []
        if self.per_minute is not None:
            items.append(RateLimitItemPerMinute(self.per_minute, namespace=_KEY_PREFIX))
        if self.per_hour is not None:
            items.append(RateLimitItemPerHour(self.per_hour, namespace=_KEY_PREFIX))
        if self.per_day is not None:
            items.append(RateLimitItemPerDay(self.per_day, namespace=_KEY_PREFIX))
        return tuple(items)


def _smaller(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


#: Limits per group when the engine is not configured otherwise.
DEFAULT_GROUP_LIMITS: Mapping[PermissionGroup, RateLimitPolicy] = {
    PermissionGroup.BASIC: RateLimitPolicy(per_minute=120, per_hour=2000, per_day=20000),
    PermissionGroup.ANALYTICS: RateLimitPolicy(per_minute=30, per_hour=100, per_day=1000),
    PermissionGroup.DATA_MANAGEMENT: RateLimitPolicy(per_minute=20, per_hour=50, per_day=500),
    PermissionGroup.ADVANCED_OPTIMIZATION: RateLimitPolicy(per_minute=10, per_hour=20, per_day=100),
    PermissionGroup.SYSTEM_MANAGEMENT: RateLimitPolicy(per_minute=30, per_hour=300, per_day=1000),
    PermissionGroup.DEVELOPER_TOOLS: RateLimitPolicy(per_minute=60, per_hour=1000, per_day=10000),
}


class RateLimitDecision(BaseModel):
    """The outcome of counting one call: allowed, or which limit it hit and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed: bool
    #: The exceeded limit in words, e.g. ``"5 per 1 minute"``.
    limit: str | None = None
    retry_after_seconds: float | None = None


class RateLimitStorageError(Exception):
    """The rate-limit storage failed (for example Redis is down); the call is refused."""


def _async_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


def _make_storage(uri: str) -> Storage:
    async_uri = _async_uri(uri)
    options: dict[str, str] = {}
    if async_uri.startswith(("async+redis", "async+rediss")):
        # The ``redis`` package's asyncio client (limits defaults to ``coredis``).
        options["implementation"] = "redispy"
    storage = storage_from_string(async_uri, wrap_exceptions=True, **options)
    if not isinstance(storage, Storage):
        raise ValueError("not an asynchronous rate-limit storage URI")
    return storage


class ToolRateLimiter:
    """Counts tool calls per user and tool against per-group (and per-tool) limits."""

    def __init__(
        self,
        storage_uri: str = "memory://",
        *,
        group_limits: Mapping[PermissionGroup, RateLimitPolicy] | None = None,
    ) -> None:
        self._storage = _make_storage(storage_uri)
        self._limiter = MovingWindowRateLimiter(self._storage)
        limits = dict(DEFAULT_GROUP_LIMITS)
        if group_limits is not None:
            limits.update(group_limits)
        self._group_limits: Mapping[PermissionGroup, RateLimitPolicy] = limits

    @property
    def storage(self) -> Storage:
        return self._storage

    def policy_for(
        self, group: PermissionGroup, tool_limit: RateLimitPolicy | None = None
    ) -> RateLimitPolicy:
        """The effective policy: per period, the tighter of the group's and the tool's."""
        return self._group_limits[group].tightest(tool_limit)

    async def hit(self, user_id: str, tool_name: str, policy: RateLimitPolicy) -> RateLimitDecision:
        """Count one call of ``tool_name`` by ``user_id``, unless a limit is exhausted.

        All periods are tested before any is counted, so a call refused by the daily limit
        does not use up the minute's allowance. (Two concurrent calls may both pass the
        test; the counting step itself is atomic per window and refuses the excess.)
        """
        items = policy.items()
        try:
            for item in items:
                if not await self._limiter.test(item, user_id, tool_name):
                    return await self._denied(item, user_id, tool_name)
            for item in items:
                if not await self._limiter.hit(item, user_id, tool_name):
                    return await self._denied(item, user_id, tool_name)
        except Exception as exc:
            log.warning("rate_limit_storage_failed", exc_type=type(exc).__name__)
            raise RateLimitStorageError("the rate-limit storage is unavailable") from exc
        return RateLimitDecision(allowed=True)

    async def _denied(self, item: RateLimitItem, user_id: str, tool_name: str) -> RateLimitDecision:
        stats = await self._limiter.get_window_stats(item, user_id, tool_name)
        return RateLimitDecision(
            allowed=False,
            limit=str(item),
            retry_after_seconds=max(0.0, stats.reset_time - time.time()),
        )

    async def remaining(
        self, user_id: str, tool_name: str, policy: RateLimitPolicy
    ) -> dict[str, int]:
        """Calls left in each period's current window (keyed like ``"5 per 1 minute"``)."""
        result: dict[str, int] = {}
        for item in policy.items():
            stats = await self._limiter.get_window_stats(item, user_id, tool_name)
            result[str(item)] = stats.remaining
        return result

    async def aclose(self) -> None:
        """Stop the in-memory storage's expiry task, or close the Redis connections.

        Counts kept in Redis stay there for the other engine processes.
        """
        if isinstance(self._storage, MemoryStorage):
            timer = self._storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
        elif isinstance(self._storage, RedisStorage):
            # limits exposes no close(); its bridge holds the redis.asyncio client.
            client = getattr(self._storage.bridge, "storage", None)
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()
