"""Per-user, per-tool rate limits: memory and Redis storage, tightest limit wins."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from context.api import new_user_id
from dispatch.engine.api import PermissionGroup
from dispatch.engine.rate_limits import (
    DEFAULT_GROUP_LIMITS,
    RateLimitPolicy,
    RateLimitStorageError,
    ToolRateLimiter,
)


@pytest.fixture
async def limiter() -> AsyncIterator[ToolRateLimiter]:
    limiter = ToolRateLimiter()
    try:
        yield limiter
    finally:
        await limiter.aclose()


def test_tightest_limit_per_period_wins() -> None:
    group = RateLimitPolicy(per_minute=10, per_hour=100, per_day=None)
    tool = RateLimitPolicy(per_minute=20, per_hour=50, per_day=500)
    assert group.tightest(tool) == RateLimitPolicy(per_minute=10, per_hour=50, per_day=500)
    assert group.tightest(None) == group


async def test_effective_policy_combines_group_and_tool_limits() -> None:
    limiter = ToolRateLimiter(
        group_limits={PermissionGroup.BASIC: RateLimitPolicy(per_minute=5, per_day=100)}
    )
    try:
        policy = limiter.policy_for(
            PermissionGroup.BASIC, RateLimitPolicy(per_minute=9, per_hour=7)
        )
        assert policy == RateLimitPolicy(per_minute=5, per_hour=7, per_day=100)
        # Groups not overridden keep their defaults.
        assert (
            limiter.policy_for(PermissionGroup.ANALYTICS)
            == DEFAULT_GROUP_LIMITS[PermissionGroup.ANALYTICS]
        )
    finally:
        await limiter.aclose()


async def test_limit_applies_per_user(limiter: ToolRateLimiter) -> None:
    policy = RateLimitPolicy(per_minute=2)
    alice, bob = new_user_id(), new_user_id()
    assert (await limiter.hit(alice, "calculator", policy)).allowed
    assert (await limiter.hit(alice, "calculator", policy)).allowed
    refused = await limiter.hit(alice, "calculator", policy)
    assert not refused.allowed
    assert refused.limit == "2 per 1 minute"
    assert refused.retry_after_seconds is not None and 0 < refused.retry_after_seconds <= 60
    assert (await limiter.hit(bob, "calculator", policy)).allowed


async def test_limit_applies_per_tool(limiter: ToolRateLimiter) -> None:
    policy = RateLimitPolicy(per_minute=1)
    alice = new_user_id()
    assert (await limiter.hit(alice, "notes.add", policy)).allowed
    assert not (await limiter.hit(alice, "notes.add", policy)).allowed
    assert (await limiter.hit(alice, "notes.search", policy)).allowed


async def test_refusal_by_a_longer_period_does_not_use_up_a_shorter_one(
    limiter: ToolRateLimiter,
) -> None:
    policy = RateLimitPolicy(per_minute=5, per_hour=2)
    alice = new_user_id()
    for _ in range(2):
        assert (await limiter.hit(alice, "calculator", policy)).allowed
    refused = await limiter.hit(alice, "calculator", policy)
    assert not refused.allowed
    assert refused.limit == "2 per 1 hour"
    remaining = await limiter.remaining(alice, "calculator", policy)
    assert remaining == {"5 per 1 minute": 3, "2 per 1 hour": 0}


async def test_redis_storage_shares_counts_between_limiters(redis_url: str) -> None:
    policy = RateLimitPolicy(per_minute=3)
    alice, bob = new_user_id(), new_user_id()
    first = ToolRateLimiter(redis_url)
    second = ToolRateLimiter(f"async+{redis_url}")
    try:
        assert (await first.hit(alice, "calculator", policy)).allowed
        assert (await second.hit(alice, "calculator", policy)).allowed
        assert (await first.hit(alice, "calculator", policy)).allowed
        assert not (await second.hit(alice, "calculator", policy)).allowed
        assert (await second.hit(bob, "calculator", policy)).allowed
    finally:
        await first.aclose()
        await second.aclose()


async def test_unreachable_storage_raises_instead_of_allowing() -> None:
    # Port 1 on loopback refuses connections: the limiter must not fail open.
    limiter = ToolRateLimiter("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(RateLimitStorageError):
            await limiter.hit(new_user_id(), "calculator", RateLimitPolicy(per_minute=5))
    finally:
        await limiter.aclose()
