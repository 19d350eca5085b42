"""The typed interface of the auth package: the Protocol, its models and its errors.

Callers depend on :class:`UnifiedAuthenticationService` only; whether the object behind it
is the in-process :class:`auth.service.LocalAuthService` or the gRPC client
:class:`auth.grpc_client.GrpcAuthClient` is the composition root's choice.

Every failure is an :class:`AuthError` subclass carrying a stable :class:`AuthErrorCode`
and the gRPC status it maps to (:class:`RpcStatus`, named like ``grpc.StatusCode`` members
so this module needs no gRPC import). Token validation through
:meth:`UnifiedAuthenticationService.authenticate_token` never raises for a bad token: it
returns an :class:`AuthResult` with ``success=False`` and the error code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Account",
    "AccountExistsError",
    "AccountNotFoundError",
    "AuthContextKind",
    "AuthError",
    "AuthErrorCode",
    "AuthHealth",
    "AuthResult",
    "AuthStats",
    "HealthState",
    "InternalAuthError",
    "InvalidCredentialsError",
    "InvalidRequestError",
    "JsonWebKey",
    "JsonWebKeySet",
    "PermissionDeniedError",
    "Plan",
    "RateLimitedError",
    "RpcStatus",
    "ServiceToken",
    "ServiceUnavailableError",
    "TokenAuthenticator",
    "TokenError",
    "TokenPair",
    "TokenType",
    "UnifiedAuthenticationService",
    "error_from_code",
]


class Plan(enum.StrEnum):
    """The commercial plan of an account; carried in every token as the ``plan`` claim."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"
    DEVELOPER = "developer"


class TokenType(enum.StrEnum):
    """The ``token_type`` claim. Each type has its own audience."""

    ACCESS = "access"
    REFRESH = "refresh"
    SERVICE = "service"


class AuthContextKind(enum.StrEnum):
    """Where a token was presented; recorded in results, statistics and logs."""

    REST_API = "rest_api"
    WEBSOCKET = "websocket"
    GRPC = "grpc"
    INTERNAL_SERVICE = "internal_service"


class RpcStatus(enum.StrEnum):
    """The gRPC status an error maps to; values are ``grpc.StatusCode`` member names."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class AuthErrorCode(enum.StrEnum):
    """Stable, machine-readable reasons. Never renamed: clients switch on them."""

    # Token presentation and format.
    NO_TOKEN = "NO_TOKEN"  # noqa: S105  (an error code, not a secret)
    INVALID_FORMAT = "INVALID_FORMAT"
    INVALID_HEADER = "INVALID_HEADER"
    # Signature and keys.
    BAD_SIGNATURE = "BAD_SIGNATURE"
    DISALLOWED_ALGORITHM = "DISALLOWED_ALGORITHM"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    # Claims.
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    WRONG_AUDIENCE = "WRONG_AUDIENCE"
    WRONG_ISSUER = "WRONG_ISSUER"
    WRONG_TOKEN_TYPE = "WRONG_TOKEN_TYPE"  # noqa: S105  (an error code)
    WRONG_SUBJECT = "WRONG_SUBJECT"
    MISSING_CLAIM = "MISSING_CLAIM"
    INVALID_CLAIM = "INVALID_CLAIM"
    REVOKED = "REVOKED"
    # Accounts and requests.
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    INVALID_REQUEST = "INVALID_REQUEST"
    ACCOUNT_EXISTS = "ACCOUNT_EXISTS"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    CONTEXT_MISMATCH = "CONTEXT_MISMATCH"
    RATE_LIMITED = "RATE_LIMITED"
    # Infrastructure.
    AUTH_SERVICE_UNAVAILABLE = "AUTH_SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class AuthError(Exception):
    """Base of every error this package raises.

    ``error_code`` is stable and travels over gRPC (trailing metadata), so a remote caller
    gets back the same subclass and code. Messages never contain a token, password or
    secret, and never another user's data.
    """

    status: ClassVar[RpcStatus] = RpcStatus.INTERNAL
    default_code: ClassVar[AuthErrorCode] = AuthErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, error_code: AuthErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code: AuthErrorCode = error_code or self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, error_code={self.error_code.value})"


class InvalidRequestError(AuthError):
    """The request itself is malformed (bad email, weak password, bad field)."""

    status = RpcStatus.INVALID_ARGUMENT
    default_code = AuthErrorCode.INVALID_REQUEST


class TokenError(AuthError):
    """A presented token was rejected; ``error_code`` says why."""

    status = RpcStatus.UNAUTHENTICATED
    default_code = AuthErrorCode.INVALID_FORMAT


class InvalidCredentialsError(AuthError):
    """Wrong email, password, service id or service secret (never says which)."""

    status = RpcStatus.UNAUTHENTICATED
    default_code = AuthErrorCode.INVALID_CREDENTIALS


class PermissionDeniedError(AuthError):
    """The caller is authenticated but not allowed to do this."""

    status = RpcStatus.PERMISSION_DENIED
    default_code = AuthErrorCode.PERMISSION_DENIED


class AccountNotFoundError(AuthError):
    status = RpcStatus.NOT_FOUND
    default_code = AuthErrorCode.ACCOUNT_NOT_FOUND


class AccountExistsError(AuthError):
    status = RpcStatus.ALREADY_EXISTS
    default_code = AuthErrorCode.ACCOUNT_EXISTS


class RateLimitedError(AuthError):
    """Too many attempts; ``retry_after`` seconds until the window frees a slot."""

    status = RpcStatus.RESOURCE_EXHAUSTED
    default_code = AuthErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        error_code: AuthErrorCode | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, error_code=error_code)
        self.retry_after = retry_after


class ServiceUnavailableError(AuthError):
    """The auth service (or its store) cannot be reached right now; retry later."""

    status = RpcStatus.UNAVAILABLE
    default_code = AuthErrorCode.AUTH_SERVICE_UNAVAILABLE


class InternalAuthError(AuthError):
    status = RpcStatus.INTERNAL
    default_code = AuthErrorCode.INTERNAL_ERROR


_TOKEN_CODES = frozenset(
    {
        AuthErrorCode.NO_TOKEN,
        AuthErrorCode.INVALID_FORMAT,
        AuthErrorCode.INVALID_HEADER,
        AuthErrorCode.BAD_SIGNATURE,
        AuthErrorCode.DISALLOWED_ALGORITHM,
        AuthErrorCode.UNKNOWN_KEY,
        AuthErrorCode.EXPIRED,
        AuthErrorCode.NOT_YET_VALID,
        AuthErrorCode.WRONG_AUDIENCE,
        AuthErrorCode.WRONG_ISSUER,
        AuthErrorCode.WRONG_TOKEN_TYPE,
        AuthErrorCode.WRONG_SUBJECT,
        AuthErrorCode.MISSING_CLAIM,
        AuthErrorCode.INVALID_CLAIM,
        AuthErrorCode.REVOKED,
    }
)

_ERROR_CLASS_BY_CODE: Mapping[AuthErrorCode, type[AuthError]] = {
    **dict.fromkeys(_TOKEN_CODES, TokenError),
    AuthErrorCode.INVALID_CREDENTIALS: InvalidCredentialsError,
    AuthErrorCode.INVALID_REQUEST: InvalidRequestError,
    AuthErrorCode.ACCOUNT_EXISTS: AccountExistsError,
    AuthErrorCode.ACCOUNT_NOT_FOUND: AccountNotFoundError,
    AuthErrorCode.PERMISSION_DENIED: PermissionDeniedError,
    AuthErrorCode.CONTEXT_MISMATCH: PermissionDeniedError,
    AuthErrorCode.RATE_LIMITED: RateLimitedError,
    AuthErrorCode.AUTH_SERVICE_UNAVAILABLE: ServiceUnavailableError,
    AuthErrorCode.INTERNAL_ERROR: InternalAuthError,
}


def error_from_code(code: str, message: str) -> AuthError:
    """Rebuild the typed error for a code received over the wire.

    An unknown code (a newer server) becomes :class:`InternalAuthError` so a caller always
    gets an :class:`AuthError`.
    """
    try:
        known = AuthErrorCode(code)
    except ValueError:
        return InternalAuthError(message)
    return _ERROR_CLASS_BY_CODE[known](message, error_code=known)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Account(_Model):
    """An account as callers see it (never the password hash)."""

    user_id: str
    email: str
    display_name: str = ""
    plan: Plan = Plan.FREE
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    created_at: datetime


class TokenPair(_Model):
    """What login and refresh hand out. ``session_id`` names the refresh-token family."""

    user_id: str
    session_id: str
    access_token: str = Field(repr=False)
    refresh_token: str = Field(repr=False)
    token_type: str = "Bearer"  # noqa: S105  (the OAuth token_type, not a secret)
    access_expires_at: datetime
    refresh_expires_at: datetime


class ServiceToken(_Model):
    service_id: str
    token: str = Field(repr=False)
    expires_at: datetime


class AuthResult(_Model):
    """Outcome of validating a token. ``success=False`` carries ``error_code`` and ``error``."""

    success: bool
    user_id: str | None = None
    email: str | None = None
    plan: Plan | None = None
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    token_type: TokenType | None = None
    session_id: str | None = None
    jti: str | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    context_kind: AuthContextKind = AuthContextKind.REST_API
    error_code: AuthErrorCode | None = None
    error: str | None = None
    validated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def valid(self) -> bool:
        return self.success

    @classmethod
    def failure(
        cls, code: AuthErrorCode, message: str, context_kind: AuthContextKind
    ) -> AuthResult:
        return cls(success=False, error_code=code, error=message, context_kind=context_kind)


class JsonWebKey(_Model):
    """One public key of a JWKS (RFC 7517). Only the members we publish."""

    kty: str
    kid: str
    alg: str
    use: str = "sig"
    crv: str | None = None
    x: str | None = None
    n: str | None = None
    e: str | None = None


class JsonWebKeySet(_Model):
    keys: tuple[JsonWebKey, ...] = ()

    def by_kid(self) -> dict[str, JsonWebKey]:
        return {key.kid: key for key in self.keys}


class AuthStats(_Model):
    """Counters of one service or client instance since it started."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    by_context: dict[str, int] = Field(default_factory=dict)
    by_error_code: dict[str, int] = Field(default_factory=dict)
    circuit_state: str | None = None


class HealthState(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


class AuthHealth(_Model):
    state: HealthState
    details: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------


@runtime_checkable
class TokenAuthenticator(Protocol):
    """The part of the service a token check needs (interceptors, gateways, verifiers)."""

    async def authenticate_token(
        self, token: str | None, context_kind: AuthContextKind = AuthContextKind.REST_API
    ) -> AuthResult:
        """Validate an access token; never raises for a bad token."""
        ...

    async def authenticate_service(
        self, token: str | None, service_id: str | None = None
    ) -> AuthResult:
        """Validate a service token, optionally for one service id; never raises for a bad token."""
        ...


@runtime_checkable
class UnifiedAuthenticationService(TokenAuthenticator, Protocol):
    """Accounts, login, tokens, revocation and key publication.

    Implemented in-process by ``auth.service.LocalAuthService`` and over gRPC by
    ``auth.grpc_client.GrpcAuthClient``; both behave the same, error codes included.
    """

    def validate_jwt_format(self, token: object) -> bool:
        """Cheap syntactic check (compact JWS, base64url, 3 non-empty parts, size limit)."""
        ...

    async def register(
        self, email: str, password: str, display_name: str = "", *, client_id: str | None = None
    ) -> Account:
        """Create an account on the free plan. Raises AccountExistsError, InvalidRequestError,
        RateLimitedError (per ``client_id``)."""
        ...

    async def login(self, email: str, password: str, *, client_id: str | None = None) -> TokenPair:
        """Start a session. Raises InvalidCredentialsError (same for unknown user and wrong
        password) or RateLimitedError (per account and per ``client_id``)."""
        ...

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate a refresh token. Replaying a rotated one revokes its whole session."""
        ...

    async def logout(self, token: str) -> None:
        """Revoke the session of an access or refresh token (idempotent)."""
        ...

    async def revoke_user_tokens(self, user_id: str, *, before: datetime | None = None) -> datetime:
        """Revoke every token of ``user_id`` issued at or before ``before`` (default now)."""
        ...

    async def update_account(
        self,
        user_id: str,
        *,
        plan: Plan | None = None,
        roles: tuple[str, ...] | None = None,
        permissions: tuple[str, ...] | None = None,
    ) -> Account:
        """Change an account's entitlements (administrators and services only over gRPC).
        Tokens issued later carry the new values."""
        ...

    async def issue_service_token(
        self, service_id: str, service_secret: str, *, client_id: str | None = None
    ) -> ServiceToken:
        """Exchange configured service credentials for a short-lived service token."""
        ...

    async def get_jwks(self) -> JsonWebKeySet:
        """Public keys that currently verify tokens (signer first)."""
        ...

    async def stats(self) -> AuthStats: ...

    async def health(self) -> AuthHealth: ...
