"""The server and client interceptors, on a probe service unrelated to auth."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.api import AuthContextKind, AuthErrorCode, AuthResult, JsonWebKeySet, TokenPair
from auth.grpc_status import error_code_of
from auth.identity import current_identity, get_current_identity
from auth.interceptors import AuthServerInterceptor, auth_client_interceptors
from auth.jwks_verifier import JWKSVerifier
from auth.service import LocalAuthService
from auth.testing import fast_settings, forge_token
from auth.token_format import b64url_decode
from auth.tokens import TokenClaims
from context import (
    CONTEXT_METADATA_KEY,
    UserExecutionContext,
    context_scope,
    current_context,
    encode_context_metadata,
    get_current_context,
)

PASSWORD = "correct horse battery staple"
SERVICE_SECRET = "svc-test-secret-0123456789abcdef"


def _raw(data: bytes) -> bytes:
    return data


def unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/test.Probe/{method}", _raw, _raw)


def _describe() -> bytes:
    identity = current_identity()
    ctx = get_current_context()
    return json.dumps(
        {
            "subject": identity.user_id,
            "token_type": identity.token_type.value if identity.token_type else None,
            "context_user": ctx.user_id if ctx else None,
            "request_id": ctx.request_id if ctx else None,
        }
    ).encode()


async def _whoami(request: bytes, context: Any) -> bytes:
    return _describe()


async def _public(request: bytes, context: Any) -> bytes:
    return json.dumps({"identity": get_current_identity() is not None}).encode()


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield _describe()


async def _collect(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in request_iterator:
        pass
    return _describe()


def _probe_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "test.Probe",
        {
            "Whoami": grpc.unary_unary_rpc_method_handler(_whoami),
            "Public": grpc.unary_unary_rpc_method_handler(_public),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Collect": grpc.stream_unary_rpc_method_handler(_collect),
        },
    )


@dataclass
class Env:
    service: LocalAuthService
    target: str
    channel: grpc.aio.Channel
    user_id: str
    pair: TokenPair

    async def call(self, metadata: list[tuple[str, str]], method: str = "Whoami") -> dict[str, Any]:
        response = await unary(self.channel, method)(b"", metadata=metadata, timeout=5)
        data: dict[str, Any] = json.loads(response)
        return data

    def bearer(self, token: str | None = None) -> tuple[str, str]:
        return ("authorization", f"Bearer {token or self.pair.access_token}")


async def _start(interceptor: AuthServerInterceptor) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((_probe_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as service:
        account = await service.register("probe@example.com", PASSWORD)
        pair = await service.login("probe@example.com", PASSWORD)
        interceptor = AuthServerInterceptor(service, public_methods={"/test.Probe/Public"})
        server, target = await _start(interceptor)
        channel = grpc.aio.insecure_channel(target)
        try:
            yield Env(service, target, channel, account.user_id, pair)
        finally:
            await channel.close()
            await server.stop(None)


async def _status(env: Env, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.call(metadata)
    return caught.value.code(), error_code_of(caught.value)


async def test_verified_identity_and_context_reach_the_handler(env: Env) -> None:
    ctx = UserExecutionContext.from_request(env.user_id)
    seen = await env.call([env.bearer(), (CONTEXT_METADATA_KEY, encode_context_metadata(ctx))])
    assert seen == {
        "subject": env.user_id,
        "token_type": "access",
        "context_user": env.user_id,
        "request_id": ctx.request_id,
    }


async def test_missing_context_gets_a_fresh_one_for_the_token_subject(env: Env) -> None:
    seen = await env.call([env.bearer()])
    assert seen["context_user"] == env.user_id and seen["request_id"]


async def test_context_of_another_user_is_permission_denied(env: Env) -> None:
    other = await env.service.register("other@example.com", PASSWORD)
    foreign = UserExecutionContext.from_request(other.user_id)
    status, code = await _status(
        env, [env.bearer(), (CONTEXT_METADATA_KEY, encode_context_metadata(foreign))]
    )
    assert status is grpc.StatusCode.PERMISSION_DENIED
    assert code == AuthErrorCode.CONTEXT_MISMATCH


async def test_missing_token_is_unauthenticated(env: Env) -> None:
    status, code = await _status(env, [])
    assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, AuthErrorCode.NO_TOKEN)


async def test_forged_token_is_unauthenticated(env: Env) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    kid = env.service.key_store.signer().kid
    claims = json.loads(b64url_decode(env.pair.access_token.split(".")[1]))
    forged = forge_token({"alg": "EdDSA", "typ": "JWT", "kid": kid}, claims, key=attacker)
    status, code = await _status(env, [env.bearer(forged)])
    assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, AuthErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token-without-scheme"]
)
async def test_malformed_authorization_is_unauthenticated(env: Env, value: str) -> None:
    status, code = await _status(env, [("authorization", value)])
    assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, AuthErrorCode.INVALID_FORMAT)


async def test_revoked_token_is_unauthenticated(env: Env) -> None:
    await env.service.logout(env.pair.access_token)
    status, code = await _status(env, [env.bearer()])
    assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, AuthErrorCode.REVOKED)


async def test_undecodable_context_is_invalid_argument(env: Env) -> None:
    status, code = await _status(env, [env.bearer(), (CONTEXT_METADATA_KEY, "!!not-a-context!!")])
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, AuthErrorCode.INVALID_REQUEST)


async def test_two_authorization_entries_are_refused(env: Env) -> None:
    status, _ = await _status(env, [env.bearer(), env.bearer()])
    assert status is grpc.StatusCode.UNAUTHENTICATED


async def test_service_token_may_forward_a_users_context(env: Env) -> None:
    issued = await env.service.issue_service_token("svc-test", SERVICE_SECRET)
    ctx = UserExecutionContext.from_request(env.user_id)
    seen = await env.call(
        [env.bearer(issued.token), (CONTEXT_METADATA_KEY, encode_context_metadata(ctx))]
    )
    assert seen["subject"] == "svc-test" and seen["token_type"] == "service"
    assert seen["context_user"] == env.user_id


async def test_service_tokens_refused_where_not_allowed(env: Env) -> None:
    issued = await env.service.issue_service_token("svc-test", SERVICE_SECRET)
    server, target = await _start(AuthServerInterceptor(env.service, allow_service_tokens=False))
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(channel, "Whoami")(
                    b"", metadata=[("authorization", f"Bearer {issued.token}")], timeout=5
                )
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error_code_of(caught.value) == AuthErrorCode.WRONG_TOKEN_TYPE
    finally:
        await server.stop(None)


async def test_required_context_must_be_sent(env: Env) -> None:
    server, target = await _start(AuthServerInterceptor(env.service, require_context=True))
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(channel, "Whoami")(b"", metadata=[env.bearer()], timeout=5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(None)


async def test_public_method_needs_no_token(env: Env) -> None:
    assert await env.call([], method="Public") == {"identity": False}


async def test_streaming_handlers_see_identity_and_context(env: Env) -> None:
    ctx = UserExecutionContext.from_request(env.user_id)
    metadata = [env.bearer(), (CONTEXT_METADATA_KEY, encode_context_metadata(ctx))]
    replies = [
        json.loads(item)
        async for item in env.channel.unary_stream("/test.Probe/Stream", _raw, _raw)(
            b"", metadata=metadata, timeout=5
        )
    ]
    assert [reply["request_id"] for reply in replies] == [ctx.request_id] * 2

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    collected = json.loads(
        await env.channel.stream_unary("/test.Probe/Collect", _raw, _raw)(
            requests(), metadata=metadata, timeout=5
        )
    )
    assert collected["context_user"] == env.user_id


async def test_streaming_call_without_token_is_unauthenticated(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in env.channel.unary_stream("/test.Probe/Stream", _raw, _raw)(b"", timeout=5):
            pass
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_unreachable_verifier_is_unavailable(env: Env) -> None:
    async def down() -> JsonWebKeySet:
        raise ConnectionError("auth down")

    async def never(claims: TokenClaims) -> bool:
        return False

    verifier = JWKSVerifier.from_settings(env.service.settings, fetch_jwks=down, is_revoked=never)
    server, target = await _start(AuthServerInterceptor(verifier))
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(channel, "Whoami")(b"", metadata=[env.bearer()], timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_code_of(caught.value) == AuthErrorCode.AUTH_SERVICE_UNAVAILABLE
    finally:
        await server.stop(None)


async def test_client_interceptor_sends_token_and_current_context(env: Env) -> None:
    async def token() -> str:
        return env.pair.access_token

    ctx = UserExecutionContext.from_request(env.user_id)
    async with grpc.aio.insecure_channel(
        env.target, interceptors=auth_client_interceptors(token)
    ) as channel:
        with context_scope(ctx):
            reply = json.loads(await unary(channel, "Whoami")(b"", timeout=5))
            assert current_context() is ctx
        assert reply["request_id"] == ctx.request_id and reply["subject"] == env.user_id
        # Outside any scope only the token travels; the server makes a fresh context.
        bare = json.loads(await unary(channel, "Whoami")(b"", timeout=5))
        assert bare["request_id"] != ctx.request_id and bare["context_user"] == env.user_id


async def test_client_interceptor_cannot_smuggle_another_users_context(env: Env) -> None:
    other = await env.service.register("smuggle@example.com", PASSWORD)

    async def token() -> str:
        return env.pair.access_token

    async with grpc.aio.insecure_channel(
        env.target, interceptors=auth_client_interceptors(token)
    ) as channel:
        foreign = UserExecutionContext.from_request(other.user_id)
        with context_scope(foreign), pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(channel, "Whoami")(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_interceptor_uses_only_the_authenticator_protocol(env: Env) -> None:
    class Recording:
        def __init__(self) -> None:
            self.kinds: list[AuthContextKind] = []

        async def authenticate_token(
            self, token: str | None, context_kind: AuthContextKind = AuthContextKind.REST_API
        ) -> AuthResult:
            self.kinds.append(context_kind)
            return await env.service.authenticate_token(token, context_kind)

        async def authenticate_service(
            self, token: str | None, service_id: str | None = None
        ) -> AuthResult:
            return await env.service.authenticate_service(token, service_id)

    recording = Recording()
    server, target = await _start(AuthServerInterceptor(recording))
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            await unary(channel, "Whoami")(b"", metadata=[env.bearer()], timeout=5)
        assert recording.kinds == [AuthContextKind.GRPC]
    finally:
        await server.stop(None)
