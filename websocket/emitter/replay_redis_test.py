"""Behaviour of the Redis replay buffer alone: keys, TTLs, stored owners, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from context import UserExecutionContext
from itests.harness._process import free_port
from websocket.emitter.api import EmitterError, ReplayUnavailableError
from websocket.emitter.replay import RedisReplayBuffer
from websocket.emitter.testing import draft_for, fill


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_replay(redis_url: str) -> AsyncIterator[RedisReplayBuffer]:
    buffer = RedisReplayBuffer.from_url(redis_url, ttl_seconds=120)
    try:
        yield buffer
    finally:
        await buffer.close()


async def test_redis_keys_are_namespaced_by_user_and_expire(
    alice: UserExecutionContext, redis_replay: RedisReplayBuffer, redis_client: aioredis.Redis
) -> None:
    await fill(redis_replay, alice, 2)
    seq_key, stream_key = redis_replay.keys_of(alice.user_id, alice.run_id)
    assert seq_key == f"ssot:ws:replay:{{{alice.user_id}}}:{alice.run_id}:seq"
    assert stream_key == f"ssot:ws:replay:{{{alice.user_id}}}:{alice.run_id}:events"
    assert sorted(await redis_client.keys("*")) == sorted([seq_key, stream_key])
    for key in (seq_key, stream_key):
        assert 0 < await redis_client.pttl(key) <= 120_000
    # redis-py types stream replies loosely; with decode_responses they are str pairs.
    entries = cast(list[tuple[str, dict[str, str]]], await redis_client.xrange(stream_key))
    assert [entry_id for entry_id, _ in entries] == ["1-0", "2-0"]
    assert all(fields["u"] == alice.user_id for _, fields in entries)


async def test_redis_entry_of_another_owner_is_never_returned(
    alice: UserExecutionContext,
    bob: UserExecutionContext,
    redis_replay: RedisReplayBuffer,
    redis_client: aioredis.Redis,
) -> None:
    # Plant an entry owned by alice into bob's stream, as a faulty writer would.
    bob_run = UserExecutionContext(
        user_id=bob.user_id, thread_id=bob.thread_id, run_id=alice.run_id
    )
    await fill(redis_replay, bob_run, 1)
    _, stream_key = redis_replay.keys_of(bob.user_id, alice.run_id)
    planted = draft_for(alice, "alice's secret").model_dump_json()
    await redis_client.xadd(stream_key, {"u": alice.user_id, "e": planted}, id="2-0")
    with capture_logs() as logs:
        found = await redis_replay.read_after(bob.user_id, alice.run_id, 0)
    assert [envelope.payload["thought"] for envelope in found] == ["event 1"]
    [entry] = [entry for entry in logs if entry["event"] == "replay.owner_mismatch"]
    assert entry["security_event"] is True


async def test_redis_corrupt_entry_is_skipped_and_logged(
    alice: UserExecutionContext, redis_replay: RedisReplayBuffer, redis_client: aioredis.Redis
) -> None:
    await fill(redis_replay, alice, 1)
    _, stream_key = redis_replay.keys_of(alice.user_id, alice.run_id)
    await redis_client.xadd(stream_key, {"u": alice.user_id, "e": "{not json"}, id="2-0")
    await redis_client.set(redis_replay.keys_of(alice.user_id, alice.run_id)[0], 2)
    await fill(redis_replay, alice, 1)
    with capture_logs() as logs:
        found = await redis_replay.read_after(alice.user_id, alice.run_id, 0)
    assert [envelope.seq for envelope in found] == [1, 3]
    assert any(entry["event"] == "replay.corrupt_entry" for entry in logs)


async def test_redis_numbering_survives_a_lost_counter(
    alice: UserExecutionContext, redis_replay: RedisReplayBuffer, redis_client: aioredis.Redis
) -> None:
    await fill(redis_replay, alice, 3)
    seq_key, _ = redis_replay.keys_of(alice.user_id, alice.run_id)
    await redis_client.delete(seq_key)
    assert (await redis_replay.append(alice.user_id, alice.run_id, draft_for(alice))).seq == 4
    assert await redis_replay.last_seq(alice.user_id, alice.run_id) == 4
    assert await redis_client.pttl(seq_key) > 0


async def test_redis_shared_client_is_not_closed_by_the_buffer(
    alice: UserExecutionContext, redis_client: aioredis.Redis
) -> None:
    buffer = RedisReplayBuffer(redis_client)
    await fill(buffer, alice, 1)
    await buffer.close()
    assert await redis_client.ping()


async def test_redis_unreachable_store_is_a_typed_unavailable_error(
    alice: UserExecutionContext,
) -> None:
    buffer = RedisReplayBuffer.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    try:
        with pytest.raises(ReplayUnavailableError) as caught:
            await buffer.append(alice.user_id, alice.run_id, draft_for(alice))
        assert isinstance(caught.value, EmitterError)
        assert caught.value.grpc_status_name == "UNAVAILABLE"
        with pytest.raises(ReplayUnavailableError):
            await buffer.read_after(alice.user_id, alice.run_id, 0)
        with pytest.raises(ReplayUnavailableError):
            await buffer.last_seq(alice.user_id, alice.run_id)
    finally:
        await buffer.close()


def test_redis_bounds_are_checked(redis_client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="max_events_per_run"):
        RedisReplayBuffer(redis_client, max_events_per_run=0)
