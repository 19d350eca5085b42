"""Auth + event router: the router delivers a user's events to the connections that were
authenticated as that user, and to no other.

The router, the emitters and the gateway are in-process infrastructure (no gRPC
interface), so these scenarios run in one composition: the embedded platform, its auth
service verifying real tokens at real WebSocket handshakes on 127.0.0.1, and its
emitters numbering, storing and routing events. Users receive concurrently; every
scenario checks each connection's frames exactly, that the router refused and logged
what it had to, and that no connection or credential is left at the end.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from itests.auth_context.platform import (
    Deployment,
    UserSession,
    open_deployment,
    removal_of,
    wait_removed,
)
from itests.auth_context.sockets import admit, emit_progress, receive
from server.testing import WsClient
from websocket.auth.api import CLOSE_POLICY_VIOLATION
from websocket.auth.testing import ManualClock, ShiftedTime
from websocket.emitter.api import EventDraft, EventEnvelope, EventType
from websocket.router.api import ConnectionOwnershipError

THEME = "auth + event router"

EVENTS = 5


def connection_id(client: WsClient) -> str:
    return str(client.welcome["connection_id"])


def assert_own_run(frames: list[dict[str, Any]], run_id: str, count: int) -> None:
    assert [frame["run_id"] for frame in frames] == [run_id] * count
    assert [frame["seq"] for frame in frames] == list(range(1, count + 1))
    assert {frame["type"] for frame in frames} == {"progress_update"}


async def connect_pair(deployment: Deployment, session: UserSession) -> list[WsClient]:
    """Two connections of one user: one by header, one by subprotocol."""
    url = deployment.gateway.ws_url
    return list(
        await asyncio.gather(
            admit(url, header_token=session.token), admit(url, subprotocol_token=session.token)
        )
    )


async def close_all(*clients: WsClient) -> None:
    for client in clients:
        await client.close()


async def test_events_for_a_user_reach_only_connections_authenticated_as_that_user(
    tmp_path: Path,
) -> None:
    async with open_deployment("inprocess", tmp_path) as deployment:
        users = await deployment.new_users("alice", "bob", "carol", "dave")
        *connected, dave = users
        clients = {
            session.user_id: await connect_pair(deployment, session) for session in connected
        }
        emitters = deployment.platform.emitters
        emitted = await asyncio.gather(
            *(
                emit_progress(emitters, session.user_id, EVENTS, label=session.user_id)
                for session in users
            )
        )
        runs = {ctx.user_id: ctx.run_id for ctx, _ in emitted}
        for session in connected:
            for client in clients[session.user_id]:
                assert client.user_id == session.user_id
                frames = await receive(client, EVENTS)
                assert_own_run(frames, runs[session.user_id], EVENTS)
                text = str(frames)
                for other in users:
                    if other is not session:
                        assert other.user_id not in text
                        assert runs[other.user_id] not in text
                await client.assert_quiet()
        for ctx, stats in emitted:
            reached = 0 if ctx.user_id == dave.user_id else 2 * EVENTS
            assert stats.connections_reached == reached
            assert stats.events_emitted == EVENTS
        assert dict(emitted[-1][1].emitted_by_type) == {"progress_update": EVENTS}
        assert deployment.gateway.router.stats().ownership_refusals == 0
        await close_all(*(client for pair in clients.values() for client in pair))
        await deployment.assert_idle(connections_open=True)


def _draft(envelope: EventEnvelope, step: str) -> EventDraft:
    return EventDraft(
        type=EventType.PROGRESS_UPDATE,
        run_id=envelope.run_id,
        thread_id=envelope.thread_id,
        agent_name=envelope.agent_name,
        timestamp=datetime.now(UTC),
        request_id=envelope.request_id,
        payload={"progress_percentage": 100.0, "current_step": step, "message": ""},
    )


async def test_routing_one_users_event_to_another_users_connection_is_refused_and_logged(
    tmp_path: Path,
) -> None:
    async with open_deployment("inprocess", tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        a1, b1 = await asyncio.gather(
            admit(url, header_token=alice.token), admit(url, header_token=bob.token)
        )
        emitters = deployment.platform.emitters
        await asyncio.gather(
            emit_progress(emitters, alice.user_id, 1, label="alice secret"),
            emit_progress(emitters, bob.user_id, 1, label="bob secret"),
        )
        (alice_frame,), (bob_frame,) = await asyncio.gather(receive(a1, 1), receive(b1, 1))
        alice_event = EventEnvelope.model_validate(alice_frame)
        bob_event = EventEnvelope.model_validate(bob_frame)
        replay = deployment.platform.replay
        # The next event of each run, numbered and stored but not yet delivered.
        alice_next = await replay.append(
            alice.user_id, alice_event.run_id, _draft(alice_event, "alice secret 2")
        )
        bob_next = await replay.append(
            bob.user_id, bob_event.run_id, _draft(bob_event, "bob secret 2")
        )
        router = deployment.gateway.router
        refusals_before = router.stats().ownership_refusals

        async def misroute(user_id: str, target: WsClient, event: EventEnvelope) -> str:
            with pytest.raises(ConnectionOwnershipError) as refused:
                await router.route_event(user_id, connection_id(target), event)
            return refused.value.message

        with capture_logs() as logs:
            to_alice, to_bob, bob_own, alice_own = await asyncio.gather(
                misroute(bob.user_id, a1, bob_next),
                misroute(alice.user_id, b1, alice_next),
                router.route_event(bob.user_id, connection_id(b1), bob_next),
                router.route_event(alice.user_id, connection_id(a1), alice_next),
            )
        assert bob_own is True
        assert alice_own is True
        for message in (to_alice, to_bob):
            assert alice.user_id not in message
            assert bob.user_id not in message
        assert router.stats().ownership_refusals - refusals_before == 2
        refused_logs = [log for log in logs if log["event"] == "router.ownership_refused"]
        assert len(refused_logs) == 2
        for log in refused_logs:
            assert log["security_event"] is True
            assert log["log_level"] == "error"
            assert "payload" not in log
            assert "secret" not in str(log)
        assert {(log["event_user_id"], log["connection_id"]) for log in refused_logs} == {
            (bob.user_id, connection_id(a1)),
            (alice.user_id, connection_id(b1)),
        }
        # Each connection got its own user's next event, and nothing of the other.
        (alice_second,), (bob_second,) = await asyncio.gather(receive(a1, 1), receive(b1, 1))
        assert (alice_second["run_id"], alice_second["seq"]) == (alice_event.run_id, 2)
        assert (bob_second["run_id"], bob_second["seq"]) == (bob_event.run_id, 2)
        assert "bob" not in str(alice_second["payload"])
        assert "alice" not in str(bob_second["payload"])
        await a1.assert_quiet()
        await b1.assert_quiet()
        await close_all(a1, b1)
        await deployment.assert_idle(connections_open=True)


async def test_broadcast_reaches_all_of_a_users_authenticated_connections_and_no_other_users(
    tmp_path: Path,
) -> None:
    async with open_deployment("inprocess", tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        alice_clients = [
            *await connect_pair(deployment, alice),
            await admit(url, header_token=alice.token),
        ]
        bob_clients = await connect_pair(deployment, bob)
        starter_a, starter_b = alice_clients[0], bob_clients[1]
        alice_run, bob_run = await asyncio.gather(
            starter_a.start("assistant", "remember that alice broadcasts; what is 7*6"),
            starter_b.start("assistant", "remember that bob broadcasts; what is 6*7"),
        )
        alice_seen = await asyncio.gather(
            *(client.events_until_end(alice_run["run_id"]) for client in alice_clients)
        )
        bob_seen = await asyncio.gather(
            *(client.events_until_end(bob_run["run_id"]) for client in bob_clients)
        )
        for seen, run in ((alice_seen, alice_run), (bob_seen, bob_run)):
            first = seen[0]
            assert [frame["seq"] for frame in first] == list(range(1, len(first) + 1))
            assert first[-1]["type"] == "agent_completed"
            assert all(frames == first for frames in seen)  # every connection, the same run
            assert {frame["thread_id"] for frame in first} == {run["thread_id"]}
        for client in alice_clients + bob_clients:
            await client.assert_quiet()

        # A broadcast straight from an emitter: each event reaches all three of Alice's.
        ctx, stats = await emit_progress(
            deployment.platform.emitters, alice.user_id, EVENTS, label="broadcast"
        )
        assert stats.connections_reached == 3 * EVENTS
        for client in alice_clients:
            assert_own_run(await receive(client, EVENTS), ctx.run_id, EVENTS)
        for client in alice_clients + bob_clients:
            await client.assert_quiet()
        assert await alice.notes() == ["alice broadcasts"]
        assert await bob.notes() == ["bob broadcasts"]
        await close_all(*alice_clients, *bob_clients)
        await deployment.assert_idle(connections_open=True)


async def test_an_expired_connection_is_closed_while_other_users_keep_receiving_events(
    tmp_path: Path,
) -> None:
    issued = ShiftedTime()
    clock = ManualClock(time.time())
    async with open_deployment(
        "inprocess", tmp_path, auth_clock=issued, ws_clock=clock
    ) as deployment:
        settings = deployment.platform.settings
        ttl = 15 * 60
        issued.offset = -600.0  # Alice's token was issued ten minutes ago
        alice = await deployment.new_user("alice")
        issued.offset = 0.0
        bob = await deployment.new_user("bob")
        url = deployment.gateway.ws_url
        a1, b1, b2 = await asyncio.gather(
            admit(url, header_token=alice.token),
            admit(url, header_token=bob.token),
            admit(url, subprotocol_token=bob.token),
        )
        assert settings.max_connections_per_user >= 2
        expired = removal_of(deployment.gateway.router, connection_id(a1))
        # Past Alice's expiry and grace (she had ttl - 600 s left), well before Bob's warning.
        clock.set(clock.now() + (ttl - 600) + 100)

        async def alice_is_told() -> tuple[dict[str, Any], dict[str, Any], int | None]:
            warning = await a1.recv()
            error = await a1.recv()
            return warning, error, await a1.closed()

        emitters = deployment.platform.emitters
        (warning, error, code), (bob_ctx, _) = await asyncio.gather(
            alice_is_told(), emit_progress(emitters, bob.user_id, EVENTS, label="bob")
        )
        assert warning["type"] == "token_expiring"
        assert error["type"] == "authentication_error"
        assert error["error_code"] == "TOKEN_EXPIRED"
        assert code == CLOSE_POLICY_VIOLATION
        for client in (b1, b2):
            assert_own_run(await receive(client, EVENTS), bob_ctx.run_id, EVENTS)
        await wait_removed(expired, "the expired connection leaves the router")
        assert deployment.gateway.router.connections_of(alice.user_id) == []
        # Afterwards Alice's events reach no one, and Bob's keep flowing.
        (alice_ctx, alice_stats), (bob_ctx2, bob_stats) = await asyncio.gather(
            emit_progress(emitters, alice.user_id, EVENTS, label="alice"),
            emit_progress(emitters, bob.user_id, EVENTS, label="bob again"),
        )
        assert alice_stats.connections_reached == 0
        assert bob_stats.connections_reached == 2 * EVENTS
        for client in (b1, b2):
            frames = await receive(client, EVENTS)
            assert_own_run(frames, bob_ctx2.run_id, EVENTS)
            assert alice_ctx.run_id not in str(frames)
            await client.assert_quiet()  # and no token_expiring for Bob
        await close_all(a1, b1, b2)
        await deployment.assert_idle(connections_open=True)


async def test_unregistering_one_users_connections_leaves_other_users_routing_intact(
    tmp_path: Path,
) -> None:
    async with open_deployment("inprocess", tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        alice_clients = await connect_pair(deployment, alice)
        bob_clients = await connect_pair(deployment, bob)
        router = deployment.gateway.router
        emitters = deployment.platform.emitters

        async def unregister_alice() -> list[bool]:
            return [await router.unregister(connection_id(c)) for c in alice_clients]

        removed, (bob_ctx, bob_stats) = await asyncio.gather(
            unregister_alice(), emit_progress(emitters, bob.user_id, EVENTS, label="bob")
        )
        assert removed == [True, True]
        assert router.connections_of(alice.user_id) == []
        assert {info.connection_id for info in router.connections_of(bob.user_id)} == {
            connection_id(client) for client in bob_clients
        }
        assert bob_stats.connections_reached == 2 * EVENTS
        for client in bob_clients:
            assert_own_run(await receive(client, EVENTS), bob_ctx.run_id, EVENTS)

        (alice_ctx, alice_stats), (bob_ctx2, bob_stats2) = await asyncio.gather(
            emit_progress(emitters, alice.user_id, EVENTS, label="alice"),
            emit_progress(emitters, bob.user_id, EVENTS, label="bob again"),
        )
        assert alice_stats.connections_reached == 0
        assert alice_stats.events_without_listener == EVENTS
        assert bob_stats2.connections_reached == 2 * EVENTS
        for client in bob_clients:
            frames = await receive(client, EVENTS)
            assert_own_run(frames, bob_ctx2.run_id, EVENTS)
            assert alice_ctx.run_id not in str(frames)
        # Alice's sockets are still open, but no event is routed to them any more.
        for client in alice_clients + bob_clients:
            await client.assert_quiet()
        assert await router.unregister(connection_id(alice_clients[0])) is False
        await close_all(*alice_clients, *bob_clients)
        await deployment.assert_idle(connections_open=True)
