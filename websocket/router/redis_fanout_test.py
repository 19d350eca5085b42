"""Redis pub/sub fan-out between two router "nodes" sharing one hermetic Redis server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from context import UserExecutionContext, new_user_id
from itests.harness._process import free_port
from websocket.emitter.api import EventEnvelope, EventType, RoutedEvent
from websocket.emitter.emitter import RequestEmitter
from websocket.emitter.replay import RedisReplayBuffer
from websocket.router.api import (
    CLOSE_SLOW_CONSUMER,
    ConnectionLimitError,
    ConnectionOwnershipError,
    RouterUnavailableError,
    WebSocketEventRouter,
)
from websocket.router.redis_fanout import FanoutMessage, RedisFanoutRouter
from websocket.router.router import InProcessEventRouter
from websocket.router.testing import RecordingConnection

HANG_GUARD = 10.0  # seconds; only reached if the code under test hangs


def new_context() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


def envelope_for(ctx: UserExecutionContext, seq: int) -> EventEnvelope:
    return EventEnvelope(
        type=EventType.PROGRESS_UPDATE,
        run_id=ctx.run_id,
        thread_id=ctx.thread_id,
        agent_name="assistant",
        seq=seq,
        timestamp=datetime.now(UTC),
        request_id=ctx.request_id,
        payload={"progress_percentage": float(seq), "current_step": "s", "message": ""},
    )


async def frames(connection: RecordingConnection, count: int) -> list[dict[str, Any]]:
    return await asyncio.wait_for(connection.wait_for_frames(count), HANG_GUARD)


async def connect(
    node: RedisFanoutRouter, ctx: UserExecutionContext, **options: Any
) -> RecordingConnection:
    connection = RecordingConnection(user_id=ctx.user_id, **options)
    await node.register(connection)
    return connection


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[tuple[RedisFanoutRouter, RedisFanoutRouter]]:
    """Two gateway nodes, each with its own Redis clients and in-process router."""
    node_a = RedisFanoutRouter.from_url(redis_url, node_id="svc_node_a_0000000000000000")
    node_b = RedisFanoutRouter.from_url(redis_url, node_id="svc_node_b_0000000000000000")
    await node_a.start()
    await node_b.start()
    try:
        yield node_a, node_b
    finally:
        await node_a.close()
        await node_b.close()


@pytest.fixture
async def inspector(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def subscribers(client: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


async def test_fanout_router_satisfies_the_router_protocol(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    as_router: WebSocketEventRouter = nodes[0]
    assert as_router.stats().connections == 0


async def test_an_event_delivered_on_node_a_reaches_the_users_connection_on_node_b(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    node_a, node_b = nodes
    alice, bob = new_context(), new_context()
    alice_on_b = await connect(node_b, alice)
    bob_on_b = await connect(node_b, bob)
    assert node_a.connections_of(alice.user_id) == []
    for seq in range(1, 4):
        # Node A has no local connection of alice; node B is one remote receiver.
        assert await node_a.deliver(alice.user_id, envelope_for(alice, seq)) == 1
    received = await frames(alice_on_b, 3)
    assert [frame["seq"] for frame in received] == [1, 2, 3]
    assert {frame["run_id"] for frame in received} == {alice.run_id}
    # Barrier: bob's own event arrives after alice's on the same subscriber connection;
    # it is the only frame bob ever sees.
    await node_a.deliver(bob.user_id, envelope_for(bob, 1))
    assert [frame["run_id"] for frame in await frames(bob_on_b, 1)] == [bob.run_id]
    assert len(bob_on_b.frames) == 1


async def test_a_user_on_both_nodes_gets_each_event_exactly_once_per_connection(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    node_a, node_b = nodes
    alice = new_context()
    on_a = await connect(node_a, alice)
    on_b = [await connect(node_b, alice) for _ in range(2)]
    assert await node_a.deliver(alice.user_id, envelope_for(alice, 1)) == 2  # 1 local + node B
    assert await node_b.deliver(alice.user_id, envelope_for(alice, 2)) == 3  # 2 local + node A
    # Events from two different nodes have no order between them (clients order by seq);
    # each arrives exactly once on every connection.
    for connection in (on_a, *on_b):
        assert sorted(frame["seq"] for frame in await frames(connection, 2)) == [1, 2]
    # Two more from one node as a barrier: still exactly one frame per event everywhere.
    await node_a.deliver(alice.user_id, envelope_for(alice, 3))
    await node_a.deliver(alice.user_id, envelope_for(alice, 4))
    for connection in (on_a, *on_b):
        received = await frames(connection, 4)
        assert sorted(frame["seq"] for frame in received) == [1, 2, 3, 4]
        assert [frame["seq"] for frame in received[2:]] == [3, 4]
        assert len(connection.frames) == 4


async def test_many_users_across_two_nodes_receive_only_their_own_events(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    node_a, node_b = nodes
    users = [new_context() for _ in range(30)]
    connections: dict[str, list[RecordingConnection]] = {}
    for index, ctx in enumerate(users):
        # Every user on both nodes, some with two connections on one.
        connections[ctx.user_id] = [
            await connect(node_a, ctx),
            await connect(node_b, ctx),
            *([await connect(node_b, ctx)] if index % 3 == 0 else []),
        ]
    per_user = 4

    async def run(index: int, ctx: UserExecutionContext) -> None:
        origin = node_a if index % 2 else node_b
        for seq in range(1, per_user + 1):
            await origin.deliver(ctx.user_id, envelope_for(ctx, seq))

    await asyncio.gather(*(run(index, ctx) for index, ctx in enumerate(users)))
    for ctx in users:
        for connection in connections[ctx.user_id]:
            received = await frames(connection, per_user)
            assert {frame["run_id"] for frame in received} == {ctx.run_id}
            assert sorted(frame["seq"] for frame in received) == list(range(1, per_user + 1))
    # Barrier per node, then nothing extra anywhere.
    marker = new_context()
    marker_a, marker_b = await connect(node_a, marker), await connect(node_b, marker)
    await node_a.deliver(marker.user_id, envelope_for(marker, 1))
    await node_b.deliver(marker.user_id, envelope_for(marker, 2))
    await frames(marker_a, 2)
    await frames(marker_b, 2)
    for ctx in users:
        assert all(len(connection.frames) == per_user for connection in connections[ctx.user_id])


async def test_hundred_users_three_connections_registered_and_served_concurrently(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    node_a, node_b = nodes
    users = [new_context() for _ in range(100)]
    # Each user: two connections on node B and one on node A, all registered at once.
    placements = [(ctx, node) for ctx in users for node in (node_b, node_b, node_a)]
    connections = await asyncio.gather(*(connect(node, ctx) for ctx, node in placements))
    by_user: dict[str, list[RecordingConnection]] = {}
    for (ctx, _), connection in zip(placements, connections, strict=True):
        by_user.setdefault(ctx.user_id, []).append(connection)
    per_user = 3

    async def run(ctx: UserExecutionContext) -> None:
        for seq in range(1, per_user + 1):
            await node_a.deliver(ctx.user_id, envelope_for(ctx, seq))

    await asyncio.gather(*(run(ctx) for ctx in users))
    for ctx in users:
        for connection in by_user[ctx.user_id]:
            received = await frames(connection, per_user)
            assert [frame["seq"] for frame in received] == list(range(1, per_user + 1))
            assert {frame["run_id"] for frame in received} == {ctx.run_id}
    # Barrier on both nodes, then no connection holds a frame beyond its own user's.
    marker = new_context()
    marker_a, marker_b = await connect(node_a, marker), await connect(node_b, marker)
    await node_a.deliver(marker.user_id, envelope_for(marker, 1))
    await frames(marker_a, 1)
    await frames(marker_b, 1)
    assert all(len(connection.frames) == per_user for connection in connections)


async def test_node_subscribes_only_while_the_user_has_a_local_connection(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter], inspector: aioredis.Redis
) -> None:
    node_a, node_b = nodes
    alice = new_context()
    channel = node_b.channel_of(alice.user_id)
    assert await subscribers(inspector, channel) == 0
    first = await connect(node_b, alice)
    second = await connect(node_b, alice)
    assert node_b.subscribed_users() == {alice.user_id}
    assert await subscribers(inspector, channel) == 1
    await node_b.unregister(first.connection_id)
    assert await subscribers(inspector, channel) == 1
    await node_b.unregister(second.connection_id)
    assert node_b.subscribed_users() == set()
    assert await subscribers(inspector, channel) == 0
    # With nobody listening anywhere, a delivery reaches nobody.
    assert await node_a.deliver(alice.user_id, envelope_for(alice, 1)) == 0


async def test_a_slow_consumer_dropped_locally_also_ends_the_subscription(
    redis_url: str, inspector: aioredis.Redis
) -> None:
    local = InProcessEventRouter(queue_size=1, send_timeout=None)
    node = RedisFanoutRouter.from_url(redis_url, local=local)
    await node.start()
    try:
        alice = new_context()
        stuck = await connect(node, alice, stuck=True)
        for seq in range(1, 4):
            await node.deliver(alice.user_id, envelope_for(alice, seq))
        await asyncio.wait_for(stuck.closed_event.wait(), HANG_GUARD)
        assert stuck.close_code == CLOSE_SLOW_CONSUMER
        await asyncio.wait_for(node.wait_idle(), HANG_GUARD)
        assert node.subscribed_users() == set()
        assert await subscribers(inspector, node.channel_of(alice.user_id)) == 0
    finally:
        await node.close()


async def test_ownership_is_still_checked_locally(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    _, node_b = nodes
    alice, bob = new_context(), new_context()
    bob_on_b = await connect(node_b, bob)
    with pytest.raises(ConnectionOwnershipError):
        await node_b.route_event(alice.user_id, bob_on_b.connection_id, envelope_for(alice, 1))
    assert await node_b.route_event(bob.user_id, bob_on_b.connection_id, envelope_for(bob, 1))
    assert [frame["run_id"] for frame in await frames(bob_on_b, 1)] == [bob.run_id]


async def test_a_forged_message_on_a_users_channel_is_dropped(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter], inspector: aioredis.Redis
) -> None:
    _, node_b = nodes
    alice, bob = new_context(), new_context()
    alice_on_b = await connect(node_b, alice)
    bob_on_b = await connect(node_b, bob)
    # A message naming bob, published on alice's channel; and garbage on bob's.
    forged = FanoutMessage(
        origin="svc_elsewhere_000000000000000",
        event=RoutedEvent(user_id=bob.user_id, envelope=envelope_for(bob, 1)),
    )
    with capture_logs() as logs:
        await inspector.publish(node_b.channel_of(alice.user_id), forged.model_dump_json())
        await inspector.publish(node_b.channel_of(bob.user_id), "{not json")
        # Barrier: a genuine event for bob, published after both.
        genuine = FanoutMessage(
            origin="svc_elsewhere_000000000000000",
            event=RoutedEvent(user_id=bob.user_id, envelope=envelope_for(bob, 2)),
        )
        await inspector.publish(node_b.channel_of(bob.user_id), genuine.model_dump_json())
        assert [frame["seq"] for frame in await frames(bob_on_b, 1)] == [2]
    assert alice_on_b.frames == []
    assert len(bob_on_b.frames) == 1
    [mismatch] = [entry for entry in logs if entry["event"] == "router.fanout_channel_mismatch"]
    assert mismatch["security_event"] is True
    assert any(entry["event"] == "router.fanout_bad_message" for entry in logs)
    assert node_b.fanout_stats()["rejected"] == 2


async def test_limits_and_rollback_apply_on_the_fanout_router(
    nodes: tuple[RedisFanoutRouter, RedisFanoutRouter],
) -> None:
    node_a, _ = nodes
    alice = new_context()
    for _ in range(5):
        await connect(node_a, alice)
    with pytest.raises(ConnectionLimitError):
        await connect(node_a, alice)
    assert len(node_a.connections_of(alice.user_id)) == 5


async def test_emitters_on_node_a_stream_a_run_to_the_users_connection_on_node_b(
    redis_url: str, nodes: tuple[RedisFanoutRouter, RedisFanoutRouter]
) -> None:
    node_a, node_b = nodes
    replay = RedisReplayBuffer.from_url(redis_url)
    try:
        alice = new_context()
        watching_on_b = await connect(node_b, alice)
        emitter = RequestEmitter(alice, delivery=node_a, replay=replay)
        assert await emitter.notify_agent_started("assistant")
        assert await emitter.notify_tool_executing("assistant", "calculator", {"expression": "6*7"})
        assert await emitter.notify_tool_completed(
            "assistant", "calculator", success=True, result_summary=42
        )
        assert await emitter.notify_agent_completed("assistant", 42)
        received = await frames(watching_on_b, 4)
        assert [(frame["seq"], frame["type"]) for frame in received] == [
            (1, "agent_started"),
            (2, "tool_executing"),
            (3, "tool_completed"),
            (4, "agent_completed"),
        ]
        assert emitter.stats().connections_reached == 4
    finally:
        await replay.close()


async def test_an_unreachable_redis_is_a_typed_unavailable_error() -> None:
    node = RedisFanoutRouter.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    try:
        with pytest.raises(RouterUnavailableError) as caught:
            await node.start()
        assert caught.value.grpc_status_name == "UNAVAILABLE"
        with pytest.raises(RouterUnavailableError):
            await node.register(RecordingConnection(user_id=new_user_id()))
    finally:
        await node.close()


async def test_a_closed_node_refuses_work(redis_url: str) -> None:
    node = RedisFanoutRouter.from_url(redis_url)
    await node.start()
    alice = new_context()
    connection = await connect(node, alice)
    await node.close()
    assert connection.close_code is not None
    with pytest.raises(RouterUnavailableError):
        await node.deliver(alice.user_id, envelope_for(alice, 1))
