"""``auth``: the SSOT of authentication (``UnifiedAuthenticationService``).

This package root re-exports the typed interface only (:mod:`auth.api`). The in-process
implementation is :class:`auth.service.LocalAuthService`; the gRPC pieces live in
:mod:`auth.grpc_server`, :mod:`auth.grpc_client` and :mod:`auth.interceptors`; local
verification against the published keys in :mod:`auth.jwks_verifier`.
"""

from auth.api import (
    Account,
    AccountExistsError,
    AccountNotFoundError,
    AuthContextKind,
    AuthError,
    AuthErrorCode,
    AuthHealth,
    AuthResult,
    AuthStats,
    HealthState,
    InternalAuthError,
    InvalidCredentialsError,
    InvalidRequestError,
    JsonWebKey,
    JsonWebKeySet,
    PermissionDeniedError,
    Plan,
    RateLimitedError,
    RpcStatus,
    ServiceToken,
    ServiceUnavailableError,
    TokenAuthenticator,
    TokenError,
    TokenPair,
    TokenType,
    UnifiedAuthenticationService,
    error_from_code,
)

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
