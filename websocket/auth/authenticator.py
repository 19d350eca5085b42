"""``WebSocketAuthenticator``: the implementation of ``UnifiedWebSocketAuth``.

It turns a :class:`~websocket.auth.api.HandshakeRequest` into a
:class:`~websocket.auth.api.WebSocketAuthResult` or a typed refusal, in this order:

1. ``Origin`` on the allowlist, when the header is present;
2. no credential in the query string (refused even if a header token is present too);
3. exactly one token, from ``Authorization: Bearer`` or the ``jwt.<base64url>`` subprotocol;
4. the token validated by the auth service (``AuthContextKind.WEBSOCKET``); a failing or
   unreachable auth service is a server error (close 1011), never a pass;
5. the connection's :class:`UserExecutionContext` built from the verified user only;
6. a per-user connection slot taken (at most ``max_connections_per_user``).

It does no I/O of its own: the server adapter feeds it the request and acts on the
outcome. Tokens are never logged.
"""

from __future__ import annotations

import structlog

from auth.api import AuthContextKind, AuthErrorCode, AuthResult, TokenAuthenticator, TokenType
from context.api import ContextError, IDKind, UserExecutionContext, new_id
from websocket.auth.api import (
    AuthServiceUnavailableError,
    ConnectionSlots,
    HandshakeRequest,
    InvalidTokenError,
    TooManyConnectionsError,
    UnifiedWebSocketAuth,
    UserMismatchError,
    WebSocketAuthError,
    WebSocketAuthResult,
)
from websocket.auth.credentials import check_token_text, extract_token, select_subprotocol
from websocket.auth.origins import OriginPolicy
from websocket.auth.settings import WebSocketAuthSettings
from websocket.auth.slots import InMemoryConnectionSlots

__all__ = ["WebSocketAuthenticator"]

log = structlog.get_logger(__name__)

_SERVER_SIDE_CODES = frozenset(
    {AuthErrorCode.AUTH_SERVICE_UNAVAILABLE, AuthErrorCode.INTERNAL_ERROR}
)


class WebSocketAuthenticator(UnifiedWebSocketAuth):
    """Authenticates handshakes against a :class:`~auth.api.TokenAuthenticator`.

    ``auth`` is the auth service (in-process or its gRPC client: only
    ``authenticate_token`` is used). ``slots`` defaults to an in-process counter with the
    configured per-user limit.
    """

    def __init__(
        self,
        auth: TokenAuthenticator,
        *,
        settings: WebSocketAuthSettings | None = None,
        slots: ConnectionSlots | None = None,
    ) -> None:
        self._auth = auth
        self._settings = settings or WebSocketAuthSettings()
        self._origins = OriginPolicy(self._settings.allowed_origins)
        self._slots = slots or InMemoryConnectionSlots(self._settings.max_connections_per_user)

    @property
    def settings(self) -> WebSocketAuthSettings:
        return self._settings

    @property
    def slots(self) -> ConnectionSlots:
        return self._slots

    async def authenticate(self, request: HandshakeRequest) -> WebSocketAuthResult:
        try:
            return await self._authenticate(request)
        except WebSocketAuthError as exc:
            log.info(
                "websocket_auth_refused",
                error_code=exc.error_code.value,
                auth_error_code=_auth_code_of(exc),
                close_code=exc.close_code,
                remote=request.remote_address,
            )
            raise

    async def _authenticate(self, request: HandshakeRequest) -> WebSocketAuthResult:
        max_bytes = self._settings.max_token_bytes
        # A cross-site page is refused before its credentials are even looked at;
        # extract_token then refuses a query-string token before reading any other.
        self._origins.check(request)
        presented = extract_token(request, max_bytes=max_bytes)
        result = await self._validate(presented.token)
        user_id = _verified_user(result)
        connection_id = new_id(IDKind.CONNECTION)
        try:
            context = UserExecutionContext.from_request(
                user_id,
                websocket_client_id=connection_id,
                audit_metadata={
                    "auth_context": AuthContextKind.WEBSOCKET.value,
                    "token_source": presented.source.value,
                },
            )
        except ContextError:
            log.error("websocket_auth_unusable_identity", error="user_id refused by context")
            raise AuthServiceUnavailableError from None
        if not await self._slots.acquire(user_id, connection_id):
            log.warning("websocket_too_many_connections", user_id=user_id, limit=self._slots.limit)
            raise TooManyConnectionsError(self._slots.limit)
        log.info(
            "websocket_authenticated",
            user_id=user_id,
            connection_id=connection_id,
            token_source=presented.source.value,
            remote=request.remote_address,
        )
        return WebSocketAuthResult(
            user_id=user_id,
            connection_id=connection_id,
            email=result.email,
            plan=result.plan,
            roles=result.roles,
            permissions=result.permissions,
            expires_at=result.expires_at,
            token_source=presented.source,
            subprotocol=select_subprotocol(request.subprotocols),
            context=context,
        )

    async def revalidate(self, token: str, *, user_id: str) -> AuthResult:
        try:
            checked = check_token_text(token.strip(), self._settings.max_token_bytes)
            result = await self._validate(checked)
            subject = _verified_user(result)
        except WebSocketAuthError as exc:
            log.info(
                "websocket_refresh_refused",
                user_id=user_id,
                error_code=exc.error_code.value,
                auth_error_code=_auth_code_of(exc),
            )
            raise
        if subject != user_id:
            # A valid token, but of someone else: a hijack attempt or a badly broken client.
            log.warning("websocket_refresh_user_mismatch", user_id=user_id)
            raise UserMismatchError
        log.info("websocket_token_refreshed", user_id=user_id, expires_at=result.expires_at)
        return result

    async def release(self, connection_id: str) -> None:
        await self._slots.release(connection_id)

    async def _validate(self, token: str) -> AuthResult:
        try:
            result = await self._auth.authenticate_token(token, AuthContextKind.WEBSOCKET)
        except Exception as exc:
            # The auth service is a dependency: any failure to get an answer is ours, not
            # the client's, and must never let the connection through.
            log.error("websocket_auth_service_failed", error=type(exc).__name__)
            raise AuthServiceUnavailableError from None
        if not result.success:
            code = result.error_code or AuthErrorCode.INTERNAL_ERROR
            if code in _SERVER_SIDE_CODES:
                log.error("websocket_auth_service_failed", error=code.value)
                raise AuthServiceUnavailableError
            raise InvalidTokenError(code)
        if result.token_type is not None and result.token_type is not TokenType.ACCESS:
            raise InvalidTokenError(AuthErrorCode.WRONG_TOKEN_TYPE)
        return result


def _verified_user(result: AuthResult) -> str:
    if not result.user_id:
        log.error("websocket_auth_service_failed", error="success without a user_id")
        raise AuthServiceUnavailableError
    return result.user_id


def _auth_code_of(error: WebSocketAuthError) -> str | None:
    return error.auth_error_code.value if isinstance(error, InvalidTokenError) else None
