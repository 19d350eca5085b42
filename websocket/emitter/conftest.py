"""Fixtures of the emitter tests: the replay backend under test comes from the environment.

``SSOT_TEST_CACHE_BACKEND=memory|redis`` (default ``memory``; ``all`` runs both) picks the
replay buffer backend of the shared test suite, so Bazel can run the same tests against
each backend as separate targets. Redis runs as a hermetic server of the test process
(``itests.harness``); a backend that cannot start fails the run, it is never skipped.
Tests of Redis-only behaviour use the ``redis_url`` fixture directly.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from context import UserExecutionContext, new_user_id
from itests.harness.fixtures import redis_server, redis_url  # noqa: F401  (fixtures)
from websocket.emitter.api import ReplayBuffer
from websocket.emitter.replay import MemoryReplayBuffer, RedisReplayBuffer
from websocket.emitter.testing import ReplayStore

CACHE_BACKEND_ENV = "SSOT_TEST_CACHE_BACKEND"
_BACKENDS = ("memory", "redis")


def selected_backends() -> list[str]:
    value = os.environ.get(CACHE_BACKEND_ENV, "memory").strip().lower()
    if value == "all":
        return list(_BACKENDS)
    if value not in _BACKENDS:
        raise pytest.UsageError(
            f"{CACHE_BACKEND_ENV}={value!r}; expected one of {', '.join(_BACKENDS)} or all"
        )
    return [value]


@pytest.fixture(params=selected_backends())
def replay_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
async def replay_store(
    replay_backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[ReplayStore]:
    if replay_backend == "redis":
        url: str = request.getfixturevalue("redis_url")
        store = ReplayStore(replay_backend, lambda: RedisReplayBuffer.from_url(url))
    else:
        shared = MemoryReplayBuffer()
        store = ReplayStore(replay_backend, lambda: shared)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def replay(replay_store: ReplayStore) -> ReplayBuffer:
    """A replay buffer of the selected backend."""
    return replay_store.open()


def new_context() -> UserExecutionContext:
    """A root context of a brand-new user."""
    return UserExecutionContext.from_request(new_user_id())


@pytest.fixture
def alice() -> UserExecutionContext:
    return new_context()


@pytest.fixture
def bob() -> UserExecutionContext:
    return new_context()
