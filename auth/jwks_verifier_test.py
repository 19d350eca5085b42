"""JWKSVerifier: local verification against a fetched JWKS, cache, single flight, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.api import AuthErrorCode, HealthState, JsonWebKey, JsonWebKeySet, TokenPair
from auth.jwks_verifier import JWKSVerifier
from auth.keys import jwk_thumbprint
from auth.revocation import StoreRevocationChecker
from auth.service import LocalAuthService
from auth.testing import fast_settings, forge_token
from auth.tokens import TokenClaims

PASSWORD = "correct horse battery staple"


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Source:
    """The JWKS endpoint as the verifier sees it: counts fetches, can fail or be gated."""

    service: LocalAuthService
    fetches: int = 0
    fail: bool = False
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> JsonWebKeySet:
        self.fetches += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("auth service down")
        return await self.service.get_jwks()


@dataclass
class Env:
    service: LocalAuthService
    source: Source
    clock: Monotonic
    verifier: JWKSVerifier
    pair: TokenPair


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = fast_settings(tmp_path / "auth")
    async with await LocalAuthService.create(settings) as service:
        await service.register("local@example.com", PASSWORD)
        pair = await service.login("local@example.com", PASSWORD)
        source = Source(service)
        clock = Monotonic()
        verifier = JWKSVerifier.from_settings(
            settings,
            fetch_jwks=source,
            is_revoked=StoreRevocationChecker(service.store).is_revoked,
            cache_ttl_seconds=300,
            min_refetch_interval_seconds=30,
            monotonic=clock,
        )
        yield Env(service, source, clock, verifier, pair)


async def test_valid_token_verifies_locally_and_keys_are_cached(env: Env) -> None:
    for _ in range(3):
        result = await env.verifier.authenticate_token(env.pair.access_token)
        assert result.success and result.user_id == env.pair.user_id
    assert env.source.fetches == 1


async def test_cache_expires_after_its_ttl(env: Env) -> None:
    await env.verifier.authenticate_token(env.pair.access_token)
    env.clock.now += 301
    assert (await env.verifier.authenticate_token(env.pair.access_token)).success
    assert env.source.fetches == 2


async def test_concurrent_cold_validations_share_one_fetch(env: Env) -> None:
    env.source.gate = asyncio.Event()
    tasks = [
        asyncio.create_task(env.verifier.authenticate_token(env.pair.access_token))
        for _ in range(20)
    ]
    await env.source.entered.wait()
    env.source.gate.set()
    results = await asyncio.gather(*tasks)
    assert all(result.success for result in results)
    assert env.source.fetches == 1


async def test_unknown_kid_refetches_at_most_once_per_interval(env: Env) -> None:
    await env.verifier.authenticate_token(env.pair.access_token)
    assert env.source.fetches == 1
    attacker = ed25519.Ed25519PrivateKey.generate()
    header = {"alg": "EdDSA", "typ": "JWT", "kid": jwk_thumbprint(attacker.public_key())}
    token = forge_token(header, {"sub": "x"}, key=attacker)

    env.clock.now += 31
    first = await env.verifier.authenticate_token(token)
    assert first.error_code is AuthErrorCode.UNKNOWN_KEY
    assert env.source.fetches == 2
    for _ in range(5):  # a flood of unknown kids inside the interval: no more fetches
        result = await env.verifier.authenticate_token(token)
        assert result.error_code is AuthErrorCode.UNKNOWN_KEY
    assert env.source.fetches == 2
    env.clock.now += 31
    await env.verifier.authenticate_token(token)
    assert env.source.fetches == 3


async def test_rotated_signer_is_fetched_on_first_sight(env: Env) -> None:
    await env.verifier.authenticate_token(env.pair.access_token)
    env.service.rotate_signing_key()
    new_pair = await env.service.login("local@example.com", PASSWORD)
    env.clock.now += 31
    assert (await env.verifier.authenticate_token(new_pair.access_token)).success
    assert (await env.verifier.authenticate_token(env.pair.access_token)).success  # old key too
    assert env.source.fetches == 2


async def test_no_keys_and_no_fetch_means_unavailable(env: Env) -> None:
    env.source.fail = True
    result = await env.verifier.authenticate_token(env.pair.access_token)
    assert result.error_code is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE
    assert (await env.verifier.health()).state is HealthState.UNAVAILABLE


async def test_failed_refresh_keeps_using_cached_keys(env: Env) -> None:
    await env.verifier.authenticate_token(env.pair.access_token)
    env.source.fail = True
    env.clock.now += 301
    assert (await env.verifier.authenticate_token(env.pair.access_token)).success
    assert env.source.fetches == 2
    assert (await env.verifier.health()).state is HealthState.DEGRADED


async def test_revoked_token_is_rejected_through_the_callable(env: Env) -> None:
    await env.service.logout(env.pair.access_token)
    result = await env.verifier.authenticate_token(env.pair.access_token)
    assert result.error_code is AuthErrorCode.REVOKED


async def test_failing_revocation_check_fails_closed(env: Env) -> None:
    async def broken(claims: TokenClaims) -> bool:
        raise ConnectionError("revocation store down")

    verifier = JWKSVerifier.from_settings(
        env.service.settings, fetch_jwks=env.source, is_revoked=broken
    )
    result = await verifier.authenticate_token(env.pair.access_token)
    assert result.error_code is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE


async def test_algorithm_is_pinned_by_the_published_key(env: Env) -> None:
    signer = env.service.key_store.signer()
    header = {"alg": "HS256", "typ": "JWT", "kid": signer.kid}
    jwk = (await env.service.get_jwks()).keys[0]
    token = forge_token(header, {"sub": "x"}, key=(jwk.x or "").encode())
    result = await env.verifier.authenticate_token(token)
    assert result.error_code is AuthErrorCode.DISALLOWED_ALGORITHM


async def test_unusable_published_keys_are_skipped(tmp_path: Path) -> None:
    async def fetch() -> JsonWebKeySet:
        return JsonWebKeySet(
            keys=(
                JsonWebKey(kty="oct", kid="sym", alg="HS256"),
                JsonWebKey(kty="OKP", kid="../bad", alg="EdDSA", crv="Ed25519", x="AAAA"),
                JsonWebKey(kty="OKP", kid="short", alg="EdDSA", crv="Ed25519", x="AAAA"),
            )
        )

    async def never_revoked(claims: TokenClaims) -> bool:
        return False

    verifier = JWKSVerifier.from_settings(
        fast_settings(tmp_path), fetch_jwks=fetch, is_revoked=never_revoked
    )
    await verifier.refresh_keys()
    assert (await verifier.health()).details["cached_keys"] == "0"


def test_symmetric_algorithms_cannot_be_allowed() -> None:
    async def fetch() -> JsonWebKeySet:
        return JsonWebKeySet()

    async def never_revoked(claims: TokenClaims) -> bool:
        return False

    with pytest.raises(ValueError, match="supports only"):
        JWKSVerifier(
            fetch_jwks=fetch,
            is_revoked=never_revoked,
            issuer="i",
            access_audience="a",
            refresh_audience="r",
            service_audience="s",
            allowed_algorithms={"EdDSA", "HS256"},
        )


async def test_service_tokens_verify_locally(env: Env) -> None:
    issued = await env.service.issue_service_token("svc-test", "svc-test-secret-0123456789abcdef")
    assert (await env.verifier.authenticate_service(issued.token, "svc-test")).success
    wrong = await env.verifier.authenticate_service(issued.token, "other")
    assert wrong.error_code is AuthErrorCode.WRONG_SUBJECT
    as_access = await env.verifier.authenticate_token(issued.token)
    assert as_access.error_code is AuthErrorCode.WRONG_TOKEN_TYPE
