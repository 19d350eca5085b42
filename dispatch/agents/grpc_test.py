"""AgentService over gRPC: an in-process grpc.aio server on 127.0.0.1:0 behind the real auth
interceptor, called through GrpcAgentClient with real access tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest

from auth.api import Plan
from auth.interceptors import AuthServerInterceptor
from auth.service import LocalAuthService
from auth.testing import fast_settings
from dispatch.agents.api import (
    AgentPermissionDeniedError,
    AgentService,
    AgentSettings,
    InvalidAgentCallerError,
    InvalidRunRequestError,
    RunLimitExceededError,
    RunNotFoundError,
    RunState,
    UnknownAgentError,
)
from dispatch.agents.grpc_client import GrpcAgentClient, StreamingRunHandle
from dispatch.agents.grpc_server import add_agent_service
from dispatch.agents.testing import (
    AgentDeployment,
    HangingProvider,
    agent_deployment,
    llm_factory_with,
)
from dispatch.engine.api import ToolCaller
from dispatch.engine.testing import make_caller
from dispatch.tools.api import EventType, RunEventEnvelope

PASSWORD = "correct horse battery staple"
HANG = "please wait for release"


@dataclass(frozen=True)
class User:
    user_id: str
    token: str

    def caller(self) -> ToolCaller:
        # What the client believes about itself; the server reads plan and roles from the
        # token and only takes the context from here.
        return make_caller(Plan.FREE, user_id=self.user_id)


@dataclass
class Remote:
    address: str
    deployment: AgentDeployment
    hanging: HangingProvider
    users: dict[str, User]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def client(self, token: str | None) -> GrpcAgentClient:
        async def token_provider() -> str | None:
            return token

        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        return GrpcAgentClient(channel, token_provider=token_provider, rpc_timeout_seconds=30)

    def for_user(self, name: str) -> tuple[GrpcAgentClient, User]:
        user = self.users[name]
        return self.client(user.token), user


async def _user(auth: LocalAuthService, name: str) -> User:
    account = await auth.register(f"{name}@example.com", PASSWORD)
    await auth.update_account(account.user_id, plan=Plan.FREE)
    pair = await auth.login(f"{name}@example.com", PASSWORD)
    return User(account.user_id, pair.access_token)


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[Remote]:
    hanging = HangingProvider(trigger=HANG)
    settings = AgentSettings(max_runs_per_user=2)
    async with (
        await LocalAuthService.create(fast_settings(tmp_path / "auth")) as auth,
        agent_deployment(
            tmp_path / "data", settings=settings, llm=llm_factory_with(hanging)
        ) as deployment,
    ):
        users = {name: await _user(auth, name) for name in ("alice", "mallory")}
        server = grpc.aio.server(interceptors=[AuthServerInterceptor(auth)])
        add_agent_service(server, deployment.runner)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        remote = Remote(f"127.0.0.1:{port}", deployment, hanging, users)
        try:
            yield remote
        finally:
            hanging.release()
            for channel in remote.channels:
                await channel.close()
            await server.stop(None)


async def collect(handle: StreamingRunHandle) -> list[RunEventEnvelope]:
    return [event async for event in handle.events()]


async def test_start_run_streams_the_runs_events_as_they_happen(remote: Remote) -> None:
    client, alice = remote.for_user("alice")
    service: AgentService = client
    handle = await service.start_run(
        alice.caller(), "assistant", "remember that grpc streams work\nwhat is 2 + 3"
    )
    assert isinstance(handle, StreamingRunHandle)
    events = await collect(handle)
    assert [event.type.value for event in events] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_completed",
    ]
    assert [event.seq for event in events] == list(range(1, 9))
    assert {event.run_id for event in events} == {handle.run_id}
    assert {event.thread_id for event in events} == {handle.thread_id}
    assert {event.agent_name for event in events} == {"assistant"}
    assert events[2].payload["tool_input"] == {"content": "grpc streams work"}
    info = await client.get_run(alice.caller(), handle.run_id)
    assert info.state is RunState.COMPLETED
    assert info.result is not None and "5" in info.result
    # The run belongs to the token's user.
    local = await remote.deployment.runner.get_run(alice.caller(), handle.run_id)
    assert local == info


async def test_another_users_cancel_and_get_are_not_found(remote: Remote) -> None:
    alice_client, alice = remote.for_user("alice")
    mallory_client, mallory = remote.for_user("mallory")
    handle = await alice_client.start_run(alice.caller(), "assistant", HANG)
    await remote.hanging.entered.wait()
    with pytest.raises(RunNotFoundError) as refused:
        await mallory_client.cancel_run(mallory.caller(), handle.run_id)
    assert refused.value.error_code == "RUN_NOT_FOUND"
    with pytest.raises(RunNotFoundError):
        await mallory_client.get_run(mallory.caller(), handle.run_id)
    assert (await alice_client.get_run(alice.caller(), handle.run_id)).state is RunState.RUNNING
    # The owner's cancel ends the run with one agent_error, which ends the stream.
    cancelled = await alice_client.cancel_run(alice.caller(), handle.run_id)
    assert cancelled.state is RunState.CANCELLED
    events = await collect(handle)
    assert [event.type for event in events] == [EventType.AGENT_STARTED, EventType.AGENT_ERROR]
    assert events[-1].payload["error_type"] == "cancelled"


async def test_a_client_leaving_the_stream_cancels_the_run(remote: Remote) -> None:
    client, alice = remote.for_user("alice")
    handle = await client.start_run(alice.caller(), "assistant", HANG)
    await remote.hanging.entered.wait()
    assert handle.close()
    info = await asyncio.wait_for(
        remote.deployment.runner.wait_run(alice.caller(), handle.run_id), timeout=10
    )
    assert info.state is RunState.CANCELLED
    assert remote.deployment.leftovers() == {"runs": 0, "dispatchers": 0, "scopes": 0}


async def test_refusals_come_back_as_typed_errors(remote: Remote) -> None:
    client, alice = remote.for_user("alice")
    with pytest.raises(UnknownAgentError):
        await client.start_run(alice.caller(), "planner", "hello")
    with pytest.raises(InvalidRunRequestError):
        await client.start_run(alice.caller(), "assistant", "   ")
    with pytest.raises(RunNotFoundError):
        await client.get_run(alice.caller(), "run_does_not_exist_at_all")
    first = await client.start_run(alice.caller(), "assistant", HANG)
    second = await client.start_run(alice.caller(), "assistant", HANG)
    with pytest.raises(RunLimitExceededError):
        await client.start_run(alice.caller(), "assistant", HANG)
    # Another user is not affected by alice's limit.
    mallory_client, mallory = remote.for_user("mallory")
    other = await mallory_client.start_run(mallory.caller(), "notes", "add mine")
    assert [event.type for event in await collect(other)][-1] is EventType.AGENT_COMPLETED
    remote.hanging.release()
    for handle in (first, second):
        assert [event.type for event in await collect(handle)][-1] is EventType.AGENT_COMPLETED


async def test_identity_comes_from_the_token_only(remote: Remote) -> None:
    anonymous = remote.client(None)
    with pytest.raises(InvalidAgentCallerError):
        await anonymous.start_run(make_caller(), "assistant", "hello")
    forged = remote.client("not.a.token")
    with pytest.raises(InvalidAgentCallerError):
        await forged.get_run(make_caller(), "run_x")
    # Alice's token with someone else's context is refused before anything runs.
    client, _ = remote.for_user("alice")
    _, mallory = remote.for_user("mallory")
    with pytest.raises(AgentPermissionDeniedError):
        await client.start_run(mallory.caller(), "notes", "add as mallory")
    assert remote.deployment.runner.stats().started == 0
