"""The seed report's eight core checks, as tests of the real packages."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from auth.api import AuthContextKind, AuthErrorCode, AuthResult, UnifiedAuthenticationService
from auth.service import LocalAuthService
from auth.testing import fast_settings
from context import UserExecutionContext


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LocalAuthService]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as svc:
        yield svc


def test_1_imports() -> None:
    for name in (
        "auth",
        "auth.api",
        "auth.service",
        "auth.grpc_server",
        "auth.grpc_client",
        "auth.interceptors",
        "auth.jwks_verifier",
        "context",
    ):
        assert importlib.import_module(name) is not None


async def test_2_service_creation(service: LocalAuthService) -> None:
    assert isinstance(service, UnifiedAuthenticationService)
    health = await service.health()
    assert health.state.value == "ok"
    assert (await service.get_jwks()).keys


async def test_3_validate_jwt_format(service: LocalAuthService) -> None:
    await service.register("seed@example.com", "correct horse battery", "Seed")
    pair = await service.login("seed@example.com", "correct horse battery")
    assert service.validate_jwt_format(pair.access_token) is True
    assert service.validate_jwt_format("aGVhZGVy.cGF5bG9hZA.c2lnbmF0dXJl") is True
    for bad in ("", "invalid", "header.payload", None):
        assert service.validate_jwt_format(bad) is False


async def test_4_invalid_token_fails_cleanly(service: LocalAuthService) -> None:
    result = await service.authenticate_token("invalid.jwt.token")
    assert isinstance(result, AuthResult)
    assert result.success is False
    assert result.error_code is AuthErrorCode.INVALID_FORMAT
    assert result.user_id is None


async def test_5_context_from_authenticated_request(service: LocalAuthService) -> None:
    account = await service.register("ctx@example.com", "correct horse battery")
    pair = await service.login("ctx@example.com", "correct horse battery")
    result = await service.authenticate_token(pair.access_token, AuthContextKind.REST_API)
    assert result.success and result.user_id == account.user_id
    before = datetime.now(UTC)
    ctx = UserExecutionContext.from_request(result.user_id, thread_id=None, run_id=None)
    assert ctx.user_id == account.user_id
    assert ctx.request_id and ctx.thread_id and ctx.run_id
    assert ctx.created_at >= before.replace(microsecond=0)


async def test_6_to_dict_keeps_ids(service: LocalAuthService) -> None:
    account = await service.register("dict@example.com", "correct horse battery")
    ctx = UserExecutionContext.from_request(account.user_id)
    data = ctx.to_dict()
    for field in ("user_id", "thread_id", "run_id", "request_id"):
        assert data[field] == getattr(ctx, field)
    assert UserExecutionContext.from_dict(data) == ctx


async def test_7_child_context(service: LocalAuthService) -> None:
    account = await service.register("child@example.com", "correct horse battery")
    parent = UserExecutionContext.from_request(account.user_id)
    child = parent.create_child_context("tool_call")
    assert child.user_id == parent.user_id
    assert child.thread_id == parent.thread_id
    assert child.request_id != parent.request_id
    assert child.parent_request_id == parent.request_id
    assert child.operation_depth == parent.operation_depth + 1


async def test_8_three_concurrent_users_have_distinct_ids(service: LocalAuthService) -> None:
    emails = [f"user{index}@example.com" for index in range(3)]
    accounts = await asyncio.gather(
        *(service.register(email, "correct horse battery") for email in emails)
    )
    pairs = await asyncio.gather(
        *(service.login(email, "correct horse battery") for email in emails)
    )
    results = await asyncio.gather(*(service.authenticate_token(p.access_token) for p in pairs))
    assert [r.user_id for r in results] == [a.user_id for a in accounts]

    async def make_context(user_id: str) -> UserExecutionContext:
        return UserExecutionContext.from_request(user_id)

    contexts = await asyncio.gather(*(make_context(r.user_id or "") for r in results))
    ids = [
        value
        for ctx in contexts
        for value in (ctx.user_id, ctx.thread_id, ctx.run_id, ctx.request_id)
    ]
    assert len(set(ids)) == len(ids) == 12
