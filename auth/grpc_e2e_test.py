"""Black-box tests against ``python -m auth.server_main`` started by the test (acceptance 3).

One server process per module, on an ephemeral loopback port with its own data dir; every
test uses its own accounts, so the tests do not depend on each other's state or order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import (
    reflection_pb2,
    reflection_pb2_grpc,
)

from auth import auth_pb2, auth_pb2_grpc
from auth.api import (
    AccountExistsError,
    AuthErrorCode,
    InvalidCredentialsError,
    InvalidRequestError,
    PermissionDeniedError,
    Plan,
    TokenError,
)
from auth.grpc_client import GrpcAuthClient
from auth.grpc_status import error_code_of
from auth.jwks_verifier import JWKSVerifier
from auth.testing import AuthServerProcess
from auth.tokens import TokenClaims

PASSWORD = "correct horse battery staple"
SERVICE_SECRET = "svc-test-secret-0123456789abcdef"
ACCOUNT_LIMIT = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServerProcess]:
    root = tmp_path_factory.mktemp("auth-e2e")
    process = AuthServerProcess(
        root / "data",
        env={
            "SSOT_AUTH_LOGIN_RATE_LIMIT_PER_ACCOUNT": f"{ACCOUNT_LIMIT}/minute",
            "SSOT_AUTH_LOGIN_RATE_LIMIT_PER_CLIENT": "1000/minute",
            "SSOT_AUTH_REGISTER_RATE_LIMIT_PER_CLIENT": "1000/minute",
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def client(server: AuthServerProcess) -> AsyncIterator[GrpcAuthClient]:
    assert server.address is not None
    async with GrpcAuthClient(server.address) as remote:
        yield remote


@pytest.fixture
async def stub(server: AuthServerProcess) -> AsyncIterator[auth_pb2_grpc.AuthServiceAsyncStub]:
    assert server.address is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


def _email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.com"


async def test_server_announces_its_ephemeral_address(server: AuthServerProcess) -> None:
    assert server.address is not None and server.address.startswith("127.0.0.1:")
    assert server.port > 0
    events = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    listening = [event for event in events if event["event"] == "auth_server_listening"]
    assert listening and listening[0]["address"] == server.address


async def test_register_login_validate_refresh_logout(client: GrpcAuthClient) -> None:
    email = _email("flow")
    account = await client.register(email, PASSWORD, "Flow")
    pair = await client.login(email, PASSWORD)
    assert pair.user_id == account.user_id

    validated = await client.authenticate_token(pair.access_token)
    assert validated.success and validated.user_id == account.user_id
    assert validated.email == email and validated.plan is Plan.FREE

    rotated = await client.refresh(pair.refresh_token)
    assert rotated.session_id == pair.session_id
    assert (await client.authenticate_token(rotated.access_token)).success

    await client.logout(rotated.refresh_token)
    after = await client.authenticate_token(rotated.access_token)
    assert after.success is False and after.error_code is AuthErrorCode.REVOKED
    old = await client.authenticate_token(pair.access_token)
    assert old.error_code is AuthErrorCode.REVOKED


async def test_wrong_password_and_unknown_user_get_the_same_answer(
    stub: auth_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    email = _email("known")
    await stub.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub.Login(auth_pb2.LoginRequest(email=email, password="not it at all"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Login(
            auth_pb2.LoginRequest(email=_email("ghost"), password=PASSWORD), timeout=10
        )
    assert wrong.value.code() is unknown.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.details() == unknown.value.details()
    assert error_code_of(wrong.value) == error_code_of(unknown.value) == "INVALID_CREDENTIALS"


async def test_wrong_password_and_unknown_user_through_the_client(client: GrpcAuthClient) -> None:
    email = _email("known2")
    await client.register(email, PASSWORD)
    with pytest.raises(InvalidCredentialsError) as wrong:
        await client.login(email, "not it at all")
    with pytest.raises(InvalidCredentialsError) as unknown:
        await client.login(_email("ghost2"), PASSWORD)
    assert wrong.value.message == unknown.value.message


async def test_login_flood_is_resource_exhausted(stub: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
    email = _email("flood")
    await stub.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD), timeout=10)
    statuses = []
    for _ in range(ACCOUNT_LIMIT + 2):
        try:
            await stub.Login(auth_pb2.LoginRequest(email=email, password="guess"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            statuses.append((exc.code(), error_code_of(exc)))
    assert (
        statuses[:ACCOUNT_LIMIT]
        == [(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")] * ACCOUNT_LIMIT
    )
    assert statuses[ACCOUNT_LIMIT:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")] * 2


async def test_request_errors_map_to_their_statuses(client: GrpcAuthClient) -> None:
    email = _email("dup")
    await client.register(email, PASSWORD)
    with pytest.raises(AccountExistsError):
        await client.register(email, PASSWORD)
    with pytest.raises(InvalidRequestError):
        await client.register("not-an-email", PASSWORD)
    with pytest.raises(TokenError) as caught:
        await client.refresh("a.b.c")
    assert caught.value.error_code is AuthErrorCode.INVALID_FORMAT


async def test_admin_operations_need_a_service_or_admin(server: AuthServerProcess) -> None:
    assert server.address is not None
    async with GrpcAuthClient(server.address) as anonymous:
        victim = await anonymous.register(_email("victim"), PASSWORD)
        attacker_email = _email("attacker")
        await anonymous.register(attacker_email, PASSWORD)
        attacker_pair = await anonymous.login(attacker_email, PASSWORD)
        service_token = (await anonymous.issue_service_token("svc-test", SERVICE_SECRET)).token

        with pytest.raises(TokenError) as no_token:
            await anonymous.revoke_user_tokens(victim.user_id)
        assert no_token.value.error_code is AuthErrorCode.NO_TOKEN

    async def attacker_token() -> str:
        return attacker_pair.access_token

    async with GrpcAuthClient(server.address, token_provider=attacker_token) as attacker:
        with pytest.raises(PermissionDeniedError):
            await attacker.revoke_user_tokens(victim.user_id)
        with pytest.raises(PermissionDeniedError):
            await attacker.update_account(attacker_pair.user_id, plan=Plan.ENTERPRISE)
        await attacker.revoke_user_tokens(attacker_pair.user_id)  # oneself is fine
        revoked = await attacker.authenticate_token(attacker_pair.access_token)
        assert revoked.error_code is AuthErrorCode.REVOKED

    async def as_service() -> str:
        return service_token

    async with GrpcAuthClient(server.address, token_provider=as_service) as admin:
        updated = await admin.update_account(
            victim.user_id, plan=Plan.PRO, roles=("admin",), permissions=("tools:*",)
        )
        assert updated.plan is Plan.PRO and updated.roles == ("admin",)
        mark = await admin.revoke_user_tokens(victim.user_id)
        assert mark.tzinfo is not None


async def test_remote_jwks_supports_local_verification(client: GrpcAuthClient) -> None:
    email = _email("jwks")
    await client.register(email, PASSWORD)
    pair = await client.login(email, PASSWORD)
    jwks = await client.get_jwks()
    assert jwks.keys and jwks.keys[0].alg == "EdDSA"

    async def via_server(claims: TokenClaims) -> bool:
        # Revocation through the remote service: what a process without the store uses.
        return (await client.authenticate_token(pair.access_token)).error_code is (
            AuthErrorCode.REVOKED
        )

    verifier = JWKSVerifier(
        fetch_jwks=client.get_jwks,
        is_revoked=via_server,
        issuer="ssot-auth",
        access_audience="ssot-api",
        refresh_audience="ssot-auth-refresh",
        service_audience="ssot-services",
    )
    local = await verifier.authenticate_token(pair.access_token)
    assert local.success and local.user_id == pair.user_id


async def test_health_and_reflection_are_served(server: AuthServerProcess) -> None:
    assert server.address is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="ssot.auth.v1.AuthService"), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: set[str] = set()
        async for response in reflection.ServerReflectionInfo(ask(), timeout=10):
            names.update(service.name for service in response.list_services_response.service)
        assert "ssot.auth.v1.AuthService" in names


async def test_client_health_and_stats(client: GrpcAuthClient) -> None:
    assert (await client.health()).state.value == "ok"
    await client.authenticate_token("")
    stats = await client.stats()
    assert stats.failures == 1 and stats.circuit_state == "closed"


async def test_server_log_holds_no_secret(
    server: AuthServerProcess, client: GrpcAuthClient
) -> None:
    email = _email("secret")
    password = f"pw-{uuid.uuid4().hex}"
    await client.register(email, password)
    pair = await client.login(email, password)
    rotated = await client.refresh(pair.refresh_token)
    await client.authenticate_token(rotated.access_token)
    await client.authenticate_token(pair.access_token + "x")
    await client.logout(rotated.refresh_token)
    service = await client.issue_service_token("svc-test", SERVICE_SECRET)
    with pytest.raises(InvalidCredentialsError):
        await client.login(email, password + "-wrong")

    log = server.log_text()
    assert "auth_login_succeeded" in log  # the log did capture these operations
    for secret in (
        password,
        SERVICE_SECRET,
        pair.access_token,
        pair.refresh_token,
        rotated.access_token,
        rotated.refresh_token,
        service.token,
    ):
        assert secret not in log
    for token in (pair.access_token, pair.refresh_token, service.token):
        assert token.rsplit(".", 1)[1] not in log  # not even the signature
    assert "PRIVATE KEY" not in log


async def test_data_dir_holds_the_keys_and_database(server: AuthServerProcess) -> None:
    data_dir = Path(server.data_dir)
    assert (data_dir / "auth.db").exists()
    assert list((data_dir / "keys").glob("*.json"))
