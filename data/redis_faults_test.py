"""Redis going away: typed UNAVAILABLE errors, then recovery after a restart.

Always runs against a Redis server of this module's own (stopped and restarted here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from data import DataUnavailableError
from data.cache import NamespacedUserCache, RedisCacheBackend
from itests.harness import wait_until
from itests.harness.redis import RedisServer


@pytest.fixture
async def backend(private_redis_server: RedisServer) -> AsyncIterator[RedisCacheBackend]:
    if not private_redis_server.running:
        private_redis_server.restart()
    instance = RedisCacheBackend.from_url(private_redis_server.url, timeout=2)
    try:
        yield instance
    finally:
        await instance.close()
        if not private_redis_server.running:
            private_redis_server.restart()


async def test_redis_down_gives_unavailable_then_recovers(
    backend: RedisCacheBackend, private_redis_server: RedisServer
) -> None:
    cache = NamespacedUserCache(backend, "usr_alice")
    await cache.set("k", "v")
    private_redis_server.stop()
    for call in (
        cache.get("k"),
        cache.set("k", "v2"),
        cache.delete("k"),
        cache.keys(),
        cache.clear(),
        backend.ping(),
    ):
        with pytest.raises(DataUnavailableError) as raised:
            await call
        assert raised.value.grpc_status_name == "UNAVAILABLE"
        assert "usr_alice" not in str(raised.value)
    private_redis_server.restart()  # same port; the data did not persist (by design)
    assert await cache.get("k") is None
    await cache.set("k", "back")
    assert await cache.get("k") == "back"


async def test_closing_leaves_no_client_connected(private_redis_server: RedisServer) -> None:
    if not private_redis_server.running:
        private_redis_server.restart()
    backend = RedisCacheBackend.from_url(private_redis_server.url)
    cache = NamespacedUserCache(backend, "usr_bob")
    await cache.set("k", "v")
    assert private_redis_server.connected_clients() >= 1
    await backend.close()
    # Checked on the server (Redis notices a closed socket on its next loop turn).
    wait_until(
        lambda: private_redis_server.connected_clients() == 0,
        timeout=5,
        what="Redis clients to disconnect",
    )
