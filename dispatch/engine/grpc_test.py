"""ToolService over gRPC: an in-process grpc.aio server on 127.0.0.1:0 behind the real auth
interceptor, called through GrpcToolEngineClient with real access tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import pytest

from auth.api import Plan
from auth.interceptors import AuthServerInterceptor, auth_client_interceptors
from auth.service import LocalAuthService
from auth.testing import fast_settings
from data.factory import SqlDataAccessFactory
from dispatch.engine import engine_pb2, engine_pb2_grpc
from dispatch.engine.api import (
    CallerMismatchError,
    InvalidCallerError,
    MalformedRequestError,
    PermissionGroup,
    ResultCode,
    ToolCaller,
    ToolExecutionResult,
    ToolStatus,
)
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.grpc_client import GrpcToolEngineClient, error_from_rpc_error
from dispatch.engine.grpc_server import add_tool_service
from dispatch.engine.permissions import ADMIN_ROLE
from dispatch.engine.rate_limits import RateLimitPolicy, ToolRateLimiter
from dispatch.engine.registry import ToolRegistry
from dispatch.engine.testing import make_caller

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class User:
    user_id: str
    token: str
    plan: Plan
    roles: tuple[str, ...]

    def caller(self, **overrides: object) -> ToolCaller:
        """What the client side believes about itself (the server ignores all but the
        context and reads plan and roles from the token)."""
        plan = overrides.get("plan", self.plan)
        roles = overrides.get("roles", self.roles)
        assert isinstance(plan, Plan) and isinstance(roles, tuple)
        return make_caller(plan, roles=roles, user_id=self.user_id)


@dataclass
class Deployment:
    address: str
    users: dict[str, User]
    data: SqlDataAccessFactory
    auth: LocalAuthService
    channels: list[grpc.aio.Channel]

    def client(self, token: str | None) -> GrpcToolEngineClient:
        async def token_provider() -> str | None:
            return token

        channel = grpc.aio.insecure_channel(
            self.address, interceptors=auth_client_interceptors(token_provider)
        )
        self.channels.append(channel)
        return GrpcToolEngineClient(channel, rpc_timeout_seconds=30)

    def for_user(self, name: str) -> tuple[GrpcToolEngineClient, User]:
        user = self.users[name]
        return self.client(user.token), user


async def _user(auth: LocalAuthService, name: str, plan: Plan, roles: tuple[str, ...] = ()) -> User:
    email = f"{name}@example.com"
    account = await auth.register(email, PASSWORD)
    await auth.update_account(account.user_id, plan=plan, roles=roles)
    pair = await auth.login(email, PASSWORD)
    return User(account.user_id, pair.access_token, plan, roles)


@pytest.fixture
async def deployment(
    tmp_path: Path, engine: LocalToolExecutionEngine, data_factory: SqlDataAccessFactory
) -> AsyncIterator[Deployment]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as auth:
        users = {
            "alice": await _user(auth, "alice", Plan.FREE),
            "bob": await _user(auth, "bob", Plan.PRO),
            "root": await _user(auth, "root", Plan.ENTERPRISE, (ADMIN_ROLE,)),
        }
        server = grpc.aio.server(interceptors=[AuthServerInterceptor(auth)])
        add_tool_service(server, engine)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        deployment = Deployment(f"127.0.0.1:{port}", users, data_factory, auth, [])
        try:
            yield deployment
        finally:
            for channel in deployment.channels:
                await channel.close()
            await server.stop(None)


def _comparable(result: ToolExecutionResult) -> dict[str, object]:
    return result.model_dump(exclude={"execution_time_ms", "tool_call_id"})


async def test_round_trip_calculator(deployment: Deployment) -> None:
    client, alice = deployment.for_user("alice")
    result = await client.execute_tool(
        alice.caller(), "calculator", {"expression": "2 ** 10 - 24"}, tool_call_id="call_42"
    )
    assert result.status is ToolStatus.SUCCESS
    assert result.result == {"expression": "2 ** 10 - 24", "result": 1000}
    assert result.tool_call_id == "call_42"


async def test_round_trip_notes_stay_with_their_owner(deployment: Deployment) -> None:
    alice_client, alice = deployment.for_user("alice")
    bob_client, bob = deployment.for_user("bob")
    added = await alice_client.execute_tool(
        alice.caller(), "notes.add", {"content": "alice grpc memo", "tags": ["grpc"]}
    )
    assert added.status is ToolStatus.SUCCESS
    assert isinstance(added.result, dict)
    mine = await alice_client.execute_tool(alice.caller(), "notes.search", {"query": "memo"})
    theirs = await bob_client.execute_tool(bob.caller(), "notes.search", {"query": "memo"})
    assert isinstance(mine.result, dict) and isinstance(theirs.result, dict)
    notes = mine.result["notes"]
    assert isinstance(notes, list)
    assert [cast(dict[str, Any], n)["id"] for n in notes] == [added.result["id"]]
    assert theirs.result == {"count": 0, "notes": []}


async def test_usage_is_recorded_under_the_callers_context(deployment: Deployment) -> None:
    client, alice = deployment.for_user("alice")
    caller = alice.caller()
    await client.execute_tool(caller, "calculator", {"expression": "1 + 1"})
    async with deployment.data.create_user_context(caller.context) as scope:
        usage = await scope.tool_usage.list()
    assert [(u.tool_name, u.run_id, u.success) for u in usage] == [
        ("calculator", caller.context.run_id, True)
    ]


async def test_list_tools_follows_the_plan_in_the_token(deployment: Deployment) -> None:
    alice_client, alice = deployment.for_user("alice")
    root_client, root = deployment.for_user("root")
    alice_tools = {d.name for d in await alice_client.list_tools(alice.caller())}
    root_tools = {d.name for d in await root_client.list_tools(root.caller())}
    assert "system.stats" not in alice_tools
    assert "system.stats" in root_tools
    assert "calculator" in alice_tools
    everything = await alice_client.list_tools(alice.caller(), include_unavailable=True)
    assert {d.name for d in everything} == root_tools
    calculator = next(d for d in everything if d.name == "calculator")
    assert calculator.input_schema["required"] == ["expression"]
    assert calculator.annotations.read_only_hint


async def test_plan_and_roles_claimed_by_the_client_are_ignored(deployment: Deployment) -> None:
    client, alice = deployment.for_user("alice")
    claimed = alice.caller(plan=Plan.DEVELOPER, roles=(ADMIN_ROLE,))
    result = await client.execute_tool(claimed, "system.stats", {})
    assert result.status is ToolStatus.PERMISSION_DENIED
    assert result.upgrade_plans == (Plan.ENTERPRISE,)
    root_client, root = deployment.for_user("root")
    stats = await root_client.execute_tool(root.caller(), "system.stats", {})
    assert stats.status is ToolStatus.SUCCESS


@pytest.mark.parametrize(
    ("tool", "arguments", "status"),
    [
        ("no.such.tool", {}, ToolStatus.NOT_FOUND),
        ("calculator", {"expression": 7}, ToolStatus.INVALID_INPUT),
        ("calculator", {"expression": "().__class__"}, ToolStatus.INVALID_INPUT),
        ("calculator", {"expression": "1 / 0"}, ToolStatus.ERROR),
        ("system.stats", {}, ToolStatus.PERMISSION_DENIED),
    ],
)
async def test_results_match_the_in_process_engine(
    deployment: Deployment,
    engine: LocalToolExecutionEngine,
    tool: str,
    arguments: dict[str, object],
    status: ToolStatus,
) -> None:
    client, alice = deployment.for_user("alice")
    remote = await client.execute_tool(alice.caller(), tool, arguments)
    local = await engine.execute_tool(alice.caller(), tool, arguments)
    assert remote.status is status
    assert _comparable(remote) == _comparable(local)


async def test_rate_limited_result_travels_with_retry_after(
    tmp_path: Path, data_factory: SqlDataAccessFactory
) -> None:
    limiter = ToolRateLimiter(group_limits={PermissionGroup.BASIC: RateLimitPolicy(per_minute=1)})
    async with (
        LocalToolExecutionEngine(
            registry=register_builtin_tools(ToolRegistry()),
            data=data_factory,
            rate_limiter=limiter,
        ) as engine,
        await LocalAuthService.create(fast_settings(tmp_path / "auth")) as auth,
    ):
        user = await _user(auth, "carol", Plan.FREE)
        server = grpc.aio.server(interceptors=[AuthServerInterceptor(auth)])
        add_tool_service(server, engine)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        deployment = Deployment(f"127.0.0.1:{port}", {}, data_factory, auth, [])
        try:
            client = deployment.client(user.token)
            first = await client.execute_tool(user.caller(), "time.now", {})
            second = await client.execute_tool(user.caller(), "time.now", {})
        finally:
            for channel in deployment.channels:
                await channel.close()
            await server.stop(None)
            await limiter.aclose()
    assert first.status is ToolStatus.SUCCESS
    assert second.status is ToolStatus.RATE_LIMITED
    assert second.error_code == ResultCode.RATE_LIMITED
    assert second.retry_after_seconds is not None and second.retry_after_seconds > 0


async def test_call_without_token_is_unauthenticated(deployment: Deployment) -> None:
    client = deployment.client(None)
    with pytest.raises(InvalidCallerError):
        await client.execute_tool(make_caller(), "calculator", {"expression": "1"})
    with pytest.raises(InvalidCallerError):
        await client.list_tools(make_caller())


async def test_forged_token_is_unauthenticated(deployment: Deployment) -> None:
    _, alice = deployment.for_user("alice")
    head, payload, signature = alice.token.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    with pytest.raises(InvalidCallerError):
        await deployment.client(forged).execute_tool(alice.caller(), "calculator", {})


async def test_context_of_another_user_is_refused(deployment: Deployment) -> None:
    client, _ = deployment.for_user("alice")
    _, bob = deployment.for_user("bob")
    with pytest.raises(CallerMismatchError):
        await client.execute_tool(bob.caller(), "notes.search", {"query": "memo"})


async def test_malformed_arguments_json_is_invalid_argument(deployment: Deployment) -> None:
    _, alice = deployment.for_user("alice")

    async def token_provider() -> str | None:
        return alice.token

    channel = grpc.aio.insecure_channel(
        deployment.address, interceptors=auth_client_interceptors(token_provider)
    )
    deployment.channels.append(channel)
    stub = engine_pb2_grpc.ToolServiceStub(channel)
    for text in ["{", '{"expression": NaN}', "[" * 100_000]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecuteTool(
                engine_pb2.ExecuteToolRequest(tool_name="calculator", arguments_json=text)
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(error_from_rpc_error(caught.value), MalformedRequestError)


async def test_service_token_cannot_call_tools(deployment: Deployment) -> None:
    # Tools act for a user with the user's own entitlements: a service token has none.
    service_token = await deployment.auth.issue_service_token(
        "svc-test", "svc-test-secret-0123456789abcdef"
    )
    _, alice = deployment.for_user("alice")
    client = deployment.client(service_token.token)
    with pytest.raises(InvalidCallerError):
        await client.execute_tool(alice.caller(), "calculator", {"expression": "1"})
