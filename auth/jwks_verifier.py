"""Local token verification against the published JWKS, for processes other than auth.

A :class:`JWKSVerifier` implements :class:`auth.api.TokenAuthenticator`, so gateways and
interceptors can use it where they would use the service itself, without a network call
per token:

* keys come from ``fetch_jwks`` (for example ``GrpcAuthClient.get_jwks``) and are cached
  for ``cache_ttl_seconds``;
* a token naming an unknown ``kid`` triggers a refetch (the signer may have rotated), but
  never more often than ``min_refetch_interval_seconds``, so garbage ``kid`` values cannot
  turn into a fetch storm;
* concurrent refreshes share one fetch (single flight);
* a failed fetch keeps the previous keys; with no keys at all the result is
  AUTH_SERVICE_UNAVAILABLE;
* each key pins its algorithm (from the JWKS ``alg``; only asymmetric ones are accepted);
* revocation is checked through ``is_revoked``; if that check fails the token is not
  accepted (AUTH_SERVICE_UNAVAILABLE): fail closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection

import structlog

from auth.api import (
    AuthErrorCode,
    AuthHealth,
    HealthState,
    JsonWebKeySet,
    ServiceUnavailableError,
    TokenError,
    TokenType,
)
from auth.authenticator import TokenAuthenticatorBase
from auth.keys import ASYMMETRIC_ALGORITHMS, VerificationKey, verification_key_from_jwk
from auth.settings import AuthSettings
from auth.tokens import TokenClaims, TokenVerifier

__all__ = ["JWKSVerifier", "JwksFetcher", "RevocationCallable"]

log = structlog.get_logger(__name__)

JwksFetcher = Callable[[], Awaitable[JsonWebKeySet]]
RevocationCallable = Callable[[TokenClaims], Awaitable[bool]]


class JWKSVerifier(TokenAuthenticatorBase):
    def __init__(
        self,
        *,
        fetch_jwks: JwksFetcher,
        is_revoked: RevocationCallable,
        issuer: str,
        access_audience: str,
        refresh_audience: str,
        service_audience: str,
        leeway_seconds: float = 10,
        max_token_bytes: int = 8192,
        cache_ttl_seconds: float = 300,
        min_refetch_interval_seconds: float = 30,
        allowed_algorithms: Collection[str] = ASYMMETRIC_ALGORITHMS,
        allowed_services: Collection[str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unsupported = set(allowed_algorithms) - ASYMMETRIC_ALGORITHMS
        if unsupported:
            raise ValueError(f"JWKS verification supports only {sorted(ASYMMETRIC_ALGORITHMS)}")
        self._fetch = fetch_jwks
        self._revoked_check = is_revoked
        super().__init__(
            TokenVerifier(
                issuer=issuer,
                audiences={
                    TokenType.ACCESS: access_audience,
                    TokenType.REFRESH: refresh_audience,
                    TokenType.SERVICE: service_audience,
                },
                leeway_seconds=leeway_seconds,
                max_token_bytes=max_token_bytes,
                clock=clock,
            )
        )
        self._cache_ttl = cache_ttl_seconds
        self._min_refetch = min_refetch_interval_seconds
        self._allowed_algorithms = frozenset(allowed_algorithms)
        self._allowed_services = None if allowed_services is None else frozenset(allowed_services)
        self._monotonic = monotonic
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._fetch_count = 0

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        fetch_jwks: JwksFetcher,
        is_revoked: RevocationCallable,
        cache_ttl_seconds: float = 300,
        min_refetch_interval_seconds: float = 30,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> JWKSVerifier:
        return cls(
            fetch_jwks=fetch_jwks,
            is_revoked=is_revoked,
            issuer=settings.issuer,
            access_audience=settings.access_audience,
            refresh_audience=settings.refresh_audience,
            service_audience=settings.service_audience,
            leeway_seconds=settings.leeway_seconds,
            max_token_bytes=settings.max_token_bytes,
            allowed_services=settings.service_credentials.keys() or None,
            cache_ttl_seconds=cache_ttl_seconds,
            min_refetch_interval_seconds=min_refetch_interval_seconds,
            monotonic=monotonic,
        )

    @property
    def fetch_count(self) -> int:
        """How many JWKS fetches were started (for observability and tests)."""
        return self._fetch_count

    # ----- key cache --------------------------------------------------------------------

    async def refresh_keys(self) -> None:
        """Fetch the JWKS now, joining a fetch already in flight."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._inflight = future
        try:
            await self._fetch_into_cache()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: joiners re-raise it, nobody else must
            raise
        else:
            future.set_result(None)
        finally:
            self._inflight = None

    async def _fetch_into_cache(self) -> None:
        self._last_attempt = self._monotonic()
        self._fetch_count += 1
        jwks = await self._fetch()
        keys: dict[str, VerificationKey] = {}
        for jwk in jwks.keys:
            if jwk.alg not in self._allowed_algorithms:
                log.warning("auth_jwks_key_skipped", kid=jwk.kid, reason="algorithm")
                continue
            try:
                keys[jwk.kid] = verification_key_from_jwk(jwk)
            except ValueError as exc:
                log.warning("auth_jwks_key_skipped", kid=jwk.kid, reason=str(exc))
        self._keys = keys
        self._fetched_at = self._monotonic()
        log.info("auth_jwks_refreshed", kids=sorted(keys))

    async def _try_refresh(self) -> None:
        try:
            await self.refresh_keys()
        except Exception as exc:  # any failure of the caller-supplied fetcher
            if not self._keys:
                log.warning("auth_jwks_unavailable", error=type(exc).__name__)
                raise ServiceUnavailableError("cannot fetch the auth service's keys") from None
            log.warning("auth_jwks_refresh_failed_using_cached", error=type(exc).__name__)

    async def _verification_key(self, kid: str) -> VerificationKey | None:
        now = self._monotonic()
        stale = self._fetched_at is None or now - self._fetched_at >= self._cache_ttl
        if stale and (self._inflight is not None or self._may_refetch(now)):
            await self._try_refresh()
        key = self._keys.get(kid)
        if key is None and self._may_refetch(self._monotonic()):
            await self._try_refresh()
            key = self._keys.get(kid)
        if key is None and not self._keys and self._fetched_at is None:
            raise ServiceUnavailableError("cannot fetch the auth service's keys")
        return key

    def _may_refetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self._min_refetch

    # ----- verification ---------------------------------------------------------------------

    async def _is_revoked(self, claims: TokenClaims) -> bool:
        try:
            return await self._revoked_check(claims)
        except Exception as exc:  # any failure of the caller-supplied check: fail closed
            log.warning("auth_revocation_check_failed", error=type(exc).__name__)
            raise ServiceUnavailableError("cannot check token revocation") from None

    def _check_service(self, claims: TokenClaims) -> None:
        if self._allowed_services is not None and claims.sub not in self._allowed_services:
            raise TokenError("service is not allowed", error_code=AuthErrorCode.WRONG_SUBJECT)

    async def health(self) -> AuthHealth:
        details = {"cached_keys": str(len(self._keys))}
        if not self._keys:
            return AuthHealth(state=HealthState.UNAVAILABLE, details=details)
        stale = self._fetched_at is None or self._monotonic() - self._fetched_at >= self._cache_ttl
        return AuthHealth(state=HealthState.DEGRADED if stale else HealthState.OK, details=details)
