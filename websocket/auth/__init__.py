"""``websocket.auth``: the SSOT of WebSocket authentication (``UnifiedWebSocketAuth``).

The interface is :mod:`websocket.auth.api`; :class:`WebSocketAuthenticator` implements
it (handshake credentials, Origin allowlist, per-user connection slots), and
:mod:`websocket.auth.expiry` keeps a live connection's token valid.
"""

from websocket.auth.api import (
    AUTH_SUBPROTOCOL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    TOKEN_SUBPROTOCOL_PREFIX,
    AuthenticationErrorMessage,
    AuthenticationSuccessMessage,
    AuthServiceUnavailableError,
    ConnectionSlots,
    HandshakeRequest,
    InvalidTokenError,
    MultipleTokensError,
    NoTokenError,
    OriginNotAllowedError,
    TokenExpiredError,
    TokenExpiringMessage,
    TokenInQueryStringError,
    TokenRefreshedMessage,
    TokenSource,
    TooManyConnectionsError,
    UnifiedWebSocketAuth,
    UserMismatchError,
    WebSocketAuthError,
    WebSocketAuthErrorCode,
    WebSocketAuthResult,
    authentication_error_message,
    authentication_success_message,
)
from websocket.auth.authenticator import WebSocketAuthenticator
from websocket.auth.credentials import encode_token_subprotocol, select_subprotocol
from websocket.auth.expiry import (
    Clock,
    ExpiryPolicy,
    ExpiryTransport,
    ExpiryWatcher,
    SystemClock,
    TokenExpiry,
)
from websocket.auth.origins import OriginPolicy
from websocket.auth.settings import WebSocketAuthSettings
from websocket.auth.slots import InMemoryConnectionSlots

__all__ = [
    "AUTH_SUBPROTOCOL",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "AuthServiceUnavailableError",
    "AuthenticationErrorMessage",
    "AuthenticationSuccessMessage",
    "Clock",
    "ConnectionSlots",
    "ExpiryPolicy",
    "ExpiryTransport",
    "ExpiryWatcher",
    "HandshakeRequest",
    "InMemoryConnectionSlots",
    "InvalidTokenError",
    "MultipleTokensError",
    "NoTokenError",
    "OriginNotAllowedError",
    "OriginPolicy",
    "SystemClock",
    "TokenExpiredError",
    "TokenExpiringMessage",
    "TokenExpiry",
    "TokenInQueryStringError",
    "TokenRefreshedMessage",
    "TokenSource",
    "TooManyConnectionsError",
    "UnifiedWebSocketAuth",
    "UserMismatchError",
    "WebSocketAuthError",
    "WebSocketAuthErrorCode",
    "WebSocketAuthResult",
    "WebSocketAuthSettings",
    "WebSocketAuthenticator",
    "authentication_error_message",
    "authentication_success_message",
    "encode_token_subprotocol",
    "select_subprotocol",
]
