"""Resource clean-up verification: whatever users open - runs, dispatchers, data scopes,
database connections, WebSocket connections and their slots, tasks - is given back when
their work ends, is cancelled, or the platform shuts down, and nobody else's is touched.

Agent runs use the local LLM provider, or a provider that hangs on a trigger phrase
until released (to have runs in progress); the gateway is the real ``websockets`` server
with real ``websockets`` clients; the PostgreSQL scenario uses this module's own server
and counts sessions in ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from dispatch.agents.api import RunNotFoundError, RunState
from dispatch.agents.testing import HangingProvider, llm_factory_with
from dispatch.tools.api import RunEventEnvelope
from itests.data_isolation.deployment import (
    Composition,
    Deployment,
    StartedRun,
    UserSession,
    assert_idle,
    composition,
    deployment,
    eventually,
    pg_database,
    pg_server,
    pg_template,
    postgres_settings,
)
from itests.harness import PostgresDatabase
from itests.harness.postgres import RoleName
from server.testing import TERMINAL_EVENTS, WsClient
from websocket.auth.authenticator import WebSocketAuthenticator

THEME = "resource clean-up verification"

__all__ = ["THEME", "composition", "pg_database", "pg_server", "pg_template"]

_HOLD = "hold on"  # runs whose message contains this wait in the model until released


def _assert_complete(events: list[RunEventEnvelope], run_id: str) -> None:
    """One run's events: its own IDs, seq 1..n without gaps, one terminal event, last."""
    assert {event.run_id for event in events} == {run_id}
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    types = [event.type.value for event in events]
    assert sum(kind in TERMINAL_EVENTS for kind in types) == 1
    assert types[-1] in TERMINAL_EVENTS
    assert types.count("tool_executing") == types.count("tool_completed")


def _live_tasks() -> Counter[str]:
    """The pending tasks of this loop (but the current one), counted by coroutine."""
    current = asyncio.current_task()
    return Counter(
        getattr(task.get_coro(), "__qualname__", repr(task.get_coro()))
        for task in asyncio.all_tasks()
        if task is not current and not task.done()
    )


def _ws_slots(dep: Deployment) -> Callable[[str], int]:
    inner = dep.platform.internals.ws_auth.inner
    assert isinstance(inner, WebSocketAuthenticator)
    return inner.slots.count


async def test_finished_runs_leave_no_open_scopes_dispatchers_or_slots(
    composition: Composition, tmp_path: Path
) -> None:
    runs_each = 2
    async with deployment(composition, tmp_path) as dep:
        users = await dep.users(*(f"user{i}" for i in range(6)))

        async def work(session: UserSession, index: int) -> tuple[str, Any, list[Any]]:
            info, events = await session.run(
                f"remember that {session.name} finished run {index}; what is {index + 6}*7?"
            )
            return session.user_id, info, events

        results = await asyncio.gather(
            *(work(session, index) for session in users for index in range(runs_each))
        )

        total = len(users) * runs_each
        for _, info, events in results:
            assert info.state is RunState.COMPLETED
            _assert_complete(events, info.run_id)
        for session in users:
            async with await session.open() as scope:
                notes = sorted(n.content for n in await scope.notes.list())
                run_ids = sorted(r.id for r in await scope.runs.list())
            assert notes == [f"{session.name} finished run {i}" for i in range(runs_each)]
            assert run_ids == sorted(i.run_id for u, i, _ in results if u == session.user_id)

        # Everything the runs took was given back: each had its own dispatcher, and the
        # data scopes and run slots of every user are free again.
        internals = dep.platform.internals
        dispatchers = internals.dispatchers.stats()
        assert dispatchers.created == total
        assert dispatchers.cleaned_up == total
        runner = internals.runner.stats()
        assert runner.started == total
        assert runner.finished_by_state == {"completed": total}
        assert internals.data.stats().scopes_opened >= total
        assert_idle(dep.platform)


async def test_platform_shutdown_leaves_no_database_connections(
    composition: Composition, tmp_path: Path, pg_database: PostgresDatabase
) -> None:
    server = pg_database.server

    def sessions(role: RoleName) -> int:
        return server.connection_count(role, pg_database.name)

    settings = postgres_settings(tmp_path, pg_database)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        users = await dep.users("alice", "bob", "carol", "dave")

        async def work(session: UserSession) -> None:
            info, _ = await session.run(f"remember that {session.name} used the database")
            assert info.state is RunState.COMPLETED
            async with await session.open() as scope:
                notes = [n.content for n in await scope.notes.list()]
            assert notes == [f"{session.name} used the database"]

        await asyncio.gather(*(work(session) for session in users))
        # The platform really holds database sessions (pooled, as the app role).
        assert await asyncio.to_thread(sessions, "app") > 0
        assert_idle(dep.platform)
    # After shutdown not one session of the platform's is left on the server.
    await eventually(lambda: sessions("app") == 0)
    assert sessions("owner") == 0


async def test_closed_websocket_connections_leave_the_router_empty(tmp_path: Path) -> None:
    per_user = 3
    async with deployment("inprocess", tmp_path) as dep:
        platform = dep.platform
        router = platform.internals.router
        slots = _ws_slots(dep)
        users = await dep.users("alice", "bob", "carol", "dave")
        clients = {
            session.user_id: [
                await WsClient.connect(platform.ws_url, session.token) for _ in range(per_user)
            ]
            for session in users
        }
        try:
            assert router.stats().connections == len(users) * per_user
            assert router.stats().users == len(users)
            assert {s.user_id: slots(s.user_id) for s in users} == dict.fromkeys(clients, per_user)

            async def one_run(session: UserSession) -> None:
                own = clients[session.user_id]
                accepted = await own[0].start("assistant", f"remember that {session.name} waved")
                streams = await asyncio.gather(
                    *(client.events_until_end(accepted["run_id"]) for client in own)
                )
                for events in streams:  # every connection of the user, nobody else's
                    assert events[-1]["type"] == "agent_completed"
                    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

            await asyncio.gather(*(one_run(session) for session in users))
            for own in clients.values():
                for client in own:
                    await client.assert_quiet()

            alice, bob, carol, dave = users

            async def close_politely() -> None:
                for client in clients[alice.user_id]:
                    await client.close()

            async def drop_abruptly() -> None:
                for client in clients[bob.user_id]:
                    client.ws.transport.abort()

            async def close_mid_run() -> None:
                own = clients[carol.user_id]
                await own[0].start("assistant", "remember that carol left early")
                for client in own:
                    await client.close()

            async def keep_one() -> None:
                for client in clients[dave.user_id][1:]:
                    await client.close()

            await asyncio.gather(close_politely(), drop_abruptly(), close_mid_run(), keep_one())
            await eventually(lambda: router.stats().connections == 1)
            assert router.stats().users == 1
            assert [slots(s.user_id) for s in users] == [0, 0, 0, 1]
            # Dave's remaining connection is untouched and still served.
            last = clients[dave.user_id][0]
            accepted = await last.start("assistant", "what is 2+2?")
            events = await last.events_until_end(accepted["run_id"])
            assert events[-1]["type"] == "agent_completed"
            await last.close()

            await eventually(lambda: router.stats().connections == 0)
            assert router.stats().users == 0
            await eventually(lambda: len(platform.internals.ws_auth) == 0)
            assert [slots(s.user_id) for s in users] == [0, 0, 0, 0]
            # Carol's run went on without her connection and ended; nothing is held.
            await eventually(lambda: platform.leftovers()["runs"] == 0)
            assert await platform.runs.wait_idle(10.0)
            async with await carol.open() as scope:
                assert sorted(n.content for n in await scope.notes.list()) == [
                    "carol left early",
                    "carol waved",
                ]
            assert_idle(platform)

            # Every slot is really free: Bob, dropped abruptly, may open all five again.
            again = [await WsClient.connect(platform.ws_url, bob.token) for _ in range(5)]
            assert router.stats().connections == 5
            for client in again:
                await client.close()
            await eventually(lambda: router.stats().connections == 0)
        finally:
            for own in clients.values():
                for client in own:
                    with contextlib.suppress(Exception):
                        await client.close()


async def test_cancelled_runs_leave_no_tasks_behind(
    composition: Composition, tmp_path: Path
) -> None:
    provider = HangingProvider(trigger=_HOLD)
    async with deployment(composition, tmp_path, llm_factory=llm_factory_with(provider)) as dep:
        alice, bob = await dep.users("alice", "bob")
        # Callers are verified up front, so no auth client call runs alongside the runs.
        alice_caller, bob_caller = await alice.caller(), await bob.caller()
        # Warm up: one started and cancelled run per user brings up what lives as long as
        # the platform (the data factory's clean-up task, the gRPC server's call loops).
        for session, caller in ((alice, alice_caller), (bob, bob_caller)):
            warm = await session.start(f"{_HOLD}, warming up")
            await session.agents.cancel_run(caller, warm.run_id)
            assert [e.type.value async for e in warm.events()][-1] == "agent_error"
        baseline = _live_tasks()

        async def started(
            session: UserSession, message: str
        ) -> tuple[StartedRun, AsyncIterator[RunEventEnvelope]]:
            run = await session.start(message)
            stream = run.events()
            first = await anext(stream)  # the run is in progress
            assert (first.type.value, first.run_id) == ("agent_started", run.run_id)
            return run, stream

        (a1, a1_rest), (a2, a2_rest), (b1, b1_rest), (b2, b2_rest) = await asyncio.gather(
            started(alice, f"{_HOLD}, alice's first"),
            started(alice, f"{_HOLD}, alice's second"),
            started(bob, f"{_HOLD}, bob's first"),
            started(bob, "what is 2+2?"),
        )
        b2_events = [event async for event in b2_rest]
        assert b2_events[-1].type.value == "agent_completed"
        active = dep.platform.internals.runner.stats().active_runs_per_user
        assert active == {alice.user_id: 2, bob.user_id: 1}

        # Bob cannot cancel Alice's run; it keeps running.
        with pytest.raises(RunNotFoundError):
            await bob.agents.cancel_run(bob_caller, a1.run_id)
        assert dep.platform.internals.runner.stats().active_runs_per_user[alice.user_id] == 2

        cancelled = await asyncio.gather(
            alice.agents.cancel_run(alice_caller, a1.run_id),
            alice.agents.cancel_run(alice_caller, a2.run_id),
            bob.agents.cancel_run(bob_caller, b1.run_id),
        )
        for run, rest, info in zip(
            (a1, a2, b1), (a1_rest, a2_rest, b1_rest), cancelled, strict=True
        ):
            assert info.run_id == run.run_id
            assert info.state is RunState.CANCELLED
            assert info.error_type == "cancelled"
            tail = [event async for event in rest]  # each ends with one agent_error
            assert {event.run_id for event in tail} == {run.run_id}
            assert [event.type.value for event in tail].count("agent_error") == 1
            assert tail[-1].type.value == "agent_error"
            assert tail[-1].payload["error_type"] == "cancelled"
        done = await bob.agents.get_run(bob_caller, b2.run_id)
        assert done.state is RunState.COMPLETED

        # No run task is left, and no kind of task grew in number.
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("agent-run:")]
        await eventually(lambda: _live_tasks() <= baseline)
        assert _live_tasks() - baseline == Counter()
        assert_idle(dep.platform)
        assert dep.platform.internals.runner.stats().finished_by_state == {
            "cancelled": 3 + 2,  # with the warm-up runs
            "completed": 1,
        }


async def test_gateway_shutdown_closes_every_connection_with_1001_and_frees_every_user_s_slots(
    tmp_path: Path,
) -> None:
    provider = HangingProvider(trigger=_HOLD)
    async with deployment("inprocess", tmp_path, llm_factory=llm_factory_with(provider)) as dep:
        platform = dep.platform
        slots = _ws_slots(dep)
        users = await dep.users("alice", "bob", "carol")
        clients = {
            s.user_id: [await WsClient.connect(platform.ws_url, s.token) for _ in range(2)]
            for s in users
        }
        alice, bob, carol = users
        try:
            runs: dict[str, str] = {}
            for session in (alice, bob):  # Alice and Bob each have a run in progress
                own = clients[session.user_id]
                accepted = await own[0].start("assistant", f"{_HOLD}, {session.name}")
                runs[session.user_id] = accepted["run_id"]
                for client in own:
                    frame = await client.recv()
                    assert (frame["type"], frame["run_id"]) == ("agent_started", accepted["run_id"])
            assert [slots(s.user_id) for s in users] == [2, 2, 2]
            assert platform.internals.runner.stats().active_runs_per_user == {
                alice.user_id: 1,
                bob.user_id: 1,
            }

            shutdown = asyncio.create_task(platform.gateway.shutdown(grace_seconds=20))
            await eventually(lambda: not platform.gateway.accepting)
            # No new connection meanwhile: the listener is closed (or answers 503).
            with pytest.raises((InvalidStatus, ConnectionRefusedError)) as refused:
                await WsClient.connect(platform.ws_url, carol.token)
            if isinstance(refused.value, InvalidStatus):
                assert refused.value.response.status_code == 503
            provider.release()  # the runs in progress may now finish within the grace

            async def drained(client: WsClient) -> tuple[list[dict[str, Any]], int | None]:
                frames = await client.drain()
                return frames, client.ws.close_code

            endings = {
                s.user_id: await asyncio.gather(*(drained(c) for c in clients[s.user_id]))
                for s in users
            }
            await asyncio.wait_for(shutdown, timeout=30)

            for session in users:
                for frames, code in endings[session.user_id]:
                    assert code == 1001
                    run_id = runs.get(session.user_id)
                    if run_id is None:
                        assert frames == []  # Carol had nothing going on
                        continue
                    assert {frame.get("run_id") for frame in frames} == {run_id}
                    assert frames[-1]["type"] in TERMINAL_EVENTS
            await eventually(lambda: platform.internals.router.stats().connections == 0)
            await eventually(lambda: len(platform.internals.ws_auth) == 0)
            assert [slots(s.user_id) for s in users] == [0, 0, 0]
            assert platform.internals.runner.stats().active_runs_per_user == {}
            assert_idle(platform)
        finally:
            provider.release()
            for own in clients.values():
                for client in own:
                    with contextlib.suppress(Exception):
                        await client.close()
