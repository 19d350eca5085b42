"""WebSocketAuthenticator against the real local auth service (SQLite under tmp_path)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import structlog

from auth.api import AuthContextKind, AuthErrorCode, AuthResult
from auth.service import LocalAuthService
from auth.testing import fast_settings
from context.api import IDKind, is_valid_id
from websocket.auth.api import (
    AuthServiceUnavailableError,
    HandshakeRequest,
    InvalidTokenError,
    OriginNotAllowedError,
    TokenInQueryStringError,
    TokenSource,
    TooManyConnectionsError,
    UserMismatchError,
    WebSocketAuthErrorCode,
    authentication_error_message,
    authentication_success_message,
)
from websocket.auth.authenticator import WebSocketAuthenticator
from websocket.auth.credentials import encode_token_subprotocol
from websocket.auth.settings import WebSocketAuthSettings
from websocket.auth.testing import (
    TestUser,
    login_again,
    register_user,
    unreachable_auth_service,
)


def bearer(token: str, *, path: str = "/ws", origin: str | None = None) -> HandshakeRequest:
    headers = [("Authorization", f"Bearer {token}")]
    if origin is not None:
        headers.append(("Origin", origin))
    return HandshakeRequest(path=path, headers=tuple(headers))


@pytest.fixture
def authenticator(auth_service: LocalAuthService) -> WebSocketAuthenticator:
    return WebSocketAuthenticator(
        auth_service,
        settings=WebSocketAuthSettings(allowed_origins=("https://app.example.com",)),
    )


# ----- success --------------------------------------------------------------------------------


async def test_header_token_authenticates_and_builds_the_connection_context(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    result = await authenticator.authenticate(bearer(alice.access_token))
    assert result.user_id == alice.user_id
    assert is_valid_id(result.connection_id, IDKind.CONNECTION)
    assert result.token_source is TokenSource.AUTHORIZATION_HEADER
    assert result.subprotocol is None
    assert result.expires_at is not None
    assert result.context.user_id == alice.user_id
    assert result.context.websocket_client_id == result.connection_id
    assert result.context.audit_metadata["auth_context"] == "websocket"
    assert authenticator.slots.count(alice.user_id) == 1


async def test_subprotocol_token_authenticates_and_selects_jwt_auth(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    request = HandshakeRequest(
        path="/ws", subprotocols=("jwt-auth", encode_token_subprotocol(alice.access_token))
    )
    result = await authenticator.authenticate(request)
    assert result.user_id == alice.user_id
    assert result.token_source is TokenSource.SUBPROTOCOL
    assert result.subprotocol == "jwt-auth"


async def test_each_connection_gets_its_own_id_and_context(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    first = await authenticator.authenticate(bearer(alice.access_token))
    second = await authenticator.authenticate(bearer(alice.access_token))
    assert first.connection_id != second.connection_id
    assert first.context.request_id != second.context.request_id


async def test_allowed_origin_passes(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    result = await authenticator.authenticate(
        bearer(alice.access_token, origin="https://app.example.com")
    )
    assert result.user_id == alice.user_id


async def test_success_message_has_exactly_the_designed_fields(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    result = await authenticator.authenticate(bearer(alice.access_token))
    wire = authentication_success_message(result).model_dump(mode="json")
    assert wire == {
        "type": "authentication_success",
        "user_id": alice.user_id,
        "connection_id": result.connection_id,
        "permissions": list(result.permissions),
    }


# ----- refused tokens -------------------------------------------------------------------------


async def test_garbage_token_is_invalid_format(authenticator: WebSocketAuthenticator) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        await authenticator.authenticate(bearer("not-a-jwt"))
    assert caught.value.auth_error_code is AuthErrorCode.INVALID_FORMAT
    assert caught.value.close_code == 1008


async def test_tampered_signature_is_refused(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    head, payload, signature = alice.access_token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(InvalidTokenError) as caught:
        await authenticator.authenticate(bearer(f"{head}.{payload}.{flipped}"))
    assert caught.value.auth_error_code is AuthErrorCode.BAD_SIGNATURE


async def test_token_of_another_issuer_key_is_refused(
    authenticator: WebSocketAuthenticator, tmp_path: Path
) -> None:
    async with await LocalAuthService.create(fast_settings(tmp_path / "other")) as other:
        stranger = await register_user(other, "stranger")
    with pytest.raises(InvalidTokenError) as caught:
        await authenticator.authenticate(bearer(stranger.access_token))
    assert caught.value.auth_error_code is AuthErrorCode.UNKNOWN_KEY


async def test_expired_token_is_refused(tmp_path: Path) -> None:
    now = [time.time() - 3600]  # tokens are issued an hour ago (15 min lifetime)
    settings = fast_settings(tmp_path / "auth-clocked")
    async with await LocalAuthService.create(settings, clock=lambda: now[0]) as service:
        user = await register_user(service, "late")
        now[0] = time.time()
        authenticator = WebSocketAuthenticator(service)
        with pytest.raises(InvalidTokenError) as caught:
            await authenticator.authenticate(bearer(user.access_token))
    assert caught.value.auth_error_code is AuthErrorCode.EXPIRED
    assert caught.value.error_code is WebSocketAuthErrorCode.INVALID_TOKEN
    assert "EXPIRED" in caught.value.message


async def test_revoked_token_is_refused(
    authenticator: WebSocketAuthenticator, auth_service: LocalAuthService, alice: TestUser
) -> None:
    await auth_service.logout(alice.access_token)
    with pytest.raises(InvalidTokenError) as caught:
        await authenticator.authenticate(bearer(alice.access_token))
    assert caught.value.auth_error_code is AuthErrorCode.REVOKED


async def test_refresh_token_is_not_an_access_token(
    authenticator: WebSocketAuthenticator, auth_service: LocalAuthService, alice: TestUser
) -> None:
    pair = await auth_service.login(alice.email, "correct horse battery staple")
    with pytest.raises(InvalidTokenError) as caught:
        await authenticator.authenticate(bearer(pair.refresh_token))
    assert caught.value.auth_error_code is AuthErrorCode.WRONG_TOKEN_TYPE


async def test_query_string_token_is_refused_even_with_a_valid_header(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    with pytest.raises(TokenInQueryStringError):
        await authenticator.authenticate(
            bearer(alice.access_token, path=f"/ws?token={alice.access_token}")
        )
    assert authenticator.slots.count(alice.user_id) == 0


async def test_disallowed_origin_is_refused_even_with_a_valid_token(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    with pytest.raises(OriginNotAllowedError):
        await authenticator.authenticate(
            bearer(alice.access_token, origin="https://evil.example.com")
        )
    assert authenticator.slots.count(alice.user_id) == 0


async def test_error_message_has_exactly_the_designed_fields(
    authenticator: WebSocketAuthenticator,
) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        await authenticator.authenticate(bearer("not-a-jwt"))
    wire = authentication_error_message(caught.value).model_dump(mode="json")
    assert wire == {
        "type": "authentication_error",
        "error_code": "INVALID_TOKEN",
        "message": caught.value.message,
    }


async def test_tokens_never_reach_the_log(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    with structlog.testing.capture_logs() as logs:
        await authenticator.authenticate(bearer(alice.access_token))
        with pytest.raises(TokenInQueryStringError):
            await authenticator.authenticate(
                bearer(alice.access_token, path=f"/ws?jwt={alice.access_token}")
            )
        await authenticator.revalidate(alice.access_token, user_id=alice.user_id)
    assert logs
    assert alice.access_token not in repr(logs)
    assert alice.access_token.split(".")[2] not in repr(logs)


# ----- connection limit -----------------------------------------------------------------------


async def test_sixth_connection_of_a_user_is_refused(
    authenticator: WebSocketAuthenticator, alice: TestUser, bob: TestUser
) -> None:
    admitted = [await authenticator.authenticate(bearer(alice.access_token)) for _ in range(5)]
    with pytest.raises(TooManyConnectionsError) as caught:
        await authenticator.authenticate(bearer(alice.access_token))
    assert caught.value.error_code is WebSocketAuthErrorCode.TOO_MANY_CONNECTIONS
    assert caught.value.close_code == 1008
    assert "at most 5" in caught.value.message
    # Another user is unaffected, and a closed connection frees its slot.
    await authenticator.authenticate(bearer(bob.access_token))
    await authenticator.release(admitted[0].connection_id)
    await authenticator.authenticate(bearer(alice.access_token))


async def test_limit_is_configurable(auth_service: LocalAuthService, alice: TestUser) -> None:
    authenticator = WebSocketAuthenticator(
        auth_service, settings=WebSocketAuthSettings(max_connections_per_user=2)
    )
    await authenticator.authenticate(bearer(alice.access_token))
    await authenticator.authenticate(bearer(alice.access_token))
    with pytest.raises(TooManyConnectionsError):
        await authenticator.authenticate(bearer(alice.access_token))


async def test_concurrent_handshakes_of_one_user_never_exceed_the_limit(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    outcomes = await asyncio.gather(
        *(authenticator.authenticate(bearer(alice.access_token)) for _ in range(12)),
        return_exceptions=True,
    )
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, TooManyConnectionsError)]
    assert len(admitted) == 5
    assert len(refused) == 7


# ----- auth service failures ------------------------------------------------------------------


async def test_unreachable_auth_service_is_a_server_error(alice: TestUser) -> None:
    async with unreachable_auth_service() as down:
        authenticator = WebSocketAuthenticator(down)
        with pytest.raises(AuthServiceUnavailableError) as caught:
            await authenticator.authenticate(bearer(alice.access_token))
    assert caught.value.close_code == 1011
    assert caught.value.error_code is WebSocketAuthErrorCode.AUTH_SERVICE_UNAVAILABLE
    assert authenticator.slots.count(alice.user_id) == 0


class _FailingAuth:
    """An auth dependency whose calls fail (as a broken network client would)."""

    async def authenticate_token(
        self, token: str | None, context_kind: AuthContextKind = AuthContextKind.REST_API
    ) -> AuthResult:
        raise ConnectionResetError("connection reset by peer")

    async def authenticate_service(
        self, token: str | None, service_id: str | None = None
    ) -> AuthResult:
        raise ConnectionResetError("connection reset by peer")


async def test_auth_dependency_raising_is_a_server_error_not_a_pass(alice: TestUser) -> None:
    authenticator = WebSocketAuthenticator(_FailingAuth())
    with pytest.raises(AuthServiceUnavailableError) as caught:
        await authenticator.authenticate(bearer(alice.access_token))
    assert caught.value.close_code == 1011
    assert authenticator.slots.count(alice.user_id) == 0


# ----- revalidation (token refresh on a live connection) --------------------------------------


async def test_revalidate_accepts_a_new_token_of_the_same_user(
    authenticator: WebSocketAuthenticator, auth_service: LocalAuthService, alice: TestUser
) -> None:
    fresh = await login_again(auth_service, alice)
    result = await authenticator.revalidate(fresh, user_id=alice.user_id)
    assert result.user_id == alice.user_id


async def test_revalidate_refuses_another_users_valid_token(
    authenticator: WebSocketAuthenticator, alice: TestUser, bob: TestUser
) -> None:
    with pytest.raises(UserMismatchError) as caught:
        await authenticator.revalidate(bob.access_token, user_id=alice.user_id)
    assert caught.value.close_code == 1008
    assert bob.user_id not in caught.value.message


async def test_revalidate_refuses_a_bad_token(
    authenticator: WebSocketAuthenticator, alice: TestUser
) -> None:
    with pytest.raises(InvalidTokenError):
        await authenticator.revalidate("not-a-jwt", user_id=alice.user_id)
    with pytest.raises(InvalidTokenError):
        await authenticator.revalidate("", user_id=alice.user_id)
