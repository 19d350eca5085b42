"""Token authentication shared by every implementation that verifies tokens itself.

The auth service (:class:`auth.service.LocalAuthService`) and a verifier in another process
(:class:`auth.jwks_verifier.JWKSVerifier`) differ only in where a verification key comes
from and how revocation is looked up. Everything else -- parse, pick the key, check
signature and claims, check revocation, turn the outcome into a counted
:class:`auth.api.AuthResult` -- is one procedure, kept here so the two can never drift
apart on what they accept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection

import structlog

from auth.api import (
    AuthContextKind,
    AuthError,
    AuthErrorCode,
    AuthResult,
    AuthStats,
    TokenError,
    TokenType,
)
from auth.keys import VerificationKey
from auth.stats import AuthCounters
from auth.token_format import validate_jwt_format
from auth.tokens import TokenClaims, TokenVerifier, result_from_claims

__all__ = ["TokenAuthenticatorBase"]

log = structlog.get_logger(__name__)


class TokenAuthenticatorBase(ABC):
    """Implements ``validate_jwt_format``, ``verify``, ``authenticate_token``,
    ``authenticate_service`` and ``stats`` of :class:`auth.api.TokenAuthenticator` on top of
    three hooks.

    A token is taken as ``object``, not only ``str | None``: whatever a caller hands over
    (bytes, numbers, None) is refused with a typed result, never an exception."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier
        self._counters = AuthCounters()

    @abstractmethod
    async def _verification_key(self, kid: str) -> VerificationKey | None:
        """The key named ``kid``, or None if there is no such key. Raises
        :class:`auth.api.ServiceUnavailableError` when keys cannot be had at all."""

    @abstractmethod
    async def _is_revoked(self, claims: TokenClaims) -> bool:
        """Whether the token was revoked. A failing lookup raises
        :class:`auth.api.ServiceUnavailableError`: fail closed."""

    @abstractmethod
    def _check_service(self, claims: TokenClaims) -> None:
        """Raise :class:`auth.api.TokenError` if the service named by a valid service token
        may not call this process."""

    def validate_jwt_format(self, token: object) -> bool:
        return validate_jwt_format(token, max_bytes=self._verifier.max_token_bytes)

    async def verify(self, token: object, expected: Collection[TokenType]) -> TokenClaims:
        """Full verification including revocation; raises :class:`auth.api.TokenError` or
        :class:`auth.api.ServiceUnavailableError`."""
        checked, header = self._verifier.parse(token)
        key = await self._verification_key(header.kid)
        if key is None:
            raise TokenError(
                "token was signed by an unknown key", error_code=AuthErrorCode.UNKNOWN_KEY
            )
        claims = self._verifier.verify(checked, header, key, expected)
        if await self._is_revoked(claims):
            raise TokenError("token has been revoked", error_code=AuthErrorCode.REVOKED)
        return claims

    async def authenticate_token(
        self, token: object, context_kind: AuthContextKind = AuthContextKind.REST_API
    ) -> AuthResult:
        try:
            claims = await self.verify(token, (TokenType.ACCESS,))
        except AuthError as exc:
            log.info(
                "auth_token_rejected", error_code=exc.error_code.value, context=context_kind.value
            )
            return self._counters.record(
                AuthResult.failure(exc.error_code, exc.message, context_kind)
            )
        return self._counters.record(result_from_claims(claims, context_kind))

    async def authenticate_service(
        self, token: object, service_id: str | None = None
    ) -> AuthResult:
        kind = AuthContextKind.INTERNAL_SERVICE
        try:
            claims = await self.verify(token, (TokenType.SERVICE,))
            self._check_service(claims)
            if service_id is not None and claims.sub != service_id:
                raise TokenError(
                    "token belongs to another service", error_code=AuthErrorCode.WRONG_SUBJECT
                )
        except AuthError as exc:
            log.info("auth_service_token_rejected", error_code=exc.error_code.value)
            return self._counters.record(AuthResult.failure(exc.error_code, exc.message, kind))
        return self._counters.record(result_from_claims(claims, kind))

    async def stats(self) -> AuthStats:
        return self._counters.snapshot()
