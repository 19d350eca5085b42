"""Multi-user WebSocket isolation: what one user's connections do never reaches the others.

Scenarios with agent runs run in both compositions; the ones about the gateway's own
connection handling (slow consumers, oversized frames, floods) run on the in-process
platform, feeding the connections through the platform's real emitters.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from context.api import UserExecutionContext
from itests.websocket_events.deployment import Account, composition, deploy, eventually
from itests.websocket_events.outside_llm import Gate, Step, scripted_llm
from itests.websocket_events.wsclient import (
    Frame,
    ProtocolClient,
    assert_complete_run,
    assert_never_mentioned,
    connect_with_token,
    slow_socket,
)
from websocket.emitter.api import UserWebSocketEmitter

__all__ = ["composition"]  # the fixture, imported for pytest

THEME = "multi-user WebSocket isolation"

AGENT = "streamer"


async def emit_progress(emitter: UserWebSocketEmitter, count: int) -> None:
    for step in range(count):
        assert await emitter.notify_progress_update(AGENT, step, f"step {step}")


def others_footprint(users: list[Account], user: Account, *extra: set[str]) -> set[str]:
    forbidden: set[str] = set()
    for other in users:
        if other is not user:
            forbidden |= other.footprint()
    for more in extra:
        forbidden |= more
    return forbidden


async def test_many_users_with_three_connections_each_receive_exactly_their_own_events(
    tmp_path: Path, composition: str
) -> None:
    async with deploy(tmp_path, composition) as d:
        users = await d.accounts_named(*(f"user{index}" for index in range(8)))
        connections = dict(
            zip(
                (u.user_id for u in users),
                await asyncio.gather(*(d.connect_many(u, 3) for u in users)),
                strict=True,
            )
        )
        markers = {u.user_id: f"own-{u.name}-{secrets.token_hex(4)}" for u in users}

        async def run(index: int, user: Account) -> str:
            starter, *_ = connections[user.user_id]
            accepted = await starter.start(
                "assistant", f"remember that {markers[user.user_id]}; what is {index}+{index}"
            )
            run_id = str(accepted["run_id"])
            seen = [await client.events_of(run_id) for client in connections[user.user_id]]
            assert_complete_run(seen[0], run_id)
            for other in seen[1:]:
                assert [(e["seq"], e["type"]) for e in other] == [
                    (e["seq"], e["type"]) for e in seen[0]
                ]
            return run_id

        run_ids = dict(
            zip(
                (u.user_id for u in users),
                await asyncio.gather(*(run(i, u) for i, u in enumerate(users))),
                strict=True,
            )
        )
        for user in users:
            for client in connections[user.user_id]:
                await client.assert_quiet()
                # Exactly one run's events: the user's own.
                assert {f["run_id"] for f in client.frames if "seq" in f} == {run_ids[user.user_id]}
            others = {
                text
                for other in users
                if other is not user
                for text in (markers[other.user_id], run_ids[other.user_id])
            }
            assert_never_mentioned(connections[user.user_id], others_footprint(users, user, others))
        await d.assert_idle()


async def test_a_slow_consumer_does_not_delay_other_users(tmp_path: Path) -> None:
    async with deploy(tmp_path) as d:
        alice, bob, carol = await d.accounts_named("alice", "bob", "carol")
        # Alice's connection reads nothing and has a tiny TCP receive buffer.
        sock = await slow_socket(d.gateway.address)
        slow = await connect_with_token(
            d.ws_url, alice.access_token, sock=sock, max_queue=1, compression=None
        )
        welcome = json.loads(await slow.recv())
        assert welcome["user_id"] == alice.user_id
        fast = {u.user_id: await d.connect(u) for u in (bob, carol)}
        alice_ctx = UserExecutionContext.from_request(alice.user_id)
        flood = d.emitters.create_emitter(alice_ctx)
        bulk = {f"field{index}": secrets.token_hex(995) for index in range(7)}  # ~14 KB
        emitted = 0

        async def flood_until(done: Callable[[], bool], what: str) -> None:
            nonlocal emitted
            while not done():
                assert emitted < 900, f"{what}: not after {emitted} events"
                for _ in range(10):
                    assert await flood.notify_tool_executing(AGENT, "bulk.load", bulk)
                    emitted += 1
                await asyncio.sleep(0)  # let the connections' senders run

        def alice_connection_queued() -> int:
            [info] = d.router.connections_of(alice.user_id)
            return info.queued

        # Alice's socket fills up: her events queue behind it.
        await flood_until(lambda: alice_connection_queued() >= 100, "alice's socket to block")
        [stuck] = d.router.connections_of(alice.user_id)

        # Meanwhile Bob and Carol are served in full, at once.
        fast_contexts = {
            u.user_id: UserExecutionContext.from_request(u.user_id) for u in (bob, carol)
        }
        fast_emitters = {
            user_id: d.emitters.create_emitter(ctx) for user_id, ctx in fast_contexts.items()
        }

        async def served(user: Account) -> list[Frame]:
            emitter = fast_emitters[user.user_id]
            await emit_progress(emitter, 30)
            events = await fast[user.user_id].take(fast_contexts[user.user_id].run_id, 30)
            assert [e["seq"] for e in events] == list(range(1, 31))
            return events

        await asyncio.gather(served(bob), served(carol))
        [still] = d.router.connections_of(alice.user_id)
        assert still.connection_id == stuck.connection_id
        assert still.events_sent == stuck.events_sent  # nothing of hers moved meanwhile
        assert still.queued >= stuck.queued
        assert d.router.stats().slow_consumer_closes == 0

        # Alice's queue overflows: only her connection is closed, as a slow consumer.
        await flood_until(
            lambda: d.router.stats().slow_consumer_closes == 1, "the slow consumer to be closed"
        )
        await flood.close()
        received: list[int] = []
        try:
            async for raw in slow:
                received.append(json.loads(raw)["seq"])
        except ConnectionClosed:
            pass
        assert slow.close_code == 1013
        assert received == list(range(1, len(received) + 1))
        assert len(received) < emitted

        # Nothing is lost: a new connection resumes where the slow one stopped.
        again = await d.connect(alice)
        await again.send({"type": "resume", "run_id": alice_ctx.run_id, "after_seq": len(received)})
        rest = await again.take(alice_ctx.run_id, emitted - len(received))
        assert [e["seq"] for e in rest] == list(range(len(received) + 1, emitted + 1))
        await again.assert_quiet()
        for user in (bob, carol):
            await fast[user.user_id].assert_quiet()
            await fast_emitters[user.user_id].close()
        assert d.router.stats().slow_consumer_closes == 1
        assert_never_mentioned(
            fast.values(), alice.footprint() | {alice_ctx.run_id, bulk["field0"]}
        )
        assert_never_mentioned(
            [fast[bob.user_id]], carol.footprint() | {fast_contexts[carol.user_id].run_id}
        )
        assert_never_mentioned(
            [fast[carol.user_id]], bob.footprint() | {fast_contexts[bob.user_id].run_id}
        )
        await d.assert_idle()


async def test_an_oversized_frame_closes_only_the_offending_connection(tmp_path: Path) -> None:
    async with deploy(tmp_path) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        offender, alice_other = await d.connect_many(alice, 2)
        bob_ws = await d.connect(bob)
        limit = d.gateway.settings.max_frame_bytes
        oversized = json.dumps({"type": "ping", "padding": secrets.token_hex(limit)})
        assert len(oversized) > limit

        async def offend() -> int | None:
            await offender.send_text(oversized)
            code, _ = await offender.closed_by_server()
            return code

        async def bob_chats() -> None:
            for _ in range(5):
                await bob_ws.assert_quiet()

        code, _ = await asyncio.gather(offend(), bob_chats())
        assert code == 1009
        await eventually(
            lambda: len(d.router.connections_of(alice.user_id)) == 1,
            what="the offending connection to leave the router",
        )
        # Alice's other connection and Bob's keep receiving their own events.
        contexts = {u.user_id: UserExecutionContext.from_request(u.user_id) for u in (alice, bob)}
        for user in (alice, bob):
            emitter = d.emitters.create_emitter(contexts[user.user_id])
            await emit_progress(emitter, 3)
            await emitter.close()
        for client, user in ((alice_other, alice), (bob_ws, bob)):
            events = await client.take(contexts[user.user_id].run_id, 3)
            assert [e["seq"] for e in events] == [1, 2, 3]
            await client.assert_quiet()
        assert [info.connection_id for info in d.router.connections_of(alice.user_id)] == [
            alice_other.connection_id
        ]
        assert_never_mentioned([bob_ws], alice.footprint() | {contexts[alice.user_id].run_id})
        assert offender.frames == [offender.welcome]  # closed before anything reached it
        assert_never_mentioned([alice_other], bob.footprint() | {contexts[bob.user_id].run_id})
        await d.assert_idle()


async def test_a_message_flood_closes_only_the_flooding_connection(tmp_path: Path) -> None:
    async with deploy(tmp_path, gateway={"message_rate_limit": "10/second;100/minute"}) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        flooder, alice_other = await d.connect_many(alice, 2)
        bob_ws = await d.connect(bob)

        async def flood() -> tuple[int | None, list[Frame]]:
            try:
                for _ in range(40):
                    await flooder.send({"type": "ping"})
            except ConnectionClosed:
                pass
            return await flooder.closed_by_server()

        async def behave(client: ProtocolClient) -> None:
            for _ in range(5):
                await client.assert_quiet()

        (code, frames), _, _ = await asyncio.gather(flood(), behave(alice_other), behave(bob_ws))
        assert code == 1013
        assert frames[-1]["type"] == "error"
        assert frames[-1]["error_code"] == "RATE_LIMITED"
        assert frames[:-1] == [{"type": "pong"}] * 10
        await eventually(
            lambda: len(d.router.connections_of(alice.user_id)) == 1,
            what="the flooding connection to leave the router",
        )
        contexts = {u.user_id: UserExecutionContext.from_request(u.user_id) for u in (alice, bob)}
        for user in (alice, bob):
            emitter = d.emitters.create_emitter(contexts[user.user_id])
            await emit_progress(emitter, 2)
            await emitter.close()
        for client, user in ((alice_other, alice), (bob_ws, bob)):
            assert [e["seq"] for e in await client.take(contexts[user.user_id].run_id, 2)] == [1, 2]
            await client.assert_quiet()
        assert_never_mentioned([bob_ws], alice.footprint() | {contexts[alice.user_id].run_id})
        assert_never_mentioned(
            [alice_other, flooder], bob.footprint() | {contexts[bob.user_id].run_id}
        )
        await d.assert_idle()


async def test_one_user_disconnecting_does_not_disturb_the_others(
    tmp_path: Path, composition: str
) -> None:
    async with scripted_llm() as llm, deploy(tmp_path, composition, llm=llm) as d:
        alice, bob, carol = await d.accounts_named("alice", "bob", "carol")
        alice_connections = await d.connect_many(alice, 2)
        others = {u.user_id: await d.connect(u) for u in (bob, carol)}
        gates: dict[str, Gate] = {}
        markers: dict[str, str] = {}
        for user in (alice, bob, carol):
            markers[user.user_id] = f"think-{user.name}-{secrets.token_hex(4)}"
            gates[user.user_id] = Gate()
            llm.script(
                markers[user.user_id],
                Step(text=f"answer for {user.name}", gate=gates[user.user_id]),
            )

        async def start(user: Account, client: ProtocolClient) -> str:
            accepted = await client.start("assistant", f"please {markers[user.user_id]}")
            await gates[user.user_id].wait_entered()
            return str(accepted["run_id"])

        alice_run, bob_run, carol_run = await asyncio.gather(
            start(alice, alice_connections[0]),
            start(bob, others[bob.user_id]),
            start(carol, others[carol.user_id]),
        )
        # Alice's network goes away, mid-run, without a closing handshake.
        for client in alice_connections:
            client.drop()
        await eventually(
            lambda: not d.router.connections_of(alice.user_id),
            what="Alice's dropped connections to leave the router",
        )
        for gate in gates.values():
            gate.open()

        async def finish(user: Account, run_id: str) -> None:
            client = others[user.user_id]
            assert_complete_run(await client.events_of(run_id), run_id)
            await client.assert_quiet()

        await asyncio.gather(finish(bob, bob_run), finish(carol, carol_run))
        # Alice's run was not disturbed either: it completed, and its events are kept.
        assert (await d.recorded_run(alice, alice_run)).state.value == "completed"
        assert await d.replay.last_seq(alice.user_id, alice_run) == 3
        for user in (bob, carol):
            assert_never_mentioned(
                [others[user.user_id]],
                others_footprint([alice, bob, carol], user, {alice_run, markers[alice.user_id]}),
            )
        assert_never_mentioned([others[bob.user_id]], {carol_run, markers[carol.user_id]})
        assert_never_mentioned([others[carol.user_id]], {bob_run, markers[bob.user_id]})
        await d.assert_idle()
