"""api models survive the trip through the ssot.auth.v1 messages."""

from __future__ import annotations

from datetime import UTC, datetime

from auth.api import (
    Account,
    AuthContextKind,
    AuthErrorCode,
    AuthResult,
    JsonWebKey,
    JsonWebKeySet,
    Plan,
    ServiceToken,
    TokenPair,
    TokenType,
)
from auth.proto_convert import (
    account_from_proto,
    account_to_proto,
    jwks_from_proto,
    jwks_to_proto,
    result_from_proto,
    result_to_proto,
    service_token_from_proto,
    service_token_to_proto,
    token_pair_from_proto,
    token_pair_to_proto,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_account_round_trip() -> None:
    for plan in Plan:
        account = Account(
            user_id="usr_1",
            email="a@example.com",
            display_name="A",
            plan=plan,
            roles=("admin",),
            permissions=("x:y",),
            created_at=NOW,
        )
        assert account_from_proto(account_to_proto(account)) == account


def test_token_pair_and_service_token_round_trip() -> None:
    pair = TokenPair(
        user_id="usr_1",
        session_id="ses_1",
        access_token="a.b.c",
        refresh_token="d.e.f",
        access_expires_at=NOW,
        refresh_expires_at=NOW,
    )
    assert token_pair_from_proto(token_pair_to_proto(pair)) == pair
    token = ServiceToken(service_id="svc", token="g.h.i", expires_at=NOW)
    assert service_token_from_proto(service_token_to_proto(token)) == token


def test_results_round_trip() -> None:
    success = AuthResult(
        success=True,
        user_id="usr_1",
        email="a@example.com",
        plan=Plan.DEVELOPER,
        roles=("r",),
        permissions=("p",),
        token_type=TokenType.ACCESS,
        session_id="ses_1",
        jti="j",
        issued_at=NOW,
        expires_at=NOW,
        context_kind=AuthContextKind.WEBSOCKET,
        validated_at=NOW,
    )
    assert result_from_proto(result_to_proto(success)) == success
    failure = AuthResult.failure(AuthErrorCode.EXPIRED, "token has expired", AuthContextKind.GRPC)
    back = result_from_proto(result_to_proto(failure))
    assert (back.success, back.error_code, back.error, back.context_kind) == (
        False,
        AuthErrorCode.EXPIRED,
        "token has expired",
        AuthContextKind.GRPC,
    )
    assert back.plan is None and back.token_type is None and back.expires_at is None


def test_jwks_round_trip() -> None:
    jwks = JsonWebKeySet(
        keys=(
            JsonWebKey(kty="OKP", kid="k1", alg="EdDSA", crv="Ed25519", x="abc"),
            JsonWebKey(kty="RSA", kid="k2", alg="RS256", n="nnn", e="AQAB"),
        )
    )
    assert jwks_from_proto(jwks_to_proto(jwks)) == jwks
