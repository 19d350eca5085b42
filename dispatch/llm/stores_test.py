"""The response cache store, the budget store and the retry/cooldown policies alone."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

import pytest

from dispatch.llm.api import Completion, ProviderState, TokenBudgetExceededError
from dispatch.llm.budget import InMemoryTokenBudgetStore, TokenBudget
from dispatch.llm.cache import CacheKey, InMemoryResponseCache
from dispatch.llm.clock import ManualClock
from dispatch.llm.providers.base import (
    ProviderMisconfiguredError,
    ProviderThrottledError,
    ProviderTransientError,
)
from dispatch.llm.resilience import CooldownPolicy, ProviderCircuits, RetryPolicy


def _completion(text: str) -> Completion:
    return Completion(content=text, provider="local", model="m")


async def test_cache_keeps_users_apart_and_bounds_each_user() -> None:
    clock = ManualClock()
    cache = InMemoryResponseCache(
        ttl_seconds=10, max_entries=100, max_entries_per_user=2, clock=clock
    )
    for index in range(3):
        await cache.put(CacheKey("usr_a", "default", f"d{index}"), _completion(f"a{index}"))
    await cache.put(CacheKey("usr_b", "default", "d0"), _completion("b0"))
    # usr_a's oldest entry was evicted to respect its share; usr_b's identical digest is its own.
    assert await cache.get(CacheKey("usr_a", "default", "d0")) is None
    assert (await cache.get(CacheKey("usr_a", "default", "d2"))) == _completion("a2")
    assert (await cache.get(CacheKey("usr_b", "default", "d0"))) == _completion("b0")
    assert await cache.get(CacheKey("usr_b", "default", "d2")) is None
    assert (await cache.count_user("usr_a"), await cache.count_user("usr_b")) == (2, 1)
    clock.advance(10)
    assert await cache.get(CacheKey("usr_b", "default", "d0")) is None
    assert await cache.count_user("usr_a") == 0


async def test_cache_global_bound_evicts_least_recently_used() -> None:
    cache = InMemoryResponseCache(max_entries=2, max_entries_per_user=10, clock=ManualClock())
    first, second, third = (CacheKey(f"usr_{n}", "default", "d") for n in "xyz")
    await cache.put(first, _completion("x"))
    await cache.put(second, _completion("y"))
    assert await cache.get(first) is not None  # first is now the most recently used
    await cache.put(third, _completion("z"))
    assert len(cache) == 2
    assert await cache.get(second) is None
    assert await cache.get(first) is not None
    assert await cache.clear_user("usr_x") == 1
    assert await cache.clear_user("usr_x") == 0
    assert len(cache) == 1


async def test_budget_settles_against_the_day_of_the_reservation() -> None:
    clock = ManualClock(datetime(2030, 3, 1, 23, 59, 59, tzinfo=UTC))
    store = InMemoryTokenBudgetStore()
    budget = TokenBudget(store, daily_limit=100, user_limits={"usr_vip": 1000}, clock=clock)
    reservation = await budget.reserve("usr_a", 60)
    clock.advance(2)  # the call finishes after midnight
    await budget.settle(reservation, 30)
    assert await store.used("usr_a", date(2030, 3, 1)) == 30
    assert await store.used("usr_a", date(2030, 3, 2)) == 0
    await budget.reserve("usr_vip", 900)
    with pytest.raises(TokenBudgetExceededError):
        await budget.reserve("usr_a", 101)
    # Days older than yesterday are dropped once a newer day is seen.
    clock.advance(2 * 86400)
    await budget.reserve("usr_a", 1)
    assert await store.used("usr_a", date(2030, 3, 1)) == 0


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(
        max_attempts=4, base_delay_seconds=1, max_delay_seconds=3, max_retry_after_seconds=10
    )
    rng = random.Random(7)
    transient = ProviderTransientError("x", provider="p")
    delays = [policy.delay_before_retry(transient, attempt, rng) for attempt in (1, 2, 3)]
    assert delays[0] is not None and 0.5 <= delays[0] <= 1
    assert delays[1] is not None and 1 <= delays[1] <= 2
    assert delays[2] is not None and 1.5 <= delays[2] <= 3  # capped at max_delay
    assert policy.delay_before_retry(transient, 4, rng) is None
    assert (
        policy.delay_before_retry(ProviderThrottledError("x", provider="p", retry_after=4), 1, rng)
        == 4
    )
    assert (
        policy.delay_before_retry(ProviderThrottledError("x", provider="p", retry_after=11), 1, rng)
        is None
    )
    assert policy.delay_before_retry(ProviderMisconfiguredError("x", provider="p"), 1, rng) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_circuit_opens_cools_down_and_admits_one_probe() -> None:
    clock = ManualClock()
    circuits = ProviderCircuits(CooldownPolicy(failure_threshold=2, cooldown_seconds=5), clock)
    assert circuits.acquire("p")
    assert not circuits.failure("p")
    assert circuits.failure("p")
    assert circuits.state("p") is ProviderState.OPEN
    assert not circuits.acquire("p")
    clock.advance(5)
    assert circuits.state("p") is ProviderState.HALF_OPEN
    assert circuits.acquire("p")
    assert not circuits.acquire("p")  # only one probe at a time
    circuits.release("p")
    assert circuits.acquire("p")
    circuits.success("p")
    assert circuits.state("p") is ProviderState.CLOSED
    assert circuits.status("p").consecutive_failures == 0
    assert circuits.failure("p", open_for=42)
    assert circuits.cooldown_remaining("p") == 42
