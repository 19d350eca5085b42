"""The composition root: the embedded platform in process and over gRPC, two users.

Every test composes the real services (SQLite under tmp_path, the local LLM provider, the
real gateway on 127.0.0.1:0, real gRPC on 127.0.0.1:0) and checks that each user's runs
produce complete, gapless event sequences that reach that user only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from context.api import UserExecutionContext, context_scope
from data.api import DataAccessFactory
from dispatch.agents.api import AgentService, InvalidAgentCallerError, RunNotFoundError
from dispatch.agents.testing import HangingProvider, llm_factory_with
from dispatch.tools.api import RunEventEnvelope
from server.composition import (
    Platform,
    build_platform,
    connect_grpc,
    serve_grpc,
)
from server.testing import (
    FAST_AUTH,
    TestAccount,
    WsClient,
    new_account,
    running_platform,
    settings_for_tests,
)
from websocket.gateway.runs import AgentRuns

TOOL_MESSAGE = "remember that the launch is on Friday; what is 12*(3+4)?"
FLOW = ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]


def assert_complete_run(events: list[dict[str, Any]], run_id: str) -> None:
    """One run's events: its own IDs, seq 1..n without gaps, started first, completed last."""
    assert [event["run_id"] for event in events] == [run_id] * len(events)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert len({event["thread_id"] for event in events}) == 1
    assert events[0]["type"] == "agent_started"
    assert events[-1]["type"] == "agent_completed"
    types = [event["type"] for event in events]
    assert types.count("tool_executing") == types.count("tool_completed") == 2


def wire(envelope: RunEventEnvelope) -> dict[str, Any]:
    return envelope.to_wire()


def brief(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What two sinks of one run agree on (each stamps its own timestamps)."""
    return [
        (event["type"], event["seq"], event["run_id"], event["thread_id"], event["request_id"])
        for event in events
    ]


async def test_platform_exposes_services_by_their_protocols(platform: Platform) -> None:
    assert isinstance(platform.agents, AgentService)
    assert isinstance(platform.runs, AgentRuns)
    data: DataAccessFactory = platform.data
    assert data.stats().live_scopes == 0
    assert platform.ws_url.startswith("ws://127.0.0.1:")
    assert platform.ws_url.endswith("/ws")


async def test_two_users_over_the_gateway_see_only_their_own_runs(platform: Platform) -> None:
    alice = await new_account(platform.auth, "alice")
    bob = await new_account(platform.auth, "bob")
    async with (
        await WsClient.connect(platform.ws_url, alice.access_token) as alice_ws,
        await WsClient.connect(platform.ws_url, bob.access_token) as bob_ws,
    ):
        alice_run, bob_run = await asyncio.gather(
            alice_ws.start("assistant", TOOL_MESSAGE), bob_ws.start("assistant", TOOL_MESSAGE)
        )
        alice_events, bob_events = await asyncio.gather(
            alice_ws.events_until_end(alice_run["run_id"]),
            bob_ws.events_until_end(bob_run["run_id"]),
        )
        assert_complete_run(alice_events, alice_run["run_id"])
        assert_complete_run(bob_events, bob_run["run_id"])
        assert alice_events[0]["thread_id"] == alice_run["thread_id"]
        assert bob_events[0]["thread_id"] == bob_run["thread_id"]
        assert alice_run["run_id"] != bob_run["run_id"]
        await alice_ws.assert_quiet()
        await bob_ws.assert_quiet()

        # The recorded run behind each gateway run is the user's own, and complete.
        for account, run in ((alice, alice_run), (bob, bob_run)):
            recorded = platform.internals.runs.service_run_id(account.user_id, run["run_id"])
            assert recorded is not None
            caller = await platform.caller(account.access_token)
            # The terminal event goes out before the run is recorded as ended.
            info = await platform.internals.runner.wait_run(caller, recorded)
            assert info.state.value == "completed"
            assert info.thread_id == run["thread_id"]
        assert platform.internals.runs.service_run_id(bob.user_id, alice_run["run_id"]) is None

        # A later run continues the thread the first one created.
        again = await alice_ws.start("assistant", "what is 2+2?", thread_id=alice_run["thread_id"])
        assert again["thread_id"] == alice_run["thread_id"]
        events = await alice_ws.events_until_end(again["run_id"])
        assert events[-1]["type"] == "agent_completed"

        # Bob naming Alice's thread gets a thread of his own, never hers.
        stolen = await bob_ws.start("assistant", "what is 1+1?", thread_id=alice_run["thread_id"])
        assert stolen["thread_id"] != alice_run["thread_id"]
        events = await bob_ws.events_until_end(stolen["run_id"])
        assert {event["thread_id"] for event in events} == {stolen["thread_id"]}
        await alice_ws.assert_quiet()


async def test_two_users_over_grpc_see_only_their_own_runs_and_data(platform: Platform) -> None:
    host = await serve_grpc(platform)
    alice = await new_account(platform.auth, "alice")
    bob = await new_account(platform.auth, "bob")
    alice_remote = await connect_grpc(host.address, access_token=alice.access_token)
    bob_remote = await connect_grpc(host.address, access_token=bob.access_token)
    try:
        async with (
            await WsClient.connect(platform.ws_url, alice.access_token) as alice_ws,
            await WsClient.connect(platform.ws_url, bob.access_token) as bob_ws,
        ):

            async def run(remote_caller: Any, remote: Any) -> tuple[str, list[dict[str, Any]]]:
                handle = await remote.agents.start_run(remote_caller, "assistant", TOOL_MESSAGE)
                return handle.run_id, [wire(event) async for event in handle.events()]

            (alice_id, alice_events), (bob_id, bob_events) = await asyncio.gather(
                run(await alice_remote.caller(), alice_remote),
                run(await bob_remote.caller(), bob_remote),
            )
            assert_complete_run(alice_events, alice_id)
            assert_complete_run(bob_events, bob_id)

            # The user's live WebSocket connection sees the user's gRPC run too, and only it.
            assert brief(await alice_ws.events_until_end(alice_id)) == brief(alice_events)
            assert brief(await bob_ws.events_until_end(bob_id)) == brief(bob_events)
            await alice_ws.assert_quiet()
            await bob_ws.assert_quiet()

        # Each user's notes (written by the notes.add tool) are that user's alone.
        for account, remote in ((alice, alice_remote), (bob, bob_remote)):
            ctx = UserExecutionContext.from_request(account.user_id)
            with context_scope(ctx):
                async with remote.data.create_user_context(ctx) as scope:
                    notes = await scope.notes.list()
            assert [note.content for note in notes] == ["the launch is on Friday"]

        # Another user's run is "not found", over gRPC as in process.
        bob_caller = await bob_remote.caller()
        with pytest.raises(RunNotFoundError):
            await bob_remote.agents.get_run(bob_caller, alice_id)
    finally:
        await alice_remote.aclose()
        await bob_remote.aclose()
        await host.stop()


async def test_grpc_refuses_calls_without_a_token_and_serves_health_and_reflection(
    platform: Platform,
) -> None:
    host = await serve_grpc(platform)
    anonymous = await connect_grpc(host.address)
    try:
        alice = await new_account(anonymous.auth, "alice")
        caller = await platform.caller(alice.access_token)
        with pytest.raises(InvalidAgentCallerError):
            await anonymous.agents.start_run(caller, "assistant", "hi")
        health = health_pb2_grpc.HealthStub(anonymous.channel)
        for service in ("", *host.services):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(anonymous.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = None
        async for response in reflect.ServerReflectionInfo(iter([request])):
            listed = {service.name for service in response.list_services_response.service}
        assert listed is not None
        assert set(host.services) <= listed
        assert {
            "ssot.auth.v1.AuthService",
            "ssot.data.v1.DataAccess",
            "ssot.agents.v1.AgentService",
        } <= listed
    finally:
        await anonymous.aclose()
        await host.stop()


async def test_cancel_through_the_gateway_is_owner_only(tmp_path: Path) -> None:
    provider = HangingProvider()
    async with running_platform(tmp_path, llm_factory=llm_factory_with(provider)) as platform:
        alice = await new_account(platform.auth, "alice")
        bob = await new_account(platform.auth, "bob")
        async with (
            await WsClient.connect(platform.ws_url, alice.access_token) as alice_ws,
            await WsClient.connect(platform.ws_url, bob.access_token) as bob_ws,
        ):
            run = await alice_ws.start("assistant", "think about this")
            await asyncio.wait_for(provider.entered.wait(), 10)
            await bob_ws.send({"type": "cancel_run", "run_id": run["run_id"]})
            refused = await bob_ws.recv()
            assert refused["type"] == "error"
            assert refused["error_code"] == "RUN_NOT_FOUND"
            await alice_ws.send({"type": "cancel_run", "run_id": run["run_id"]})
            events = await alice_ws.events_until_end(run["run_id"])
            assert events[-1]["type"] == "agent_error"
            assert events[-1]["payload"]["error_type"] == "cancelled"
            assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
            await bob_ws.assert_quiet()


async def test_metrics_count_runs_tools_events_and_auth_failures(platform: Platform) -> None:
    alice = await new_account(platform.auth, "alice")
    async with await WsClient.connect(platform.ws_url, alice.access_token) as ws:
        run = await ws.start("assistant", TOOL_MESSAGE)
        events = await ws.events_until_end(run["run_id"])
    with pytest.raises(AssertionError, match="not admitted"):
        await WsClient.connect(platform.ws_url, "not-a-token")
    assert await platform.runs.wait_idle(5.0)  # the run is recorded after its last event
    metrics = platform.metrics
    assert metrics.value("ssot_runs_started_total") == 1
    assert metrics.value("ssot_runs_finished_total", {"state": "completed"}) == 1
    assert metrics.value("ssot_tool_calls_total", {"status": "success"}) == 2
    delivered = sum(
        metrics.value("ssot_events_delivered_total", {"type": kind})
        for kind in {event["type"] for event in events}
    )
    assert delivered == len(events)
    assert metrics.value("ssot_ws_connections_total") == 1
    assert metrics.value("ssot_ws_auth_failures_total", {"error_code": "INVALID_TOKEN"}) == 1


async def test_aclose_leaves_no_scopes_connections_or_tasks(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    platform = await build_platform(
        settings_for_tests(tmp_path / "platform"), auth_overrides=FAST_AUTH
    )
    host = await serve_grpc(platform)
    account: TestAccount = await new_account(platform.auth, "alice")
    remote = await connect_grpc(host.address, access_token=account.access_token)
    ws = await WsClient.connect(platform.ws_url, account.access_token)
    run = await ws.start("assistant", TOOL_MESSAGE)
    await ws.events_until_end(run["run_id"])
    handle = await remote.agents.start_run(await remote.caller(), "assistant", "what is 3*3?")
    assert [event.type.value async for event in handle.events()][-1] == "agent_completed"
    # A run still going when the platform closes is ended, not abandoned.
    hanging = await ws.start("assistant", "remember that closing is safe")
    await remote.aclose()
    await host.stop()
    await platform.aclose(grace_seconds=5.0)
    frames = await ws.drain()
    assert ws.ws.close_code == 1001
    assert frames[-1]["run_id"] == hanging["run_id"]
    assert frames[-1]["type"] in ("agent_completed", "agent_error")
    leftovers = platform.leftovers()
    assert leftovers == dict.fromkeys(leftovers, 0), leftovers
    data = platform.internals.data.stats()
    assert data.closed
    assert data.connections_open == 0
    await asyncio.sleep(0)
    stray = [task for task in asyncio.all_tasks() - before if task is not asyncio.current_task()]
    assert stray == []
    await platform.aclose()  # idempotent
