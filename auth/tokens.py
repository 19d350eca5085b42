"""Issuing and verifying JWTs (PyJWT), independent of where keys come from.

Verification order, each step with its own error code:

1. format (:mod:`auth.token_format`): NO_TOKEN, INVALID_FORMAT, INVALID_HEADER, UNKNOWN_KEY
   (no ``kid``);
2. key lookup by ``kid`` (the caller's job): UNKNOWN_KEY;
3. the header ``alg`` must equal the algorithm pinned to that key: DISALLOWED_ALGORITHM;
4. the signature, with PyJWT told that one algorithm only: BAD_SIGNATURE;
5. every required claim present (MISSING_CLAIM) and well typed (INVALID_CLAIM);
6. time: EXPIRED, NOT_YET_VALID (``nbf`` or ``iat`` in the future), with a small leeway;
7. ``iss`` (WRONG_ISSUER), ``token_type`` (WRONG_TOKEN_TYPE), then the audience of that
   type (WRONG_AUDIENCE).

Revocation (REVOKED) needs state and is checked by the caller afterwards.

``iat``/``nbf`` carry millisecond precision so "revoke everything issued until now" does
not also hit a token issued in the same second right after.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import jwt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from auth.api import AuthContextKind, AuthErrorCode, AuthResult, Plan, TokenError, TokenType
from auth.keys import KeyRecord, VerificationKey
from auth.token_format import ParsedHeader, check_format, parse_header

__all__ = [
    "REQUIRED_CLAIMS",
    "IssuedToken",
    "TokenClaims",
    "TokenIssuer",
    "TokenVerifier",
    "floor_ms",
    "result_from_claims",
]

REQUIRED_CLAIMS: tuple[str, ...] = (
    "sub",
    "iat",
    "nbf",
    "exp",
    "iss",
    "aud",
    "jti",
    "token_type",
    "email",
    "plan",
    "roles",
    "permissions",
)

_NumericDate = StrictInt | StrictFloat
_NonEmpty = Annotated[StrictStr, Field(min_length=1, max_length=256)]


def floor_ms(value: float) -> float:
    return math.floor(value * 1000) / 1000


class TokenClaims(BaseModel):
    """The verified payload. ``sid`` (the session / refresh family) is on access and
    refresh tokens, not on service tokens."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: _NonEmpty
    iat: _NumericDate
    nbf: _NumericDate
    exp: _NumericDate
    iss: StrictStr
    aud: StrictStr
    jti: _NonEmpty
    token_type: TokenType
    email: StrictStr
    plan: Plan
    roles: tuple[StrictStr, ...]
    permissions: tuple[StrictStr, ...]
    sid: _NonEmpty | None = None

    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)

    def issued_at(self) -> datetime:
        return datetime.fromtimestamp(self.iat, UTC)


def result_from_claims(claims: TokenClaims, context_kind: AuthContextKind) -> AuthResult:
    return AuthResult(
        success=True,
        user_id=claims.sub,
        email=claims.email,
        plan=claims.plan,
        roles=claims.roles,
        permissions=claims.permissions,
        token_type=claims.token_type,
        session_id=claims.sid,
        jti=claims.jti,
        issued_at=claims.issued_at(),
        expires_at=claims.expires_at(),
        context_kind=context_kind,
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: TokenClaims

    def __repr__(self) -> str:
        return f"IssuedToken(jti={self.claims.jti!r}, token_type={self.claims.token_type})"


class TokenIssuer:
    """Signs claims with the current signer of a key source."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: Mapping[TokenType, str],
        ttls: Mapping[TokenType, int],
        signer: Callable[[], KeyRecord],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = issuer
        self._audiences = dict(audiences)
        self._ttls = dict(ttls)
        self._signer = signer
        self._clock = clock

    def issue(
        self,
        *,
        subject: str,
        token_type: TokenType,
        email: str,
        plan: Plan,
        roles: Collection[str],
        permissions: Collection[str],
        session_id: str | None = None,
        jti: str | None = None,
    ) -> IssuedToken:
        now = floor_ms(self._clock())
        claims = TokenClaims(
            sub=subject,
            iat=now,
            nbf=now,
            exp=now + self._ttls[token_type],
            iss=self._issuer,
            aud=self._audiences[token_type],
            jti=jti or secrets.token_urlsafe(18),
            token_type=token_type,
            email=email,
            plan=plan,
            roles=tuple(roles),
            permissions=tuple(permissions),
            sid=session_id,
        )
        key = self._signer()
        payload = claims.model_dump(mode="json", exclude_none=True)
        token = jwt.encode(
            payload, key.signing_key(), algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"}
        )
        return IssuedToken(token=token, claims=claims)


class TokenVerifier:
    """Checks a token against a resolved key; stateless apart from configuration."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: Mapping[TokenType, str],
        leeway_seconds: float,
        max_token_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = issuer
        self._audiences = dict(audiences)
        self._leeway = leeway_seconds
        self._max_token_bytes = max_token_bytes
        self._clock = clock

    @property
    def max_token_bytes(self) -> int:
        return self._max_token_bytes

    def parse(self, token: object) -> tuple[str, ParsedHeader]:
        """Format and header checks (steps 1): raises :class:`TokenError`."""
        checked = check_format(token, max_bytes=self._max_token_bytes)
        return checked, parse_header(checked)

    def verify(
        self,
        token: str,
        header: ParsedHeader,
        key: VerificationKey,
        expected: Collection[TokenType],
    ) -> TokenClaims:
        """Steps 3-7 for a token whose header named ``key``; raises :class:`TokenError`."""
        if header.alg != key.alg:
            raise TokenError(
                "token algorithm is not the one pinned to its key",
                error_code=AuthErrorCode.DISALLOWED_ALGORITHM,
            )
        payload = self._decode(token, key)
        claims = self._typed(payload)
        self._check_time(claims)
        if claims.iss != self._issuer:
            raise TokenError("token issuer is not trusted", error_code=AuthErrorCode.WRONG_ISSUER)
        if claims.token_type not in expected:
            raise TokenError(
                f"a {claims.token_type.value} token is not accepted here",
                error_code=AuthErrorCode.WRONG_TOKEN_TYPE,
            )
        if claims.aud != self._audiences[claims.token_type]:
            raise TokenError(
                "token audience does not match its type", error_code=AuthErrorCode.WRONG_AUDIENCE
            )
        if claims.token_type is not TokenType.SERVICE and claims.sid is None:
            raise TokenError("token has no session id", error_code=AuthErrorCode.MISSING_CLAIM)
        return claims

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                options={
                    "verify_signature": True,
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenError(
                "token signature is invalid", error_code=AuthErrorCode.BAD_SIGNATURE
            ) from exc
        except jwt.InvalidAlgorithmError as exc:
            raise TokenError(
                "token algorithm is not allowed", error_code=AuthErrorCode.DISALLOWED_ALGORITHM
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(
                f"token lacks the required claim {exc.claim!r}",
                error_code=AuthErrorCode.MISSING_CLAIM,
            ) from exc
        except jwt.DecodeError as exc:
            raise TokenError(
                "token cannot be decoded", error_code=AuthErrorCode.INVALID_FORMAT
            ) from exc
        except jwt.InvalidKeyError as exc:
            raise TokenError("token key is unusable", error_code=AuthErrorCode.UNKNOWN_KEY) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("token is invalid", error_code=AuthErrorCode.INVALID_CLAIM) from exc
        return payload

    @staticmethod
    def _typed(payload: dict[str, Any]) -> TokenClaims:
        try:
            return TokenClaims.model_validate(payload)
        except ValidationError as exc:
            fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
            raise TokenError(
                f"token claims have the wrong type: {', '.join(fields)}",
                error_code=AuthErrorCode.INVALID_CLAIM,
            ) from None

    def _check_time(self, claims: TokenClaims) -> None:
        now = self._clock()
        if claims.exp <= now - self._leeway:
            raise TokenError("token has expired", error_code=AuthErrorCode.EXPIRED)
        if claims.nbf > now + self._leeway or claims.iat > now + self._leeway:
            raise TokenError("token is not valid yet", error_code=AuthErrorCode.NOT_YET_VALID)
        if claims.exp <= claims.iat:
            raise TokenError(
                "token expires before it was issued", error_code=AuthErrorCode.INVALID_CLAIM
            )
