"""The typed interface of ``websocket.auth``: its Protocols, models, wire messages and errors.

``UnifiedWebSocketAuth`` decides whether a WebSocket handshake may become a connection of
a user, and keeps a live connection's token valid afterwards (see :mod:`websocket.auth.expiry`).
It works on a plain view of the handshake (:class:`HandshakeRequest`: path, headers,
offered subprotocols), so it knows nothing of the server library that produced it.

Every refusal is a :class:`WebSocketAuthError` subclass with a stable ``error_code``, the
WebSocket close code to end the connection with (1008 policy violation, 1011 server error)
and a message that is safe to show the client: it never contains a token, and never
anything about another user.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from auth.api import AuthErrorCode, AuthResult, Plan
from context.api import UserExecutionContext

__all__ = [
    "AUTH_SUBPROTOCOL",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "AuthServiceUnavailableError",
    "AuthenticationErrorMessage",
    "AuthenticationSuccessMessage",
    "ConnectionSlots",
    "HandshakeRequest",
    "InvalidTokenError",
    "MultipleTokensError",
    "NoTokenError",
    "OriginNotAllowedError",
    "TokenExpiredError",
    "TokenExpiringMessage",
    "TokenInQueryStringError",
    "TokenRefreshedMessage",
    "TokenSource",
    "TooManyConnectionsError",
    "UnifiedWebSocketAuth",
    "UserMismatchError",
    "WebSocketAuthError",
    "WebSocketAuthErrorCode",
    "WebSocketAuthResult",
    "authentication_error_message",
    "authentication_success_message",
]

#: The subprotocol the server selects when a client authenticates through subprotocols.
AUTH_SUBPROTOCOL = "jwt-auth"
#: Prefix of the subprotocol that carries ``base64url(access token)``.
TOKEN_SUBPROTOCOL_PREFIX = "jwt."  # noqa: S105  (a protocol prefix, not a secret)

#: RFC 6455 close codes used by this package.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011


class WebSocketAuthErrorCode(enum.StrEnum):
    """Stable, machine-readable reasons for refusing a connection. Never renamed."""

    NO_TOKEN = "NO_TOKEN"  # noqa: S105  (an error code, not a secret)
    INVALID_TOKEN = "INVALID_TOKEN"  # noqa: S105
    TOKEN_IN_QUERY_STRING = "TOKEN_IN_QUERY_STRING"  # noqa: S105
    MULTIPLE_TOKENS = "MULTIPLE_TOKENS"
    ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    AUTH_SERVICE_UNAVAILABLE = "AUTH_SERVICE_UNAVAILABLE"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"  # noqa: S105
    USER_MISMATCH = "USER_MISMATCH"


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class WebSocketAuthError(Exception):
    """Base of every refusal of this package.

    ``error_code`` goes to the client in ``authentication_error``; ``close_code`` is the
    code the connection is closed with; ``message`` is client-safe.
    """

    error_code: ClassVar[WebSocketAuthErrorCode]
    close_code: ClassVar[int] = CLOSE_POLICY_VIOLATION
    default_message: ClassVar[str] = "Authentication failed."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, error_code={self.error_code.value})"

    def to_message(self) -> AuthenticationErrorMessage:
        return authentication_error_message(self)


class NoTokenError(WebSocketAuthError):
    """No access token was presented (neither header nor subprotocol)."""

    error_code = WebSocketAuthErrorCode.NO_TOKEN
    default_message = (
        "No access token: send 'Authorization: Bearer <token>' or the subprotocols "
        "'jwt-auth' and 'jwt.<base64url token>'."
    )


class InvalidTokenError(WebSocketAuthError):
    """The presented token is malformed or was rejected by the auth service.

    ``auth_error_code`` is the auth service's reason (``EXPIRED``, ``BAD_SIGNATURE`` ...);
    it is named in the client message, since the token is the client's own.
    """

    error_code = WebSocketAuthErrorCode.INVALID_TOKEN
    default_message = "The access token was rejected."

    def __init__(self, auth_error_code: AuthErrorCode, message: str | None = None) -> None:
        self.auth_error_code = auth_error_code
        super().__init__(
            message or f"The access token was rejected (reason: {auth_error_code.value})."
        )


class TokenInQueryStringError(WebSocketAuthError):
    """A token was put in the URL, where proxies and logs keep it. Always refused."""

    error_code = WebSocketAuthErrorCode.TOKEN_IN_QUERY_STRING
    default_message = (
        "Tokens in the query string are refused: use the Authorization header or the "
        "jwt-auth subprotocol."
    )


class MultipleTokensError(WebSocketAuthError):
    """More than one credential was presented; which one counts would be ambiguous."""

    error_code = WebSocketAuthErrorCode.MULTIPLE_TOKENS
    default_message = "Present exactly one access token (header or subprotocol, once)."


class OriginNotAllowedError(WebSocketAuthError):
    """The ``Origin`` header names a site that is not on the allowlist."""

    error_code = WebSocketAuthErrorCode.ORIGIN_NOT_ALLOWED
    default_message = "This Origin is not allowed to connect."


class TooManyConnectionsError(WebSocketAuthError):
    """The user already holds the maximum number of connections."""

    error_code = WebSocketAuthErrorCode.TOO_MANY_CONNECTIONS
    default_message = "Too many open connections for this user."

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        bound = "" if limit is None else f" (at most {limit})"
        super().__init__(
            f"Too many open connections for this user{bound}; close one and try again."
        )


class AuthServiceUnavailableError(WebSocketAuthError):
    """The token could not be checked (auth service down or failing): a server error."""

    error_code = WebSocketAuthErrorCode.AUTH_SERVICE_UNAVAILABLE
    close_code = CLOSE_INTERNAL_ERROR
    default_message = "Authentication is temporarily unavailable; try again later."


class TokenExpiredError(WebSocketAuthError):
    """A live connection's token expired and no valid replacement came within the grace."""

    error_code = WebSocketAuthErrorCode.TOKEN_EXPIRED
    default_message = "The access token expired and was not refreshed in time."


class UserMismatchError(WebSocketAuthError):
    """A refresh presented a valid token of a different user than the connection's."""

    error_code = WebSocketAuthErrorCode.USER_MISMATCH
    default_message = "The refreshed token belongs to a different user."


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What the authenticator needs from an opening handshake, as plain values.

    ``path`` is the request target including any query string; ``headers`` are the raw
    ``(name, value)`` pairs in arrival order (repeats kept, so duplicates can be refused);
    ``subprotocols`` are the offered ``Sec-WebSocket-Protocol`` values, parsed.
    """

    path: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    subprotocols: tuple[str, ...] = field(default=(), repr=False)
    remote_address: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        # Credentials hide in headers, subprotocols and the query string: show names only.
        names = sorted({name.lower() for name, _ in self.headers})
        return (
            f"HandshakeRequest(path={self.path.partition('?')[0]!r}, headers={names}, "
            f"subprotocols={len(self.subprotocols)}, remote_address={self.remote_address!r})"
        )

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


class TokenSource(enum.StrEnum):
    """Where the access token of a connection came from."""

    AUTHORIZATION_HEADER = "authorization_header"
    SUBPROTOCOL = "subprotocol"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebSocketAuthResult(_Model):
    """An authenticated connection: who it belongs to and its identity context.

    ``context`` is the connection's :class:`UserExecutionContext` (``websocket_client_id``
    = ``connection_id``); per-run contexts are derived from its user and client IDs.
    ``subprotocol`` is what the server must select (``jwt-auth`` when it was offered).
    """

    user_id: str
    connection_id: str
    email: str | None = None
    plan: Plan | None = None
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    expires_at: datetime | None = None
    token_source: TokenSource
    subprotocol: str | None = None
    context: UserExecutionContext


class AuthenticationSuccessMessage(_Model):
    type: Literal["authentication_success"] = "authentication_success"
    user_id: str
    connection_id: str
    permissions: tuple[str, ...]


class AuthenticationErrorMessage(_Model):
    type: Literal["authentication_error"] = "authentication_error"
    error_code: WebSocketAuthErrorCode
    message: str


class TokenExpiringMessage(_Model):
    """Sent before the connection's token expires; ``expires_in`` is whole seconds (>= 0)."""

    type: Literal["token_expiring"] = "token_expiring"
    expires_in: int


class TokenRefreshedMessage(_Model):
    """Sent after a ``refresh_token`` message was accepted; ``expires_in`` of the new token."""

    type: Literal["token_refreshed"] = "token_refreshed"
    expires_in: int


def authentication_success_message(result: WebSocketAuthResult) -> AuthenticationSuccessMessage:
    """``{"type":"authentication_success","user_id","connection_id","permissions"}``."""
    return AuthenticationSuccessMessage(
        user_id=result.user_id,
        connection_id=result.connection_id,
        permissions=result.permissions,
    )


def authentication_error_message(error: WebSocketAuthError) -> AuthenticationErrorMessage:
    """``{"type":"authentication_error","error_code","message"}``."""
    return AuthenticationErrorMessage(error_code=error.error_code, message=error.message)


# --------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------


@runtime_checkable
class ConnectionSlots(Protocol):
    """Per-user connection accounting: a handshake takes a slot, a closed connection frees it.

    ``acquire`` must check and take atomically, so concurrent handshakes of one user can
    never exceed the limit.
    """

    @property
    def limit(self) -> int: ...

    async def acquire(self, user_id: str, connection_id: str) -> bool:
        """Take a slot for ``connection_id``; False when ``user_id`` is at the limit."""
        ...

    async def release(self, connection_id: str) -> None:
        """Free the slot of ``connection_id`` (idempotent; unknown IDs are ignored)."""
        ...

    def count(self, user_id: str) -> int:
        """How many slots ``user_id`` holds now."""
        ...


@runtime_checkable
class UnifiedWebSocketAuth(Protocol):
    """Authenticates WebSocket handshakes and re-validates tokens on live connections."""

    async def authenticate(self, request: HandshakeRequest) -> WebSocketAuthResult:
        """Admit a handshake or raise a :class:`WebSocketAuthError`.

        On success a connection slot is held for ``result.connection_id`` until
        :meth:`release` is called.
        """
        ...

    async def revalidate(self, token: str, *, user_id: str) -> AuthResult:
        """Check a replacement token for the connection of ``user_id``.

        Returns the successful :class:`AuthResult`; raises :class:`InvalidTokenError`
        for a bad token, :class:`UserMismatchError` for another user's valid token and
        :class:`AuthServiceUnavailableError` when it cannot be checked.
        """
        ...

    async def release(self, connection_id: str) -> None:
        """Free what :meth:`authenticate` holds for a connection that has ended."""
        ...
