"""The in-process router: ownership, broadcast, isolation, limits, clean-up, slow consumers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from context import UserExecutionContext, new_user_id
from websocket.emitter.api import EventDelivery, EventEnvelope, EventType
from websocket.emitter.emitter import RequestEmitter
from websocket.emitter.replay import MemoryReplayBuffer
from websocket.router.api import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_SLOW_CONSUMER,
    ConnectionInfo,
    ConnectionLimitError,
    ConnectionOwnershipError,
    DuplicateConnectionError,
    InvalidConnectionError,
    RouterError,
    RouterUnavailableError,
    UnknownConnectionError,
    WebSocketEventRouter,
)
from websocket.router.router import InProcessEventRouter
from websocket.router.testing import RecordingConnection

HANG_GUARD = 10.0  # seconds; only reached if the code under test hangs


def new_context() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


def envelope_for(ctx: UserExecutionContext, seq: int, marker: str = "") -> EventEnvelope:
    return EventEnvelope(
        type=EventType.AGENT_THINKING,
        run_id=ctx.run_id,
        thread_id=ctx.thread_id,
        agent_name="assistant",
        seq=seq,
        timestamp=datetime.now(UTC),
        request_id=ctx.request_id,
        payload={"thought": marker or f"thought {seq}", "step": seq, "message": ""},
    )


async def connect(
    router: InProcessEventRouter, ctx: UserExecutionContext, count: int = 1, **options: Any
) -> list[RecordingConnection]:
    connections = [RecordingConnection(user_id=ctx.user_id, **options) for _ in range(count)]
    for connection in connections:
        await router.register(connection)
    return connections


async def frames(connection: RecordingConnection, count: int) -> list[dict[str, Any]]:
    return await asyncio.wait_for(connection.wait_for_frames(count), HANG_GUARD)


@pytest.fixture
async def fake_clock_router() -> AsyncIterator[tuple[InProcessEventRouter, list[float]]]:
    now = [1000.0]
    instance = InProcessEventRouter(clock=lambda: now[0])
    try:
        yield instance, now
    finally:
        await instance.close()


# -- registry ------------------------------------------------------------------------------


async def test_register_lists_the_connection(router: InProcessEventRouter) -> None:
    ctx = new_context()
    connection = RecordingConnection(user_id=ctx.user_id)
    info = await router.register(connection)
    assert isinstance(info, ConnectionInfo)
    assert (info.connection_id, info.user_id, info.queued, info.events_sent) == (
        connection.connection_id,
        ctx.user_id,
        0,
        0,
    )
    assert router.connections_of(ctx.user_id) == [info]
    assert router.connections_of(new_user_id()) == []
    assert router.owner_of(connection.connection_id) == ctx.user_id
    stats = router.stats()
    assert (stats.users, stats.connections) == (1, 1)


async def test_router_satisfies_both_protocols(router: InProcessEventRouter) -> None:
    as_router: WebSocketEventRouter = router
    as_delivery: EventDelivery = router
    assert as_router is as_delivery


async def test_a_duplicate_connection_id_is_refused(router: InProcessEventRouter) -> None:
    ctx, other = new_context(), new_context()
    [connection] = await connect(router, ctx)
    impostor = RecordingConnection(user_id=other.user_id, connection_id=connection.connection_id)
    with pytest.raises(DuplicateConnectionError) as caught:
        await router.register(impostor)
    assert caught.value.grpc_status_name == "ALREADY_EXISTS"
    assert router.owner_of(connection.connection_id) == ctx.user_id


@pytest.mark.parametrize(
    ("connection_id", "user_id"),
    [
        ("", "usr_ok_1234567890abcdef"),
        ("conn_ok_1234567890abcdef", ""),
        ("*", "usr_ok_1234567890abcdef"),
        ("conn_ok_1234567890abcdef", "null"),
        ("conn with space", "usr_ok_1234567890abcdef"),
        ("conn_ok_1234567890abcdef", "usr_{x}"),
        ("c" * 200, "usr_ok_1234567890abcdef"),
        (None, "usr_ok_1234567890abcdef"),
    ],
    ids=repr,
)
async def test_malformed_connection_ids_are_refused(
    router: InProcessEventRouter, connection_id: Any, user_id: str
) -> None:
    connection = RecordingConnection(user_id=user_id, connection_id=connection_id)
    with pytest.raises(InvalidConnectionError):
        await router.register(connection)
    assert router.stats().connections == 0


async def test_per_user_connection_limit_default_five(router: InProcessEventRouter) -> None:
    ctx, other = new_context(), new_context()
    connections = await connect(router, ctx, 5)
    with pytest.raises(ConnectionLimitError) as caught:
        await router.register(RecordingConnection(user_id=ctx.user_id))
    assert caught.value.grpc_status_name == "RESOURCE_EXHAUSTED"
    assert caught.value.error_code == "CONNECTION_LIMIT"
    assert len(router.connections_of(ctx.user_id)) == 5
    # Other users are not affected, and a freed slot can be used again.
    await connect(router, other, 5)
    assert await router.unregister(connections[0].connection_id)
    await connect(router, ctx)
    assert len(router.connections_of(ctx.user_id)) == 5


async def test_connection_limit_is_configurable() -> None:
    router = InProcessEventRouter(max_connections_per_user=2)
    try:
        ctx = new_context()
        await connect(router, ctx, 2)
        with pytest.raises(ConnectionLimitError):
            await connect(router, ctx)
    finally:
        await router.close()


async def test_unregister_stops_delivery_without_closing_the_socket(
    router: InProcessEventRouter,
) -> None:
    ctx = new_context()
    kept, removed = await connect(router, ctx, 2)
    assert await router.unregister(removed.connection_id) is True
    assert await router.unregister(removed.connection_id) is False
    assert await router.unregister("conn_never_registered_123456") is False
    assert await router.deliver(ctx.user_id, envelope_for(ctx, 1)) == 1
    await frames(kept, 1)
    assert removed.frames == []
    assert removed.close_code is None
    assert [info.connection_id for info in router.connections_of(ctx.user_id)] == [
        kept.connection_id
    ]
    with pytest.raises(UnknownConnectionError):
        await router.route_event(ctx.user_id, removed.connection_id, envelope_for(ctx, 2))


async def test_unregistering_the_last_connection_forgets_the_user(
    router: InProcessEventRouter,
) -> None:
    ctx = new_context()
    [connection] = await connect(router, ctx)
    await router.unregister(connection.connection_id)
    assert router.users() == []
    assert not router.has_connections(ctx.user_id)
    assert await router.deliver(ctx.user_id, envelope_for(ctx, 1)) == 0


# -- delivery and ownership ----------------------------------------------------------------


async def test_deliver_broadcasts_to_all_three_connections_of_the_user(
    router: InProcessEventRouter,
) -> None:
    ctx, bystander = new_context(), new_context()
    mine = await connect(router, ctx, 3)
    [theirs] = await connect(router, bystander)
    envelope = envelope_for(ctx, 1)
    assert await router.deliver(ctx.user_id, envelope) == 3
    for connection in mine:
        assert await frames(connection, 1) == [envelope.to_wire()]
    # A barrier: the bystander's own event arrives, and it is the only frame it got.
    await router.deliver(bystander.user_id, envelope_for(bystander, 1))
    assert [frame["run_id"] for frame in await frames(theirs, 1)] == [bystander.run_id]
    assert len(theirs.frames) == 1


async def test_frames_are_the_wire_envelope_without_any_user_id(
    router: InProcessEventRouter,
) -> None:
    ctx = new_context()
    [connection] = await connect(router, ctx)
    await router.deliver(ctx.user_id, envelope_for(ctx, 1))
    [frame] = await frames(connection, 1)
    assert list(frame) == [
        "type",
        "run_id",
        "thread_id",
        "agent_name",
        "seq",
        "timestamp",
        "request_id",
        "payload",
    ]
    assert ctx.user_id not in connection.frames[0]


async def test_deliver_to_a_user_without_connections_reaches_nobody(
    router: InProcessEventRouter,
) -> None:
    ctx = new_context()
    others = await connect(router, new_context(), 2)
    assert await router.deliver(ctx.user_id, envelope_for(ctx, 1)) == 0
    assert all(connection.frames == [] for connection in others)


async def test_route_event_to_another_users_connection_is_refused_and_logged(
    router: InProcessEventRouter,
) -> None:
    alice, bob = new_context(), new_context()
    [bob_connection] = await connect(router, bob)
    secret_marker = "alice-private-thought-7d1c"
    with capture_logs() as logs, pytest.raises(ConnectionOwnershipError) as caught:
        await router.route_event(
            alice.user_id, bob_connection.connection_id, envelope_for(alice, 1, secret_marker)
        )
    assert caught.value.grpc_status_name == "PERMISSION_DENIED"
    assert bob.user_id not in caught.value.message
    [entry] = [entry for entry in logs if entry["event"] == "router.ownership_refused"]
    assert entry["security_event"] is True
    assert entry["event_user_id"] == alice.user_id
    assert entry["connection_id"] == bob_connection.connection_id
    assert secret_marker not in json.dumps(logs, default=str)
    assert router.stats().ownership_refusals == 1
    # Nothing reached bob: his own next event is the first frame he sees.
    await router.route_event(bob.user_id, bob_connection.connection_id, envelope_for(bob, 1))
    assert [frame["run_id"] for frame in await frames(bob_connection, 1)] == [bob.run_id]
    assert len(bob_connection.frames) == 1


async def test_route_event_reaches_only_the_addressed_connection(
    router: InProcessEventRouter,
) -> None:
    ctx = new_context()
    first, second = await connect(router, ctx, 2)
    assert await router.route_event(ctx.user_id, second.connection_id, envelope_for(ctx, 1))
    await frames(second, 1)
    await router.route_event(ctx.user_id, first.connection_id, envelope_for(ctx, 2))
    assert [frame["seq"] for frame in await frames(first, 1)] == [2]


async def test_route_event_to_an_unknown_connection(router: InProcessEventRouter) -> None:
    ctx = new_context()
    with pytest.raises(UnknownConnectionError) as caught:
        await router.route_event(ctx.user_id, "conn_unknown_000000000000", envelope_for(ctx, 1))
    assert caught.value.grpc_status_name == "NOT_FOUND"


async def test_a_connection_that_changed_its_user_is_refused_at_routing(
    router: InProcessEventRouter,
) -> None:
    alice, mallory = new_context(), new_context()
    [connection] = await connect(router, alice)
    connection.user_id = mallory.user_id  # the socket now claims another user
    with capture_logs() as logs:
        assert await router.deliver(alice.user_id, envelope_for(alice, 1)) == 0
        assert await router.deliver(mallory.user_id, envelope_for(mallory, 1)) == 0
        with pytest.raises(ConnectionOwnershipError):
            await router.route_event(
                alice.user_id, connection.connection_id, envelope_for(alice, 2)
            )
    assert connection.frames == []
    refusals = [entry for entry in logs if entry["event"] == "router.ownership_refused"]
    assert len(refusals) == 2
    assert all(entry["security_event"] is True for entry in refusals)


async def test_one_hundred_users_three_connections_each_concurrently_isolated(
    router: InProcessEventRouter,
) -> None:
    users = [new_context() for _ in range(100)]
    connections = {ctx.user_id: await connect(router, ctx, 3) for ctx in users}
    per_user = 5

    async def run(ctx: UserExecutionContext) -> list[int]:
        reached = []
        for seq in range(1, per_user + 1):
            reached.append(await router.deliver(ctx.user_id, envelope_for(ctx, seq)))
            await asyncio.sleep(0)  # interleave with the other users
        return reached

    results = await asyncio.gather(*(run(ctx) for ctx in users))
    assert all(reached == [3] * per_user for reached in results)
    total = 0
    for ctx in users:
        for connection in connections[ctx.user_id]:
            received = await frames(connection, per_user)
            assert len(received) == per_user
            assert {frame["run_id"] for frame in received} == {ctx.run_id}
            assert [frame["seq"] for frame in received] == list(range(1, per_user + 1))
            total += len(received)
    assert total == 100 * 3 * per_user
    assert router.stats().events_enqueued == total


# -- slow consumers ------------------------------------------------------------------------


async def test_a_stuck_connection_never_delays_fifty_other_users() -> None:
    router = InProcessEventRouter(queue_size=8, send_timeout=None)
    try:
        slow_user = new_context()
        [stuck] = await connect(router, slow_user, stuck=True)
        others = [new_context() for _ in range(50)]
        other_connections = [(ctx, (await connect(router, ctx))[0]) for ctx in others]

        # The first event is taken by the sender, whose send then never completes.
        assert await router.deliver(slow_user.user_id, envelope_for(slow_user, 1)) == 1
        await asyncio.wait_for(stuck.send_started.wait(), HANG_GUARD)

        async def flood_the_stuck_user() -> list[int]:
            return [
                await router.deliver(slow_user.user_id, envelope_for(slow_user, seq))
                for seq in range(2, 22)
            ]

        async def serve_everyone_else() -> None:
            for ctx, _ in other_connections:
                assert await router.deliver(ctx.user_id, envelope_for(ctx, 1)) == 1

        reached, _ = await asyncio.wait_for(
            asyncio.gather(flood_the_stuck_user(), serve_everyone_else()), HANG_GUARD
        )
        for ctx, connection in other_connections:
            [frame] = await frames(connection, 1)
            assert frame["run_id"] == ctx.run_id
        # The stuck socket never completed a send, yet everyone else was served.
        assert stuck.frames == []
        # The queue holds 8 more; the next overflowed it, later ones found the connection gone.
        assert reached == [1] * 8 + [0] * 12
        await asyncio.wait_for(stuck.closed_event.wait(), HANG_GUARD)
        assert stuck.close_code == CLOSE_SLOW_CONSUMER == 1013
        assert router.connections_of(slow_user.user_id) == []
        await router.wait_idle()
        assert stuck.sends_cancelled == 1
        assert router.stats().slow_consumer_closes == 1
    finally:
        await router.close()


async def test_a_slow_consumers_events_stay_replayable() -> None:
    router = InProcessEventRouter(queue_size=4, send_timeout=None)
    replay = MemoryReplayBuffer()
    try:
        ctx = new_context()
        [stuck] = await connect(router, ctx, stuck=True)
        emitter = RequestEmitter(ctx, delivery=router, replay=replay)
        for step in range(10):
            assert await emitter.notify_agent_thinking("assistant", "t", step=step)
        await asyncio.wait_for(stuck.closed_event.wait(), HANG_GUARD)
        assert stuck.close_code == CLOSE_SLOW_CONSUMER
        # The client reconnects and resumes from what it saw (nothing): all 10 are there.
        replayed = await replay.read_after(ctx.user_id, ctx.run_id, 0)
        assert [envelope.seq for envelope in replayed] == list(range(1, 11))
        # A fresh connection gets the replay through route_event, then live events.
        fresh = RecordingConnection(user_id=ctx.user_id)
        await router.register(fresh)
        for envelope in replayed:
            await router.route_event(ctx.user_id, fresh.connection_id, envelope)
        assert await emitter.notify_agent_completed("assistant", "done")
        received = await frames(fresh, 11)
        assert [frame["seq"] for frame in received] == list(range(1, 12))
    finally:
        await router.close()


async def test_route_event_waits_for_room_instead_of_overflowing() -> None:
    router = InProcessEventRouter(queue_size=2, send_timeout=None)
    try:
        ctx = new_context()
        [connection] = await connect(router, ctx)
        results = [
            await router.route_event(ctx.user_id, connection.connection_id, envelope_for(ctx, seq))
            for seq in range(1, 51)
        ]
        assert results == [True] * 50
        received = await frames(connection, 50)
        assert [frame["seq"] for frame in received] == list(range(1, 51))
        assert connection.close_code is None
    finally:
        await router.close()


async def test_route_event_to_a_connection_that_makes_no_room_gives_up_as_slow() -> None:
    router = InProcessEventRouter(queue_size=1, send_timeout=0.05)
    try:
        ctx = new_context()
        [stuck] = await connect(router, ctx, stuck=True)
        results = [
            await asyncio.wait_for(
                router.route_event(ctx.user_id, stuck.connection_id, envelope_for(ctx, seq)),
                HANG_GUARD,
            )
            for seq in range(1, 4)
        ]
        assert results[-1] is False
        await asyncio.wait_for(stuck.closed_event.wait(), HANG_GUARD)
        assert stuck.close_code == CLOSE_SLOW_CONSUMER
        assert router.owner_of(stuck.connection_id) is None
    finally:
        await router.close()


async def test_route_event_waiting_for_room_stops_when_the_connection_goes() -> None:
    router = InProcessEventRouter(queue_size=1, send_timeout=None)
    try:
        ctx = new_context()
        [stuck] = await connect(router, ctx, stuck=True)
        assert await router.route_event(ctx.user_id, stuck.connection_id, envelope_for(ctx, 1))
        await asyncio.wait_for(stuck.send_started.wait(), HANG_GUARD)
        assert await router.route_event(ctx.user_id, stuck.connection_id, envelope_for(ctx, 2))
        waiting = asyncio.create_task(
            router.route_event(ctx.user_id, stuck.connection_id, envelope_for(ctx, 3))
        )
        await asyncio.sleep(0)
        assert not waiting.done()
        assert await router.unregister(stuck.connection_id)
        assert await asyncio.wait_for(waiting, HANG_GUARD) is False
    finally:
        await router.close()


async def test_a_send_that_times_out_closes_the_connection_as_slow() -> None:
    router = InProcessEventRouter(send_timeout=0.05)
    try:
        ctx = new_context()
        stuck, healthy = (
            RecordingConnection(user_id=ctx.user_id, stuck=True),
            RecordingConnection(user_id=ctx.user_id),
        )
        await router.register(stuck)
        await router.register(healthy)
        assert await router.deliver(ctx.user_id, envelope_for(ctx, 1)) == 2
        await asyncio.wait_for(stuck.closed_event.wait(), HANG_GUARD)
        assert stuck.close_code == CLOSE_SLOW_CONSUMER
        assert len(await frames(healthy, 1)) == 1
        assert [info.connection_id for info in router.connections_of(ctx.user_id)] == [
            healthy.connection_id
        ]
    finally:
        await router.close()


async def test_a_failing_socket_is_closed_and_unregistered(router: InProcessEventRouter) -> None:
    ctx = new_context()
    [broken] = await connect(router, ctx, fail_sends=True)
    [healthy] = await connect(router, ctx)
    await router.deliver(ctx.user_id, envelope_for(ctx, 1))
    await asyncio.wait_for(broken.closed_event.wait(), HANG_GUARD)
    assert broken.close_code == CLOSE_INTERNAL_ERROR
    assert len(await frames(healthy, 1)) == 1
    assert router.owner_of(broken.connection_id) is None
    assert router.stats().send_failures == 1


async def test_a_socket_that_never_finishes_closing_does_not_block_the_router() -> None:
    router = InProcessEventRouter(queue_size=1, send_timeout=None, close_timeout=0.05)
    try:
        ctx = new_context()
        [stuck] = await connect(router, ctx, stuck=True, hang_on_close=True)
        for seq in range(1, 4):
            await router.deliver(ctx.user_id, envelope_for(ctx, seq))
        await asyncio.wait_for(router.wait_idle(), HANG_GUARD)
        assert stuck.close_code == CLOSE_SLOW_CONSUMER
        assert router.stats().connections == 0
    finally:
        await router.close()


# -- activity and stale clean-up -----------------------------------------------------------


async def test_cleanup_stale_closes_only_idle_connections(
    fake_clock_router: tuple[InProcessEventRouter, list[float]],
) -> None:
    router, now = fake_clock_router
    ctx = new_context()
    idle_a, idle_b, active = await connect(router, ctx, 3)
    now[0] += 50
    assert await router.touch(active.connection_id)
    assert not await router.touch("conn_unknown_000000000000")
    now[0] += 20  # idle ones: 70 s; active: 20 s
    assert await router.cleanup_stale(max_idle=60) == 2
    await router.wait_idle()
    assert (idle_a.close_code, idle_b.close_code) == (CLOSE_GOING_AWAY, CLOSE_GOING_AWAY)
    assert active.close_code is None
    assert [info.connection_id for info in router.connections_of(ctx.user_id)] == [
        active.connection_id
    ]
    assert await router.cleanup_stale(max_idle=60) == 0
    assert router.stats().stale_closes == 2
    with pytest.raises(ValueError, match="max_idle"):
        await router.cleanup_stale(max_idle=-1)


async def test_touch_updates_last_activity(
    fake_clock_router: tuple[InProcessEventRouter, list[float]],
) -> None:
    router, _ = fake_clock_router
    [connection] = await connect(router, new_context())
    [before] = router.connections_of(connection.user_id)
    await router.touch(connection.connection_id)
    [after] = router.connections_of(connection.user_id)
    assert after.last_activity >= before.last_activity
    assert after.connected_at == before.connected_at


# -- lifecycle -----------------------------------------------------------------------------


async def test_removal_listeners_hear_every_way_out() -> None:
    router = InProcessEventRouter(queue_size=1, send_timeout=None)
    removed: list[str] = []
    router.add_removal_listener(lambda info: removed.append(info.connection_id))
    router.add_removal_listener(lambda info: cast(Any, None).boom)  # a faulty listener
    ctx = new_context()
    plain, slow, stale = (
        RecordingConnection(user_id=ctx.user_id),
        RecordingConnection(user_id=ctx.user_id, stuck=True),
        RecordingConnection(user_id=new_user_id()),
    )
    for connection in (plain, slow, stale):
        await router.register(connection)
    await router.unregister(plain.connection_id)
    for seq in range(1, 4):
        await router.deliver(ctx.user_id, envelope_for(ctx, seq))
    await router.cleanup_stale(max_idle=0)
    await router.close()
    assert removed == [plain.connection_id, slow.connection_id, stale.connection_id]


async def test_close_closes_every_connection_and_refuses_further_use() -> None:
    router = InProcessEventRouter()
    ctx = new_context()
    connections = await connect(router, ctx, 3)
    await router.close()
    await router.close()  # idempotent
    assert all(connection.close_code == CLOSE_GOING_AWAY for connection in connections)
    assert router.stats().connections == 0
    for call in (
        router.register(RecordingConnection(user_id=ctx.user_id)),
        router.deliver(ctx.user_id, envelope_for(ctx, 1)),
        router.route_event(ctx.user_id, connections[0].connection_id, envelope_for(ctx, 1)),
    ):
        with pytest.raises(RouterUnavailableError):
            await call


def test_router_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_connections_per_user"):
        InProcessEventRouter(max_connections_per_user=0)
    with pytest.raises(ValueError, match="queue_size"):
        InProcessEventRouter(queue_size=0)
    with pytest.raises(ValueError, match="send_timeout"):
        InProcessEventRouter(send_timeout=0)


def test_errors_share_one_base_with_stable_codes() -> None:
    expected = {
        InvalidConnectionError: ("INVALID_CONNECTION", "INVALID_ARGUMENT"),
        DuplicateConnectionError: ("CONNECTION_EXISTS", "ALREADY_EXISTS"),
        ConnectionOwnershipError: ("CONNECTION_NOT_OWNED", "PERMISSION_DENIED"),
        UnknownConnectionError: ("UNKNOWN_CONNECTION", "NOT_FOUND"),
        ConnectionLimitError: ("CONNECTION_LIMIT", "RESOURCE_EXHAUSTED"),
        RouterUnavailableError: ("ROUTER_UNAVAILABLE", "UNAVAILABLE"),
    }
    for error_class, (code, status) in expected.items():
        assert issubclass(error_class, RouterError)
        assert (error_class.error_code, error_class.grpc_status_name) == (code, status)


async def test_emitters_of_many_users_through_the_router_reach_only_their_user(
    router: InProcessEventRouter,
) -> None:
    replay = MemoryReplayBuffer()
    users = [new_context() for _ in range(20)]
    connections = {ctx.user_id: await connect(router, ctx, 2) for ctx in users}

    async def run(ctx: UserExecutionContext) -> None:
        emitter = RequestEmitter(ctx, delivery=router, replay=replay)
        await emitter.notify_agent_started("assistant")
        await emitter.notify_tool_executing("assistant", "calculator", {"expression": "1+1"})
        await emitter.notify_tool_completed(
            "assistant", "calculator", success=True, result_summary=2
        )
        await emitter.notify_agent_completed("assistant", 2)
        await emitter.close()

    await asyncio.gather(*(run(ctx) for ctx in users))
    for ctx in users:
        for connection in connections[ctx.user_id]:
            received = await frames(connection, 4)
            assert [frame["type"] for frame in received] == [
                "agent_started",
                "tool_executing",
                "tool_completed",
                "agent_completed",
            ]
            assert {frame["run_id"] for frame in received} == {ctx.run_id}
            assert [frame["seq"] for frame in received] == [1, 2, 3, 4]
