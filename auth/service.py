"""The in-process implementation of :class:`auth.api.UnifiedAuthenticationService`.

Pure asyncio, no gRPC: the gRPC server wraps this object, and a composition root may hand
it to callers directly. Create it with :meth:`LocalAuthService.create`, which loads (or
makes) the signing keys under the data dir and the schema of the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from types import TracebackType
from typing import TypeVar

import structlog
from sqlalchemy.exc import SQLAlchemyError

from auth.api import (
    Account,
    AccountNotFoundError,
    AuthErrorCode,
    AuthHealth,
    HealthState,
    InvalidCredentialsError,
    InvalidRequestError,
    JsonWebKeySet,
    Plan,
    ServiceToken,
    ServiceUnavailableError,
    TokenError,
    TokenPair,
    TokenType,
)
from auth.authenticator import TokenAuthenticatorBase
from auth.keys import KeyStore, VerificationKey
from auth.passwords import PasswordHasher
from auth.rate_limit import LoginRateLimiter
from auth.revocation import RevocationChecker, StoreRevocationChecker
from auth.settings import AuthSettings
from auth.store import AccountRecord, AuthStore, RefreshOutcome
from auth.tokens import (
    IssuedToken,
    TokenClaims,
    TokenIssuer,
    TokenVerifier,
    floor_ms,
)
from context import IDKind, new_id

__all__ = ["LocalAuthService"]

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_CREDENTIALS_MESSAGE = "invalid email or password"
_SERVICE_CREDENTIALS_MESSAGE = "invalid service credentials"
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
_KEY_RELOAD_INTERVAL = 5.0
_ROLE = re.compile(r"[A-Za-z0-9_.:*-]{1,64}")


def normalize_email(email: str) -> str:
    return unicodedata.normalize("NFC", email).strip().lower()


def _check_email(email: str) -> str:
    normalized = normalize_email(email)
    if len(normalized) > 320 or not _EMAIL.fullmatch(normalized):
        raise InvalidRequestError("email address is not valid")
    return normalized


def _check_display_name(name: str) -> str:
    name = name.strip()
    if len(name) > 200 or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidRequestError("display name must be at most 200 printable characters")
    return name


def _check_labels(values: Collection[str], what: str) -> tuple[str, ...]:
    labels = tuple(dict.fromkeys(values))
    if len(labels) > 64 or not all(_ROLE.fullmatch(value) for value in labels):
        raise InvalidRequestError(f"{what} must be at most 64 short names ([A-Za-z0-9_.:*-])")
    return labels


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class LocalAuthService(TokenAuthenticatorBase):
    """Accounts, tokens and revocation backed by :class:`auth.store.AuthStore`."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        store: AuthStore,
        keys: KeyStore,
        hasher: PasswordHasher,
        limiter: LoginRateLimiter,
        revocation: RevocationChecker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._hasher = hasher
        self._limiter = limiter
        self._revocation = revocation or StoreRevocationChecker(store)
        self._clock = clock
        audiences = {kind: settings.audience_for(kind) for kind in TokenType}
        self._issuer = TokenIssuer(
            issuer=settings.issuer,
            audiences=audiences,
            ttls={kind: settings.ttl_for(kind) for kind in TokenType},
            signer=keys.signer,
            clock=clock,
        )
        super().__init__(
            TokenVerifier(
                issuer=settings.issuer,
                audiences=audiences,
                leeway_seconds=settings.leeway_seconds,
                max_token_bytes=settings.max_token_bytes,
                clock=clock,
            )
        )
        self._last_key_reload = float("-inf")
        # Pre-hashed so comparing secrets takes the same time whatever their length.
        self._service_secrets = {
            service_id: hashlib.sha256(secret.get_secret_value().encode()).digest()
            for service_id, secret in settings.service_credentials.items()
        }
        self._dummy_service_secret = hashlib.sha256(secrets.token_bytes(32)).digest()

    @classmethod
    async def create(
        cls, settings: AuthSettings, *, clock: Callable[[], float] = time.time
    ) -> LocalAuthService:
        """Load keys (creating the first signer), open the store and create its schema."""
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        hs_secret = settings.hs256_secret
        keys = KeyStore(
            settings.data_dir / "keys",
            algorithm=settings.algorithm,
            rsa_key_size=settings.rsa_key_size,
            hs256_secret=hs_secret.get_secret_value().encode() if hs_secret else None,
            retired_key_lifetime=settings.max_token_lifetime_seconds,
            clock=clock,
        )
        keys.load()
        store = AuthStore(settings.resolved_database_url())
        await store.create_schema()
        limiter = LoginRateLimiter(
            storage_uri=settings.rate_limit_storage_uri,
            login_per_account=settings.login_rate_limit_per_account,
            login_per_client=settings.login_rate_limit_per_client,
            register_per_client=settings.register_rate_limit_per_client,
        )
        service = cls(
            settings,
            store=store,
            keys=keys,
            hasher=PasswordHasher(settings.argon2),
            limiter=limiter,
            clock=clock,
        )
        log.info("auth_service_started", signing_kid=keys.signer().kid, alg=keys.algorithm)
        return service

    async def close(self) -> None:
        await self._store.close()

    async def __aenter__(self) -> LocalAuthService:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def settings(self) -> AuthSettings:
        return self._settings

    @property
    def store(self) -> AuthStore:
        return self._store

    @property
    def key_store(self) -> KeyStore:
        return self._keys

    # ----- keys -----------------------------------------------------------------------

    def rotate_signing_key(self) -> str:
        """Make a new signer now; returns its ``kid``. Older keys keep verifying."""
        return self._keys.rotate().kid

    async def _verification_key(self, kid: str) -> VerificationKey | None:
        key = self._keys.verification_key(kid)
        if key is None and time.monotonic() - self._last_key_reload >= _KEY_RELOAD_INTERVAL:
            # Another process sharing the data dir may have rotated.
            self._last_key_reload = time.monotonic()
            self._keys.reload()
            key = self._keys.verification_key(kid)
        return key

    async def _is_revoked(self, claims: TokenClaims) -> bool:
        try:
            return await self._revocation.is_revoked(claims)
        except SQLAlchemyError as exc:
            log.error(
                "auth_store_unavailable", operation="revocation_check", error=type(exc).__name__
            )
            raise ServiceUnavailableError("auth store unavailable") from None

    def _check_service(self, claims: TokenClaims) -> None:
        if claims.sub not in self._service_secrets:
            raise TokenError("service is no longer configured", error_code=AuthErrorCode.REVOKED)

    # ----- accounts ---------------------------------------------------------------------

    async def register(
        self,
        email: str,
        password: str,
        display_name: str = "",
        *,
        client_id: str | None = None,
    ) -> Account:
        normalized = _check_email(email)
        name = _check_display_name(display_name)
        self._check_password(password)
        await self._limiter.check_register(client_id)
        password_hash = await self._hasher.hash(password)
        record = AccountRecord(
            user_id=new_id(IDKind.USER),
            email=normalized,
            display_name=name,
            password_hash=password_hash,
            plan=Plan.FREE,
            roles=(),
            permissions=(),
            created_at=self._clock(),
        )
        await self._guard(self._store.add_account(record))
        log.info("auth_account_registered", user_id=record.user_id)
        return record.public()

    def _check_password(self, password: str) -> None:
        settings = self._settings
        if not isinstance(password, str) or not (
            settings.password_min_length <= len(password) <= settings.password_max_length
        ):
            raise InvalidRequestError(
                f"password must be {settings.password_min_length} to "
                f"{settings.password_max_length} characters"
            )
        if not password.strip():
            raise InvalidRequestError("password must not be blank")

    async def get_account(self, user_id: str) -> Account:
        record = await self._guard(self._store.account(user_id))
        if record is None:
            raise AccountNotFoundError("no such account")
        return record.public()

    async def update_account(
        self,
        user_id: str,
        *,
        plan: Plan | None = None,
        roles: tuple[str, ...] | None = None,
        permissions: tuple[str, ...] | None = None,
    ) -> Account:
        checked_roles = None if roles is None else _check_labels(roles, "roles")
        checked_permissions = (
            None if permissions is None else _check_labels(permissions, "permissions")
        )
        record = await self._guard(
            self._store.update_account(
                user_id,
                plan=plan,
                roles=checked_roles,
                permissions=checked_permissions,
                now=self._clock(),
            )
        )
        log.info("auth_account_updated", user_id=user_id, plan=record.plan.value)
        return record.public()

    # ----- sessions -----------------------------------------------------------------------

    async def login(self, email: str, password: str, *, client_id: str | None = None) -> TokenPair:
        normalized = normalize_email(email) if isinstance(email, str) else ""
        await self._limiter.check_login(normalized, client_id)
        record = await self._guard(self._store.account_by_email(normalized)) if normalized else None
        if record is None:
            await self._hasher.verify_dummy(password if isinstance(password, str) else "")
            log.info("auth_login_failed", reason="invalid_credentials")
            raise InvalidCredentialsError(_CREDENTIALS_MESSAGE)
        if not isinstance(password, str) or not await self._hasher.verify(
            record.password_hash, password
        ):
            log.info("auth_login_failed", reason="invalid_credentials", user_id=record.user_id)
            raise InvalidCredentialsError(_CREDENTIALS_MESSAGE)
        if self._hasher.needs_rehash(record.password_hash):
            new_hash = await self._hasher.hash(password)
            await self._guard(
                self._store.set_password_hash(record.user_id, new_hash, self._clock())
            )
        session_id = new_id(IDKind.SESSION)
        access, refresh = self._issue_pair(record, session_id)
        await self._guard(
            self._store.start_session(
                session_id=session_id,
                user_id=record.user_id,
                refresh_jti=refresh.claims.jti,
                issued_at=refresh.claims.iat,
                expires_at=refresh.claims.exp,
            )
        )
        log.info("auth_login_succeeded", user_id=record.user_id, session_id=session_id)
        return self._pair(record.user_id, session_id, access, refresh)

    async def refresh(self, refresh_token: str) -> TokenPair:
        claims = await self.verify(refresh_token, (TokenType.REFRESH,))
        session_id = claims.sid
        if session_id is None:  # the verifier requires it; kept for the type checker
            raise TokenError("token has no session id", error_code=AuthErrorCode.MISSING_CLAIM)
        record = await self._guard(self._store.account(claims.sub))
        if record is None:
            raise TokenError("account no longer exists", error_code=AuthErrorCode.REVOKED)
        access, refresh = self._issue_pair(record, session_id)
        outcome = await self._guard(
            self._store.rotate_refresh_token(
                session_id=session_id,
                old_jti=claims.jti,
                new_jti=refresh.claims.jti,
                issued_at=refresh.claims.iat,
                expires_at=refresh.claims.exp,
                now=self._clock(),
            )
        )
        if outcome is RefreshOutcome.REUSED:
            log.warning("auth_refresh_reuse_detected", user_id=claims.sub, session_id=session_id)
            raise TokenError(
                "refresh token was already used; its session has been revoked",
                error_code=AuthErrorCode.REVOKED,
            )
        if outcome is not RefreshOutcome.ROTATED:
            raise TokenError("session has been revoked", error_code=AuthErrorCode.REVOKED)
        log.info("auth_refresh_rotated", user_id=claims.sub, session_id=session_id)
        return self._pair(record.user_id, session_id, access, refresh)

    async def logout(self, token: str) -> None:
        try:
            claims = await self.verify(token, (TokenType.ACCESS, TokenType.REFRESH))
        except TokenError as exc:
            if exc.error_code in (AuthErrorCode.REVOKED, AuthErrorCode.EXPIRED):
                return  # already logged out, or nothing left to revoke
            raise
        now = self._clock()
        if claims.sid is not None:
            await self._guard(self._store.revoke_session(claims.sid, reason="logout", now=now))
        await self._guard(
            self._store.revoke_jti(claims.jti, user_id=claims.sub, expires_at=claims.exp, now=now)
        )
        log.info("auth_logout", user_id=claims.sub, session_id=claims.sid)

    async def revoke_user_tokens(self, user_id: str, *, before: datetime | None = None) -> datetime:
        if not isinstance(user_id, str) or not user_id or len(user_id) > 256:
            raise InvalidRequestError("user_id is required")
        mark = floor_ms(before.timestamp() if before is not None else self._clock())
        in_force = await self._guard(self._store.revoke_user_before(user_id, mark))
        log.info("auth_user_tokens_revoked", user_id=user_id, revoked_before=in_force)
        return _ts(in_force)

    # ----- services -----------------------------------------------------------------------

    async def issue_service_token(
        self, service_id: str, service_secret: str, *, client_id: str | None = None
    ) -> ServiceToken:
        await self._limiter.check_login(f"service:{service_id}", client_id)
        expected = self._service_secrets.get(service_id)
        candidate = hashlib.sha256(str(service_secret).encode()).digest()
        matches = hmac.compare_digest(candidate, expected or self._dummy_service_secret)
        if expected is None or not matches:
            log.info("auth_service_token_denied")
            raise InvalidCredentialsError(_SERVICE_CREDENTIALS_MESSAGE)
        issued = self._issue(
            subject=service_id,
            token_type=TokenType.SERVICE,
            email="",
            plan=Plan.ENTERPRISE,
            roles=self._settings.service_roles,
            permissions=(),
            session_id=None,
        )
        log.info("auth_service_token_issued", service_id=service_id, jti=issued.claims.jti)
        return ServiceToken(
            service_id=service_id, token=issued.token, expires_at=issued.claims.expires_at()
        )

    async def get_jwks(self) -> JsonWebKeySet:
        self._keys.prune()
        return self._keys.jwks()

    # ----- maintenance and observability ------------------------------------------------------

    async def purge_expired(self) -> int:
        """Delete revocation and refresh rows that only concern expired tokens."""
        removed = await self._guard(self._store.purge_expired(self._clock()))
        self._keys.prune()
        return removed

    async def health(self) -> AuthHealth:
        details = {"signing_kid": self._keys.signer().kid, "algorithm": self._keys.algorithm}
        try:
            await self._store.ping()
        except (SQLAlchemyError, OSError) as exc:
            details["store"] = type(exc).__name__
            return AuthHealth(state=HealthState.UNAVAILABLE, details=details)
        details["store"] = "ok"
        return AuthHealth(state=HealthState.OK, details=details)

    # ----- helpers ----------------------------------------------------------------------------

    @staticmethod
    async def _guard(operation: Awaitable[_T]) -> _T:
        """Await a store operation; a database failure becomes ServiceUnavailableError."""
        try:
            return await operation
        except SQLAlchemyError as exc:
            log.error("auth_store_unavailable", error=type(exc).__name__)
            raise ServiceUnavailableError("auth store unavailable") from None

    def _issue(
        self,
        *,
        subject: str,
        token_type: TokenType,
        email: str,
        plan: Plan,
        roles: Collection[str],
        permissions: Collection[str],
        session_id: str | None,
    ) -> IssuedToken:
        self._keys.rotate_if_older_than(self._settings.key_rotation_interval_seconds)
        return self._issuer.issue(
            subject=subject,
            token_type=token_type,
            email=email,
            plan=plan,
            roles=roles,
            permissions=permissions,
            session_id=session_id,
        )

    def _issue_pair(
        self, record: AccountRecord, session_id: str
    ) -> tuple[IssuedToken, IssuedToken]:
        def issue(token_type: TokenType) -> IssuedToken:
            return self._issue(
                subject=record.user_id,
                token_type=token_type,
                email=record.email,
                plan=record.plan,
                roles=record.roles,
                permissions=record.permissions,
                session_id=session_id,
            )

        return issue(TokenType.ACCESS), issue(TokenType.REFRESH)

    @staticmethod
    def _pair(
        user_id: str, session_id: str, access: IssuedToken, refresh: IssuedToken
    ) -> TokenPair:
        return TokenPair(
            user_id=user_id,
            session_id=session_id,
            access_token=access.token,
            refresh_token=refresh.token,
            access_expires_at=access.claims.expires_at(),
            refresh_expires_at=refresh.claims.expires_at(),
        )
