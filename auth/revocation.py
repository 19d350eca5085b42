"""Revocation checks: is this verified token still honoured?

A token is revoked when its ``jti`` was revoked (logout of that token), when its session
(refresh family) was revoked (logout, refresh-token reuse), or when its user's tokens were
revoked up to a time at or after its ``iat`` (admin / service "revoke all").

Verifiers take any :class:`RevocationChecker`, so a process that verifies tokens locally
against the JWKS can check revocation against the shared store, or anything else.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from auth.store import AuthStore
from auth.tokens import TokenClaims

__all__ = ["RevocationChecker", "StoreRevocationChecker"]


@runtime_checkable
class RevocationChecker(Protocol):
    async def is_revoked(self, claims: TokenClaims) -> bool:
        """True when the (signature-verified) token must no longer be accepted."""
        ...


class StoreRevocationChecker:
    """Checks revocation in the auth store (the same database the auth service writes)."""

    def __init__(self, store: AuthStore) -> None:
        self._store = store

    async def is_revoked(self, claims: TokenClaims) -> bool:
        return await self._store.is_revoked(
            jti=claims.jti, user_id=claims.sub, issued_at=claims.iat, session_id=claims.sid
        )
