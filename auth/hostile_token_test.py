"""Hostile tokens: each one is presented as-is and must be rejected with the right code.

Tokens PyJWT would refuse to build are forged by hand (:func:`auth.testing.forge_token`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth.api import AuthErrorCode, TokenError, TokenPair
from auth.keys import jwk_thumbprint, public_jwk
from auth.service import LocalAuthService
from auth.testing import b64json, fast_settings, forge_token
from auth.tokens import REQUIRED_CLAIMS

PASSWORD = "correct horse battery staple"


@dataclass
class Env:
    service: LocalAuthService
    pair: TokenPair
    kid: str
    private_key: ed25519.Ed25519PrivateKey
    public_key: ed25519.Ed25519PublicKey
    claims: dict[str, Any]

    def header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "EdDSA", "typ": "JWT", "kid": self.kid, **extra}

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        """A token correctly signed by the service's own key."""
        return forge_token(self.header(**header), payload, key=self.private_key)

    async def code(self, token: object) -> AuthErrorCode | None:
        result = await self.service.authenticate_token(token)
        if result.success:
            return None
        return result.error_code


def _payload_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as service:
        await service.register("victim@example.com", PASSWORD, "Victim")
        pair = await service.login("victim@example.com", PASSWORD)
        signer = service.key_store.signer()
        assert isinstance(signer.private_key, ed25519.Ed25519PrivateKey)
        assert isinstance(signer.public_key, ed25519.Ed25519PublicKey)
        yield Env(
            service=service,
            pair=pair,
            kid=signer.kid,
            private_key=signer.private_key,
            public_key=signer.public_key,
            claims=_payload_of(pair.access_token),
        )


# ----- the control: a valid token -------------------------------------------------------------


async def test_valid_token_is_accepted(env: Env) -> None:
    result = await env.service.authenticate_token(env.pair.access_token)
    assert result.success, result.error
    assert result.user_id == env.claims["sub"]


async def test_hand_signed_copy_of_valid_claims_is_accepted(env: Env) -> None:
    # Proves the forging helper makes tokens the verifier would accept, so every rejection
    # below is caused by the one thing each test changes.
    assert await env.code(env.sign(dict(env.claims))) is None


# ----- alg: none ------------------------------------------------------------------------------

NONE_SPELLINGS = ["none", "None", "NONE", "nOnE", "NoNe", "nONE"]


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
async def test_alg_none_with_empty_signature_is_rejected(env: Env, alg: str) -> None:
    token = forge_token(env.header(alg=alg), env.claims, key=None)
    assert token.endswith(".")
    assert await env.code(token) is AuthErrorCode.INVALID_FORMAT


@pytest.mark.parametrize("alg", NONE_SPELLINGS)
async def test_alg_none_with_a_signature_segment_is_rejected(env: Env, alg: str) -> None:
    token = forge_token(env.header(alg=alg), env.claims, key=None) + "AAAA"
    assert await env.code(token) is AuthErrorCode.DISALLOWED_ALGORITHM


# ----- algorithm confusion and swaps ----------------------------------------------------------


def _public_material(env: Env) -> dict[str, bytes]:
    return {
        "pem": env.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "raw": env.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        "jwk_x": (public_jwk(env.kid, "EdDSA", env.public_key).x or "").encode(),
    }


@pytest.mark.parametrize("material", ["pem", "raw", "jwk_x"])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key_is_rejected(
    env: Env, alg: str, material: str
) -> None:
    secret = _public_material(env)[material]
    token = forge_token(env.header(alg=alg), env.claims, key=secret)
    assert await env.code(token) is AuthErrorCode.DISALLOWED_ALGORITHM


def _attacker_key(alg: str) -> Any:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg.startswith("ES"):
        curve = {"256": ec.SECP256R1(), "384": ec.SECP384R1(), "512": ec.SECP521R1()}[alg[2:]]
        return ec.generate_private_key(curve)
    return b"attacker-chosen-hmac-secret-0123456789"


SWAPPED_ALGORITHMS = [
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
]


@pytest.mark.parametrize("alg", SWAPPED_ALGORITHMS)
async def test_algorithm_swap_on_the_eddsa_key_is_rejected(env: Env, alg: str) -> None:
    token = forge_token(env.header(alg=alg), env.claims, key=_attacker_key(alg))
    assert await env.code(token) is AuthErrorCode.DISALLOWED_ALGORITHM


@pytest.mark.parametrize("alg", ["eddsa", "EDDSA", "Ed25519", "EdDSA "])
async def test_lookalike_algorithm_names_are_rejected(env: Env, alg: str) -> None:
    token = forge_token(env.header(alg=alg), env.claims, key=env.private_key, alg="EdDSA")
    assert await env.code(token) is AuthErrorCode.DISALLOWED_ALGORITHM


@pytest.fixture
async def rsa_service(tmp_path: Path) -> AsyncIterator[LocalAuthService]:
    settings = fast_settings(tmp_path / "rsa", algorithm="RS256", rsa_key_size=2048)
    async with await LocalAuthService.create(settings) as service:
        yield service


@pytest.mark.parametrize("alg", ["HS256", "RS384", "RS512", "PS256", "ES256", "EdDSA", "none"])
async def test_algorithm_swap_on_an_rs256_key_is_rejected(
    rsa_service: LocalAuthService, alg: str
) -> None:
    await rsa_service.register("rsa@example.com", PASSWORD)
    pair = await rsa_service.login("rsa@example.com", PASSWORD)
    assert (await rsa_service.authenticate_token(pair.access_token)).success
    signer = rsa_service.key_store.signer()
    assert signer.public_key is not None
    public_pem = signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key: Any
    if alg == "HS256":
        key = public_pem  # the classic RS256 -> HS256 confusion
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    elif alg == "none":
        key = None
    elif alg.startswith(("RS", "PS")):
        key = signer.private_key  # even the right key, with the wrong algorithm
    else:
        key = _attacker_key(alg)
    header = {"alg": alg, "typ": "JWT", "kid": signer.kid}
    token = forge_token(header, _payload_of(pair.access_token), key=key)
    if alg == "none":
        token += "AAAA"
    result = await rsa_service.authenticate_token(token)
    assert result.error_code is AuthErrorCode.DISALLOWED_ALGORITHM


# ----- time -----------------------------------------------------------------------------------


async def test_expired_token_is_rejected(env: Env) -> None:
    now = time.time()
    claims = {**env.claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}
    assert await env.code(env.sign(claims)) is AuthErrorCode.EXPIRED


async def test_token_expired_within_the_leeway_is_accepted(env: Env) -> None:
    now = time.time()
    claims = {**env.claims, "iat": now - 600, "nbf": now - 600, "exp": now - 2}
    assert await env.code(env.sign(claims)) is None


async def test_token_used_before_nbf_is_rejected(env: Env) -> None:
    now = time.time()
    claims = {**env.claims, "iat": now, "nbf": now + 3600, "exp": now + 7200}
    assert await env.code(env.sign(claims)) is AuthErrorCode.NOT_YET_VALID


async def test_token_issued_in_the_future_is_rejected(env: Env) -> None:
    now = time.time()
    claims = {**env.claims, "iat": now + 3600, "nbf": now, "exp": now + 7200}
    assert await env.code(env.sign(claims)) is AuthErrorCode.NOT_YET_VALID


# ----- claims ---------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
async def test_missing_required_claim_is_rejected(env: Env, claim: str) -> None:
    claims = {key: value for key, value in env.claims.items() if key != claim}
    assert await env.code(env.sign(claims)) is AuthErrorCode.MISSING_CLAIM


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
async def test_null_required_claim_is_rejected(env: Env, claim: str) -> None:
    assert await env.code(env.sign({**env.claims, claim: None})) is AuthErrorCode.MISSING_CLAIM


async def test_access_token_without_session_id_is_rejected(env: Env) -> None:
    claims = {key: value for key, value in env.claims.items() if key != "sid"}
    assert await env.code(env.sign(claims)) is AuthErrorCode.MISSING_CLAIM


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 12345),
        ("sub", ""),
        ("exp", "9999999999"),
        ("iat", True),
        ("roles", "admin"),
        ("permissions", [1, 2]),
        ("plan", "platinum"),
        ("token_type", "admin"),
        ("aud", ["ssot-api"]),
        ("email", {"address": "x"}),
    ],
)
async def test_badly_typed_claim_is_rejected(env: Env, claim: str, value: object) -> None:
    assert await env.code(env.sign({**env.claims, claim: value})) is AuthErrorCode.INVALID_CLAIM


async def test_wrong_audience_is_rejected(env: Env) -> None:
    token = env.sign({**env.claims, "aud": "some-other-api"})
    assert await env.code(token) is AuthErrorCode.WRONG_AUDIENCE


async def test_access_claims_with_the_refresh_audience_are_rejected(env: Env) -> None:
    token = env.sign({**env.claims, "aud": env.service.settings.refresh_audience})
    assert await env.code(token) is AuthErrorCode.WRONG_AUDIENCE


async def test_wrong_issuer_is_rejected(env: Env) -> None:
    token = env.sign({**env.claims, "iss": "https://evil.example"})
    assert await env.code(token) is AuthErrorCode.WRONG_ISSUER


async def test_wrong_token_type_is_rejected(env: Env) -> None:
    claims = {
        **env.claims,
        "token_type": "service",
        "aud": env.service.settings.service_audience,
    }
    assert await env.code(env.sign(claims)) is AuthErrorCode.WRONG_TOKEN_TYPE


async def test_refresh_token_used_as_access_token_is_rejected(env: Env) -> None:
    assert await env.code(env.pair.refresh_token) is AuthErrorCode.WRONG_TOKEN_TYPE


async def test_access_token_used_as_refresh_token_is_rejected(env: Env) -> None:
    with pytest.raises(TokenError) as caught:
        await env.service.refresh(env.pair.access_token)
    assert caught.value.error_code is AuthErrorCode.WRONG_TOKEN_TYPE


async def test_service_token_used_as_access_token_is_rejected(env: Env) -> None:
    service_token = await env.service.issue_service_token(
        "svc-test", "svc-test-secret-0123456789abcdef"
    )
    assert await env.code(service_token.token) is AuthErrorCode.WRONG_TOKEN_TYPE


async def test_access_token_used_as_service_token_is_rejected(env: Env) -> None:
    result = await env.service.authenticate_service(env.pair.access_token, "svc-test")
    assert result.error_code is AuthErrorCode.WRONG_TOKEN_TYPE


# ----- keys and headers -----------------------------------------------------------------------


async def test_unknown_kid_is_rejected(env: Env) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    header = env.header(kid=jwk_thumbprint(attacker.public_key()))
    token = forge_token(header, env.claims, key=attacker)
    assert await env.code(token) is AuthErrorCode.UNKNOWN_KEY


async def test_missing_kid_is_rejected(env: Env) -> None:
    header = {"alg": "EdDSA", "typ": "JWT"}
    token = forge_token(header, env.claims, key=env.private_key)
    assert await env.code(token) is AuthErrorCode.UNKNOWN_KEY


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "keys/../../secret",
        "/etc/shadow",
        "kid with spaces",
        "%2e%2e%2fetc%2fpasswd",
        "",
        "a" * 200,
        "kid\x00.json",
    ],
)
async def test_kid_with_path_or_odd_characters_is_rejected(env: Env, kid: str) -> None:
    token = forge_token(env.header(kid=kid), env.claims, key=env.private_key)
    assert await env.code(token) is AuthErrorCode.INVALID_HEADER


async def test_non_string_kid_is_rejected(env: Env) -> None:
    token = forge_token(env.header(kid=7), env.claims, key=env.private_key)
    assert await env.code(token) is AuthErrorCode.INVALID_HEADER


def _key_locating_headers(attacker: ed25519.Ed25519PrivateKey) -> dict[str, dict[str, Any]]:
    jwk = public_jwk("attacker", "EdDSA", attacker.public_key()).model_dump(exclude_none=True)
    return {
        "jwk": {"jwk": jwk},
        "jku": {"jku": "https://attacker.example/jwks.json"},
        "x5u": {"x5u": "https://attacker.example/cert.pem"},
        "x5c": {"x5c": ["MIIBattackerCertificate"]},
    }


@pytest.mark.parametrize("header_name", ["jwk", "jku", "x5u", "x5c"])
async def test_key_locating_header_with_attacker_kid_is_ignored(env: Env, header_name: str) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    extra = _key_locating_headers(attacker)[header_name]
    header = {"alg": "EdDSA", "typ": "JWT", "kid": jwk_thumbprint(attacker.public_key()), **extra}
    token = forge_token(header, env.claims, key=attacker)
    assert await env.code(token) is AuthErrorCode.UNKNOWN_KEY


@pytest.mark.parametrize("header_name", ["jwk", "jku", "x5u", "x5c"])
async def test_key_locating_header_with_our_kid_is_ignored(env: Env, header_name: str) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    extra = _key_locating_headers(attacker)[header_name]
    token = forge_token(env.header(**extra), env.claims, key=attacker)
    assert await env.code(token) is AuthErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("crit", [["exp"], ["https://example.com/ext"], ["b64"], [], "exp", [1]])
async def test_crit_header_is_rejected(env: Env, crit: object) -> None:
    extra: dict[str, Any] = {"crit": crit}
    if crit == ["https://example.com/ext"]:
        extra["https://example.com/ext"] = True
    token = env.sign(dict(env.claims), **extra)
    assert await env.code(token) is AuthErrorCode.INVALID_HEADER


async def test_unencoded_payload_header_is_rejected(env: Env) -> None:
    token = env.sign(dict(env.claims), b64=False)
    assert await env.code(token) is AuthErrorCode.INVALID_HEADER


@pytest.mark.parametrize("typ", ["at+jwt+evil", "JWE", 1])
async def test_unexpected_typ_header_is_rejected(env: Env, typ: object) -> None:
    assert await env.code(env.sign(dict(env.claims), typ=typ)) is AuthErrorCode.INVALID_HEADER


async def test_duplicate_header_members_are_rejected(env: Env) -> None:
    header = '{"alg":"EdDSA","typ":"JWT","kid":"' + env.kid + '","alg":"none"}'
    token = forge_token(header, env.claims, key=env.private_key, alg="EdDSA")
    assert await env.code(token) is AuthErrorCode.INVALID_FORMAT


@pytest.mark.parametrize("header", ["[1,2,3]", "not json", '"just a string"'])
async def test_header_that_is_not_a_json_object_is_rejected(env: Env, header: str) -> None:
    token = forge_token(header, env.claims, key=env.private_key, alg="EdDSA")
    assert await env.code(token) is AuthErrorCode.INVALID_FORMAT


# ----- tampering ------------------------------------------------------------------------------


async def test_tampered_payload_is_rejected(env: Env) -> None:
    header, _, signature = env.pair.access_token.split(".")
    forged = {**env.claims, "roles": ["admin"], "plan": "enterprise"}
    token = f"{header}.{b64json(forged)}.{signature}"
    assert await env.code(token) is AuthErrorCode.BAD_SIGNATURE


async def test_payload_swapped_to_another_user_is_rejected(env: Env) -> None:
    other = await env.service.register("other@example.com", PASSWORD)
    header, _, signature = env.pair.access_token.split(".")
    token = f"{header}.{b64json({**env.claims, 'sub': other.user_id})}.{signature}"
    assert await env.code(token) is AuthErrorCode.BAD_SIGNATURE


async def test_tampered_signature_is_rejected(env: Env) -> None:
    header, payload, signature = env.pair.access_token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert await env.code(f"{header}.{payload}.{tampered}") is AuthErrorCode.BAD_SIGNATURE


async def test_truncated_signature_is_rejected(env: Env) -> None:
    header, payload, signature = env.pair.access_token.split(".")
    assert await env.code(f"{header}.{payload}.{signature[:40]}") is AuthErrorCode.BAD_SIGNATURE


async def test_padded_base64_segment_is_rejected(env: Env) -> None:
    header, payload, signature = env.pair.access_token.split(".")
    assert await env.code(f"{header}==.{payload}.{signature}") is AuthErrorCode.INVALID_FORMAT


async def test_oversized_token_is_rejected(env: Env) -> None:
    claims = {**env.claims, "padding": "x" * 10_000}
    token = env.sign(claims)
    assert len(token) > env.service.settings.max_token_bytes
    assert env.service.validate_jwt_format(token) is False
    assert await env.code(token) is AuthErrorCode.INVALID_FORMAT


@pytest.mark.parametrize("form", ["flattened", "general"])
async def test_json_serialization_is_rejected(env: Env, form: str) -> None:
    header, payload, signature = env.pair.access_token.split(".")
    if form == "flattened":
        document: dict[str, Any] = {
            "protected": header,
            "payload": payload,
            "signature": signature,
        }
    else:
        document = {
            "payload": payload,
            "signatures": [{"protected": header, "signature": signature}],
        }
    token = json.dumps(document)
    assert env.service.validate_jwt_format(token) is False
    assert await env.code(token) is AuthErrorCode.INVALID_FORMAT


@pytest.mark.parametrize("token", [None, ""])
async def test_no_token_is_reported_as_such(env: Env, token: str | None) -> None:
    assert await env.code(token) is AuthErrorCode.NO_TOKEN


@pytest.mark.parametrize(
    "token", ["invalid", "header.payload", "a.b.c.d", "a..c", "Bearer x.y.z", 42, b"a.b.c"]
)
async def test_malformed_token_is_rejected_without_exception(env: Env, token: object) -> None:
    assert await env.code(token) is AuthErrorCode.INVALID_FORMAT


# ----- revocation -----------------------------------------------------------------------------


async def test_revoked_jti_is_rejected(env: Env) -> None:
    rotated = await env.service.refresh(env.pair.refresh_token)  # same session, new access token
    await env.service.store.revoke_jti(
        env.claims["jti"], user_id=env.claims["sub"], expires_at=env.claims["exp"], now=time.time()
    )
    assert await env.code(env.pair.access_token) is AuthErrorCode.REVOKED
    assert await env.code(rotated.access_token) is None  # only that jti


async def test_logged_out_token_is_rejected(env: Env) -> None:
    await env.service.logout(env.pair.access_token)
    assert await env.code(env.pair.access_token) is AuthErrorCode.REVOKED
    with pytest.raises(TokenError) as caught:
        await env.service.refresh(env.pair.refresh_token)
    assert caught.value.error_code is AuthErrorCode.REVOKED


async def test_user_wide_revocation_rejects_every_earlier_token(env: Env) -> None:
    second = await env.service.login("victim@example.com", PASSWORD)
    await env.service.register("bystander@example.com", PASSWORD)
    bystander = await env.service.login("bystander@example.com", PASSWORD)

    await env.service.revoke_user_tokens(env.claims["sub"])

    assert await env.code(env.pair.access_token) is AuthErrorCode.REVOKED
    assert await env.code(second.access_token) is AuthErrorCode.REVOKED
    with pytest.raises(TokenError) as caught:
        await env.service.refresh(second.refresh_token)
    assert caught.value.error_code is AuthErrorCode.REVOKED
    assert await env.code(bystander.access_token) is None
    fresh = await env.service.login("victim@example.com", PASSWORD)
    assert await env.code(fresh.access_token) is None


async def test_refresh_token_reuse_revokes_the_whole_family(env: Env) -> None:
    other_session = await env.service.login("victim@example.com", PASSWORD)
    rotated = await env.service.refresh(env.pair.refresh_token)
    assert await env.code(rotated.access_token) is None

    with pytest.raises(TokenError) as replay:
        await env.service.refresh(env.pair.refresh_token)  # the stolen, already-used token
    assert replay.value.error_code is AuthErrorCode.REVOKED

    with pytest.raises(TokenError) as successor:
        await env.service.refresh(rotated.refresh_token)
    assert successor.value.error_code is AuthErrorCode.REVOKED
    assert await env.code(rotated.access_token) is AuthErrorCode.REVOKED
    assert await env.code(env.pair.access_token) is AuthErrorCode.REVOKED
    assert await env.code(other_session.access_token) is None  # another session survives
