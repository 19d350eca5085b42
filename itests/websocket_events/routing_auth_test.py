"""Routing with authentication: live connections whose tokens expire and are refreshed,
connections that drop and resume, and users spread over gateway nodes that share Redis.

Every scenario runs in both compositions. Token expiry is driven by a manual clock for the
gateway's expiry protocol and a shifted clock for the auth service (tokens issued and
verified "later"), so no scenario waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from context.api import new_run_id
from itests.harness import RedisServer
from itests.websocket_events.deployment import Account, composition, deploy, eventually
from itests.websocket_events.outside_llm import Gate, Step, scripted_llm
from itests.websocket_events.wsclient import (
    Frame,
    ProtocolClient,
    assert_complete_run,
    assert_never_mentioned,
)
from websocket.auth.testing import ManualClock, ShiftedTime

__all__ = ["composition"]  # the fixture, imported for pytest

THEME = "routing with authentication"

#: The access tokens' lifetime, and the expiry protocol's warning and grace periods.
ACCESS_TTL = 900
WARNING = 60
GRACE = 30
EXPIRY: dict[str, Any] = {"expiry_warning_seconds": WARNING, "expiry_grace_seconds": GRACE}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for this module; each scenario empties it before use."""
    with RedisServer() as server:
        yield server


class Clocks:
    """The gateway's expiry clock (it moves only when told) and the auth service's clock
    (real time, shifted), kept together: the auth service issues and verifies tokens at
    the gateway's idea of now."""

    def __init__(self) -> None:
        self.ws = ManualClock(time.time())
        self.auth = ShiftedTime()

    def move_to(self, when: float) -> None:
        self.auth.offset = when - time.time()
        self.ws.set(when)

    async def watchers_waiting(self, count: int) -> None:
        """Until ``count`` connections' expiry watchers wait for their next deadline."""
        await eventually(lambda: self.ws.sleepers >= count, what=f"{count} expiry watchers")


def expiry_of(token: str) -> float:
    """The ``exp`` claim of one of our own access tokens (read, not verified)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return float(claims["exp"])


def assert_expires_in(frame: Frame, token: str, clocks: Clocks) -> None:
    """``expires_in`` of a token_expiring / token_refreshed frame is ``token``'s."""
    assert abs(frame["expires_in"] - (expiry_of(token) - clocks.ws.now())) <= 1, frame


async def refresh(client: ProtocolClient, token: str) -> Frame:
    await client.send({"type": "refresh_token", "access_token": token})
    return await client.next_of_type("token_refreshed", "error", "authentication_error")


async def run_to_end(client: ProtocolClient, message: str) -> tuple[str, list[Frame]]:
    accepted = await client.start("assistant", message)
    run_id = str(accepted["run_id"])
    events = await client.events_of(run_id)
    assert_complete_run(events, run_id)
    return run_id, events


async def test_a_token_about_to_expire_gets_token_expiring_and_a_same_user_refresh_keeps_the_connection(  # noqa: E501
    tmp_path: Path, composition: str
) -> None:
    clocks = Clocks()
    async with deploy(
        tmp_path,
        composition,
        ws_clock=clocks.ws,
        auth_clock=clocks.auth,
        auth={"access_ttl_seconds": ACCESS_TTL},
        ws_auth=EXPIRY,
    ) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        clients = {u.user_id: await d.connect(u) for u in (alice, bob)}
        await clocks.watchers_waiting(2)
        expiry = max(expiry_of(u.access_token) for u in (alice, bob))

        clocks.move_to(expiry - WARNING + 1)  # both tokens are about to expire
        warnings = await asyncio.gather(
            *(clients[u.user_id].next_of_type("token_expiring") for u in (alice, bob))
        )
        for user, warning in zip((alice, bob), warnings, strict=True):
            assert 0 < warning["expires_in"] <= WARNING
            assert_expires_in(warning, user.access_token, clocks)

        async def renew(user: Account) -> str:
            client = clients[user.user_id]
            fresh = await d.login(user)
            # A damaged token changes nothing: an error, and the connection stays.
            damaged = fresh[:-6] + ("A" * 6 if not fresh.endswith("A" * 6) else "B" * 6)
            rejected = await refresh(client, damaged)
            assert rejected["type"] == "error", rejected
            await client.assert_quiet()
            refreshed = await refresh(client, fresh)
            assert refreshed["type"] == "token_refreshed", refreshed
            assert_expires_in(refreshed, fresh, clocks)
            assert refreshed["expires_in"] > ACCESS_TTL - WARNING
            return fresh

        await asyncio.gather(renew(alice), renew(bob))
        await clocks.watchers_waiting(2)

        # Well past the old tokens' expiry and grace: both connections are still served,
        # and runs now start with the refreshed tokens (the old ones would be refused).
        clocks.move_to(expiry + GRACE + 60)
        await clocks.watchers_waiting(2)
        for client in clients.values():
            await client.assert_quiet()
        (alice_run, _), (bob_run, _) = await asyncio.gather(
            run_to_end(clients[alice.user_id], "what is 5*5"),
            run_to_end(clients[bob.user_id], "what is 6*6"),
        )
        for user in (alice, bob):
            expiring = [f for f in clients[user.user_id].frames if f["type"] == "token_expiring"]
            assert len(expiring) == 1  # one warning each, for its own connection
            assert clients[user.user_id].close_code is None
        assert_never_mentioned([clients[alice.user_id]], bob.footprint() | {bob_run})
        assert_never_mentioned([clients[bob.user_id]], alice.footprint() | {alice_run})
        await d.assert_idle()


async def test_without_a_refresh_the_connection_closes_with_1008_and_others_stay_open(
    tmp_path: Path, composition: str
) -> None:
    clocks = Clocks()
    async with deploy(
        tmp_path,
        composition,
        ws_clock=clocks.ws,
        auth_clock=clocks.auth,
        auth={"access_ttl_seconds": ACCESS_TTL},
        ws_auth=EXPIRY,
    ) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        alice_stale, alice_fresh = await d.connect_many(alice, 2)
        bob_ws = await d.connect(bob)
        await clocks.watchers_waiting(3)
        expiry = max(expiry_of(u.access_token) for u in (alice, bob))

        clocks.move_to(expiry - WARNING + 1)
        await asyncio.gather(
            *(c.next_of_type("token_expiring") for c in (alice_stale, alice_fresh, bob_ws))
        )
        # Bob and one of Alice's connections refresh; the other one does not.
        refreshed = await asyncio.gather(
            refresh(alice_fresh, await d.login(alice)), refresh(bob_ws, await d.login(bob))
        )
        assert [r["type"] for r in refreshed] == ["token_refreshed", "token_refreshed"]
        await clocks.watchers_waiting(3)

        clocks.move_to(expiry + GRACE + 1)  # past the old tokens' expiry and grace
        code, last = await alice_stale.closed_by_server()
        assert code == 1008
        assert [frame["type"] for frame in last] == ["authentication_error"]
        assert last[0]["error_code"] == "TOKEN_EXPIRED"
        await eventually(
            lambda: (
                [i.connection_id for i in d.router.connections_of(alice.user_id)]
                == [alice_fresh.connection_id]
            ),
            what="the expired connection to leave the router",
        )
        await clocks.watchers_waiting(2)

        # The refreshed connections are open and routed to, each for its own user.
        (alice_run, _), (bob_run, _) = await asyncio.gather(
            run_to_end(alice_fresh, "remember that alice stays"),
            run_to_end(bob_ws, "remember that bob stays"),
        )
        await alice_fresh.assert_quiet()
        await bob_ws.assert_quiet()
        assert not [f for f in alice_stale.frames if f.get("run_id") == alice_run]
        assert_never_mentioned([alice_stale, alice_fresh], bob.footprint() | {bob_run, "bob stays"})
        assert_never_mentioned([bob_ws], alice.footprint() | {alice_run, "alice stays"})
        await d.assert_idle()


async def test_a_dropped_connection_resumes_and_ends_with_the_complete_sequence(
    tmp_path: Path, composition: str
) -> None:
    async with scripted_llm() as llm, deploy(tmp_path, composition, llm=llm) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        gates: dict[str, Gate] = {}
        markers: dict[str, str] = {}
        for user in (alice, bob):
            markers[user.user_id] = f"resume-{user.name}-{secrets.token_hex(4)}"
            gates[user.user_id] = Gate()
            llm.script(
                markers[user.user_id],
                Step(tool_calls=[("notes.add", {"content": markers[user.user_id]})]),
                Step(text=f"noted for {user.name}", gate=gates[user.user_id]),
            )

        async def drop_and_resume(user: Account) -> tuple[str, list[ProtocolClient]]:
            first = await d.connect(user)
            accepted = await first.start("assistant", f"please keep {markers[user.user_id]}")
            run_id = str(accepted["run_id"])
            seen = await first.take(run_id, 2)
            await gates[user.user_id].wait_entered()  # the tool call is done, the run waits
            first.drop()
            await first.closed_by_server()
            second = await d.connect(user)
            await second.send({"type": "resume", "run_id": run_id, "after_seq": 2})
            replayed = await second.take(run_id, 2)
            assert [e["type"] for e in replayed] == ["tool_executing", "tool_completed"]
            gates[user.user_id].open()
            live = await second.events_of(run_id)
            assert_complete_run(seen + replayed + live, run_id)
            await second.assert_quiet()
            return run_id, [first, second]

        (alice_run, alice_clients), (bob_run, bob_clients) = await asyncio.gather(
            drop_and_resume(alice), drop_and_resume(bob)
        )
        for user in (alice, bob):
            assert [note.content for note in await d.notes_of(user)] == [markers[user.user_id]]
        assert_never_mentioned(alice_clients, bob.footprint() | {bob_run, markers[bob.user_id]})
        assert_never_mentioned(bob_clients, alice.footprint() | {alice_run, markers[alice.user_id]})
        await d.assert_idle()


async def test_resuming_another_users_run_is_refused_and_leaks_nothing(
    tmp_path: Path, composition: str
) -> None:
    async with deploy(tmp_path, composition) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        clients = {u.user_id: await d.connect(u) for u in (alice, bob)}
        markers = {u.user_id: f"diary-{u.name}-{secrets.token_hex(4)}" for u in (alice, bob)}
        (alice_run, alice_events), (bob_run, bob_events) = await asyncio.gather(
            run_to_end(clients[alice.user_id], f"remember that {markers[alice.user_id]}"),
            run_to_end(clients[bob.user_id], f"remember that {markers[bob.user_id]}"),
        )
        runs = {alice.user_id: (alice_run, alice_events), bob.user_id: (bob_run, bob_events)}

        async def pry(user: Account, victim: Account) -> list[ProtocolClient]:
            thief = await d.connect(user)
            victims_run = runs[victim.user_id][0]
            answers = [
                await thief.request_error(
                    {"type": "resume", "run_id": victims_run, "after_seq": 0}
                ),
                await thief.request_error(
                    {"type": "resume", "run_id": victims_run, "after_seq": 3}
                ),
                await thief.request_error({"type": "cancel_run", "run_id": victims_run}),
            ]
            unknown = new_run_id()
            unknowns = [
                await thief.request_error({"type": "resume", "run_id": unknown, "after_seq": 0}),
                await thief.request_error({"type": "resume", "run_id": unknown, "after_seq": 3}),
                await thief.request_error({"type": "cancel_run", "run_id": unknown}),
            ]
            # Exactly the answers for a run that never existed.
            assert answers == unknowns
            assert {a["error_code"] for a in answers} == {"RUN_NOT_FOUND"}
            # The user's own run resumes in full on the same connection.
            own_run, own_events = runs[user.user_id]
            await thief.send({"type": "resume", "run_id": own_run, "after_seq": 0})
            resumed = await thief.events_of(own_run)
            assert [(e["seq"], e["type"], e["payload"]) for e in resumed] == [
                (e["seq"], e["type"], e["payload"]) for e in own_events
            ]
            await thief.assert_quiet()
            assert await d.replay.last_seq(user.user_id, victims_run) == 0
            return [clients[user.user_id], thief]

        alice_clients, bob_clients = await asyncio.gather(pry(alice, bob), pry(bob, alice))
        assert_never_mentioned(
            alice_clients,
            bob.footprint() | {bob_events[0]["thread_id"], markers[bob.user_id]},
        )
        assert_never_mentioned(
            bob_clients,
            alice.footprint() | {alice_events[0]["thread_id"], markers[alice.user_id]},
        )
        # Nobody's events left their owner: each user's run reached only the user.
        for user, victim in ((alice, bob), (bob, alice)):
            received = [
                f for c in (alice_clients if user is alice else bob_clients) for f in c.frames
            ]
            assert not [f for f in received if f.get("run_id") == runs[victim.user_id][0]]
        await d.assert_idle()


async def test_a_run_on_one_gateway_is_seen_live_on_the_users_connection_to_another_gateway(
    tmp_path: Path, composition: str, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(redis_server.flushall)
    async with deploy(tmp_path, composition, shared_redis=redis_server.url) as d:
        node_b = await d.add_gateway_node()
        alice, bob = await d.accounts_named("alice", "bob")
        on_a = {u.user_id: await d.connect(u) for u in (alice, bob)}
        on_b = {u.user_id: await d.connect(u, node=node_b) for u in (alice, bob)}
        markers = {u.user_id: f"crossing-{u.name}-{secrets.token_hex(4)}" for u in (alice, bob)}

        async def run(user: Account, origin: ProtocolClient, elsewhere: ProtocolClient) -> str:
            run_id, events = await run_to_end(
                origin, f"remember that {markers[user.user_id]}; what is 3*4"
            )
            seen = await elsewhere.events_of(run_id)
            assert [(e["seq"], e["type"], e["payload"]) for e in seen] == [
                (e["seq"], e["type"], e["payload"]) for e in events
            ]
            return run_id

        # Alice starts on gateway A and follows on B; Bob, at the same time, starts on B
        # and follows on A. (In process, gateway A is the platform's own, and Bob starts
        # there too: a run started on node B would go to a platform that also emits its
        # runs to the shared Redis itself, so its events would arrive twice - once under
        # each of the two run IDs. Over gRPC the platform behind the nodes only dispatches.)
        bob_origin, bob_elsewhere = on_b[bob.user_id], on_a[bob.user_id]
        if composition == "inprocess":
            bob_origin, bob_elsewhere = bob_elsewhere, bob_origin
        alice_run, bob_run = await asyncio.gather(
            run(alice, on_a[alice.user_id], on_b[alice.user_id]),
            run(bob, bob_origin, bob_elsewhere),
        )
        # The replay buffer is shared too: a new connection to node B resumes Alice's run.
        late = await d.connect(alice, node=node_b)
        await late.send({"type": "resume", "run_id": alice_run, "after_seq": 0})
        assert_complete_run(await late.events_of(alice_run), alice_run)
        for client in (*on_a.values(), *on_b.values(), late):
            await client.assert_quiet()
        alice_clients = [on_a[alice.user_id], on_b[alice.user_id], late]
        bob_clients = [on_a[bob.user_id], on_b[bob.user_id]]
        assert_never_mentioned(alice_clients, bob.footprint() | {bob_run, markers[bob.user_id]})
        assert_never_mentioned(bob_clients, alice.footprint() | {alice_run, markers[alice.user_id]})
        await d.assert_idle()
    # Every gateway let go of Redis when it closed.
    await eventually(
        lambda: redis_server.connected_clients() == 0, what="Redis connections to close"
    )
