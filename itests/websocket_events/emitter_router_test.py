"""Emitter + router: per-request emitters feed the router, which feeds real connections.

The platform runs in process (the emitter, replay buffer, router and gateway are
in-process infrastructure with no gRPC interface); each user holds real WebSocket
connections authenticated by the real auth service, and events are emitted through
emitters made by the platform's own factory for contexts of concurrent users.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from context.api import UserExecutionContext, context_scope, new_run_id
from itests.websocket_events.deployment import Account, deploy
from itests.websocket_events.wsclient import (
    assert_never_mentioned,
    event_types,
)
from websocket.emitter.api import ReplayNotFoundError, UserWebSocketEmitter

THEME = "emitter + router"

AGENT = "researcher"


async def emit_run(emitter: UserWebSocketEmitter, marker: str, steps: int = 3) -> int:
    """A run's worth of events (started, ``steps`` thoughts, completed); how many."""
    assert await emitter.notify_agent_started(AGENT, message=f"started {marker}")
    for step in range(1, steps + 1):
        assert await emitter.notify_agent_thinking(AGENT, f"{marker} thought {step}", step=step)
    assert await emitter.notify_agent_completed(AGENT, {"answer": marker})
    return steps + 2


async def test_each_users_emitter_delivers_only_to_that_users_connections(
    tmp_path: Path,
) -> None:
    async with deploy(tmp_path) as d:
        users = await d.accounts_named("alice", "bob", "carol", "dave")
        connections = {u.user_id: await d.connect_many(u, 2) for u in users}
        contexts = {u.user_id: UserExecutionContext.from_request(u.user_id) for u in users}
        emitters = {u.user_id: d.emitters.create_emitter(contexts[u.user_id]) for u in users}
        markers = {u.user_id: f"marker-{u.name}-{secrets.token_hex(4)}" for u in users}

        counts = await asyncio.gather(
            *(emit_run(emitters[u.user_id], markers[u.user_id]) for u in users)
        )

        async def received(user: Account) -> None:
            run_id = contexts[user.user_id].run_id
            for client in connections[user.user_id]:
                events = await client.events_of(run_id)
                assert [event["seq"] for event in events] == list(range(1, 6))
                assert event_types(events) == [
                    "agent_started",
                    *["agent_thinking"] * 3,
                    "agent_completed",
                ]
                assert {event["thread_id"] for event in events} == {
                    contexts[user.user_id].thread_id
                }
                assert events[-1]["payload"]["result"] == {"answer": markers[user.user_id]}
                await client.assert_quiet()

        await asyncio.gather(*(received(u) for u in users))
        assert counts == [5] * len(users)
        for user in users:
            stats = emitters[user.user_id].stats()
            assert stats.events_emitted == 5
            assert stats.connections_reached == 5 * 2  # each event reached both connections

        # An emitter that leaked into another user's request refuses to emit there.
        alice, bob = users[0], users[1]
        with context_scope(contexts[bob.user_id]):
            leaked = await emitters[alice.user_id].notify_agent_thinking(AGENT, "leaked")
        assert leaked is False
        assert emitters[alice.user_id].stats().errors_by_code == {"EVENT_OWNERSHIP_VIOLATION": 1}
        for client in (*connections[alice.user_id], *connections[bob.user_id]):
            await client.assert_quiet()

        for user in users:
            others = [other for other in users if other is not user]
            forbidden = {markers[o.user_id] for o in others}
            forbidden |= {contexts[o.user_id].run_id for o in others}
            forbidden |= {contexts[o.user_id].thread_id for o in others}
            for other in others:
                forbidden |= other.footprint()
            assert_never_mentioned(connections[user.user_id], forbidden)
        for emitter in emitters.values():
            await emitter.close()
        await d.assert_idle()


async def test_concurrent_emits_of_many_runs_are_numbered_gaplessly_per_run(
    tmp_path: Path,
) -> None:
    runs_per_user = 4
    events_per_run = 20
    async with deploy(tmp_path) as d:
        users = await d.accounts_named("alice", "bob", "carol")
        clients = {u.user_id: await d.connect(u) for u in users}
        contexts = {
            u.user_id: [UserExecutionContext.from_request(u.user_id) for _ in range(runs_per_user)]
            for u in users
        }
        emitters = [
            (u, d.emitters.create_emitter(ctx)) for u in users for ctx in contexts[u.user_id]
        ]

        async def burst(emitter: UserWebSocketEmitter) -> list[bool]:
            # Every event of the run is emitted at once, from its own task.
            return list(
                await asyncio.gather(
                    *(
                        emitter.notify_progress_update(AGENT, step * 5, f"step {step}")
                        for step in range(events_per_run)
                    )
                )
            )

        outcomes = await asyncio.gather(*(burst(emitter) for _, emitter in emitters))
        assert all(all(accepted) for accepted in outcomes)

        async def check(user: Account) -> None:
            client = clients[user.user_id]
            for ctx in contexts[user.user_id]:
                events = await client.take(ctx.run_id, events_per_run)
                # On the wire: 1..n, in order, each number once.
                assert [event["seq"] for event in events] == list(range(1, events_per_run + 1))
                assert {event["request_id"] for event in events} == {ctx.request_id}
                # In the replay buffer: the same numbers for the same events.
                stored = await d.replay.read_after(user.user_id, ctx.run_id, 0)
                assert [envelope.seq for envelope in stored] == list(range(1, events_per_run + 1))
                assert [e.payload["current_step"] for e in stored] == [
                    event["payload"]["current_step"] for event in events
                ]
                assert await d.replay.last_seq(user.user_id, ctx.run_id) == events_per_run
            await client.assert_quiet()

        await asyncio.gather(*(check(u) for u in users))
        for _, emitter in emitters:
            assert emitter.stats().last_seq == events_per_run
            await emitter.close()
        for user in users:
            others = [o for o in users if o is not user]
            forbidden = {ctx.run_id for o in others for ctx in contexts[o.user_id]}
            for other in others:
                forbidden |= other.footprint()
            assert_never_mentioned([clients[user.user_id]], forbidden)
        await d.assert_idle()


async def test_secrets_in_payloads_are_redacted_before_any_connection_sees_them(
    tmp_path: Path,
) -> None:
    async with deploy(tmp_path) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        connections = {u.user_id: await d.connect_many(u, 2) for u in (alice, bob)}
        contexts = {u.user_id: UserExecutionContext.from_request(u.user_id) for u in (alice, bob)}
        planted: dict[str, list[str]] = {}

        async def emit_secrets(user: Account) -> None:
            api_key = f"sk-{secrets.token_urlsafe(30)}"
            password = secrets.token_urlsafe(16)
            bearer = secrets.token_urlsafe(24)
            session = secrets.token_hex(16)
            planted[user.user_id] = [api_key, password, bearer, session, user.access_token]
            emitter = d.emitters.create_emitter(contexts[user.user_id])
            assert await emitter.notify_agent_started(AGENT)
            assert await emitter.notify_agent_thinking(
                AGENT, f"calling with my token {user.access_token} for {user.name}"
            )
            assert await emitter.notify_tool_executing(
                AGENT,
                "http.get",
                {
                    "query": f"weather for {user.name}",
                    "api_key": api_key,
                    "password": password,
                    "headers": {"Authorization": f"Bearer {bearer}"},
                },
            )
            assert await emitter.notify_tool_completed(
                AGENT, "http.get", success=True, result_summary={"session_id": session, "rows": 3}
            )
            assert await emitter.notify_agent_completed(
                AGENT, f"done for {user.name}, used key {api_key}"
            )
            await emitter.close()

        await asyncio.gather(emit_secrets(alice), emit_secrets(bob))

        async def check(user: Account) -> None:
            run_id = contexts[user.user_id].run_id
            for client in connections[user.user_id]:
                events = await client.events_of(run_id)
                assert event_types(events) == [
                    "agent_started",
                    "agent_thinking",
                    "tool_executing",
                    "tool_completed",
                    "agent_completed",
                ]
                thought = events[1]["payload"]["thought"]
                assert thought.startswith("calling with my token ")
                assert "[REDACTED]" in thought
                assert events[2]["payload"]["tool_input"] == {
                    "query": f"weather for {user.name}",
                    "api_key": "[REDACTED]",
                    "password": "[REDACTED]",
                    "headers": {"Authorization": "[REDACTED]"},
                }
                assert events[3]["payload"]["result_summary"] == {
                    "session_id": "[REDACTED]",
                    "rows": 3,
                }
                assert "[REDACTED]" in events[4]["payload"]["result"]
                await client.assert_quiet()
            # What the replay buffer keeps (and would resend) is the redacted form too.
            stored = await d.replay.read_after(user.user_id, run_id, 0)
            assert len(stored) == 5
            for envelope in stored:
                text = envelope.to_json()
                assert not [s for s in planted[user.user_id] if s in text]

        await asyncio.gather(check(alice), check(bob))
        every_secret = planted[alice.user_id] + planted[bob.user_id]
        all_clients = connections[alice.user_id] + connections[bob.user_id]
        assert_never_mentioned(all_clients, every_secret, whose="a secret")
        assert_never_mentioned(connections[alice.user_id], bob.footprint() | {"bob"})
        assert_never_mentioned(connections[bob.user_id], alice.footprint() | {"alice"})
        await d.assert_idle()


async def test_one_user_cannot_read_another_users_replay_buffer(tmp_path: Path) -> None:
    async with deploy(tmp_path) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        live = {u.user_id: await d.connect(u) for u in (alice, bob)}
        contexts = {u.user_id: UserExecutionContext.from_request(u.user_id) for u in (alice, bob)}
        markers = {u.user_id: f"private-{u.name}-{secrets.token_hex(4)}" for u in (alice, bob)}
        emitters = {u.user_id: d.emitters.create_emitter(contexts[u.user_id]) for u in (alice, bob)}
        await asyncio.gather(
            *(emit_run(emitters[u.user_id], markers[u.user_id]) for u in (alice, bob))
        )
        for user in (alice, bob):
            await live[user.user_id].events_of(contexts[user.user_id].run_id)
        readers = {u.user_id: await d.connect(u) for u in (alice, bob)}
        never_existed = new_run_id()

        async def attempt(user: Account, victim: Account) -> None:
            reader = readers[user.user_id]
            victims_run = contexts[victim.user_id].run_id
            stolen = await reader.request_error(
                {"type": "resume", "run_id": victims_run, "after_seq": 0}
            )
            unknown = await reader.request_error(
                {"type": "resume", "run_id": never_existed, "after_seq": 0}
            )
            # Another user's run and a run that never existed get the same answer.
            assert stolen == unknown
            assert stolen["error_code"] == "RUN_NOT_FOUND"
            # The user's own run is there, complete.
            await reader.send(
                {"type": "resume", "run_id": contexts[user.user_id].run_id, "after_seq": 0}
            )
            own = await reader.events_of(contexts[user.user_id].run_id)
            assert [event["seq"] for event in own] == [1, 2, 3, 4, 5]
            assert own[-1]["payload"]["result"] == {"answer": markers[user.user_id]}
            await reader.assert_quiet()
            # The buffer itself answers the same way to a direct read.
            try:
                await d.replay.read_after(user.user_id, victims_run, 0)
            except ReplayNotFoundError:
                pass
            else:
                raise AssertionError("read another user's run from the replay buffer")
            assert await d.replay.last_seq(user.user_id, victims_run) == 0

        await asyncio.gather(attempt(alice, bob), attempt(bob, alice))
        for user, other in ((alice, bob), (bob, alice)):
            forbidden = other.footprint() | {
                markers[other.user_id],
                contexts[other.user_id].run_id,
                contexts[other.user_id].thread_id,
            }
            assert_never_mentioned([live[user.user_id], readers[user.user_id]], forbidden)
            assert await d.replay.last_seq(other.user_id, contexts[other.user_id].run_id) == 5
        await d.assert_idle()


async def test_a_closed_emitter_delivers_nothing_further(tmp_path: Path) -> None:
    async with deploy(tmp_path) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        alice_ws, bob_ws = await d.connect(alice), await d.connect(bob)
        alice_ctx = UserExecutionContext.from_request(alice.user_id)
        bob_ctx = UserExecutionContext.from_request(bob.user_id)
        alice_emitter = d.emitters.create_emitter(alice_ctx)
        bob_emitter = d.emitters.create_emitter(bob_ctx)

        assert await alice_emitter.notify_agent_started(AGENT)
        assert await alice_emitter.notify_agent_thinking(AGENT, "before close", step=1)
        await alice_emitter.close()
        assert alice_emitter.closed

        async def after_close() -> list[bool]:
            return [
                await alice_emitter.notify_agent_thinking(AGENT, "after close", step=2),
                await alice_emitter.notify_tool_executing(AGENT, "calculator", {"x": 1}),
                await alice_emitter.notify_agent_completed(AGENT, "late"),
            ]

        refused, bob_count = await asyncio.gather(after_close(), emit_run(bob_emitter, "bob-run"))
        assert refused == [False, False, False]
        stats = alice_emitter.stats()
        assert (stats.events_emitted, stats.events_refused, stats.last_seq) == (2, 3, 2)
        assert stats.errors_by_code == {"EMITTER_CLOSED": 3}
        assert await d.replay.last_seq(alice.user_id, alice_ctx.run_id) == 2

        # Alice's connection got exactly what was emitted before the close...
        got = [await alice_ws.next(), await alice_ws.next()]
        assert event_types(got) == ["agent_started", "agent_thinking"]
        assert [event["seq"] for event in got] == [1, 2]
        await alice_ws.assert_quiet()
        # ...while Bob's open emitter delivered its whole run.
        bob_events = await bob_ws.events_of(bob_ctx.run_id)
        assert [event["seq"] for event in bob_events] == list(range(1, bob_count + 1))
        await bob_ws.assert_quiet()

        # Closing one request's emitter leaves the user's next request unaffected.
        next_ctx = UserExecutionContext.from_request(alice.user_id)
        next_emitter = d.emitters.create_emitter(next_ctx)
        assert await next_emitter.notify_agent_started(AGENT)
        started = await alice_ws.next()
        assert (started["run_id"], started["seq"]) == (next_ctx.run_id, 1)
        await next_emitter.close()
        await bob_emitter.close()

        assert_never_mentioned([alice_ws], bob.footprint() | {bob_ctx.run_id, "bob-run"})
        assert_never_mentioned([bob_ws], alice.footprint() | {alice_ctx.run_id, next_ctx.run_id})
        await d.assert_idle()
