"""Key store: persistence, rotation, expiry of retired keys, JWKS."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.api import AuthErrorCode
from auth.keys import KeyStore, jwk_thumbprint, public_jwk, verification_key_from_jwk
from auth.service import LocalAuthService
from auth.testing import fast_settings
from auth.token_format import b64url_decode

PASSWORD = "correct horse battery staple"


class FakeClock:
    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_first_load_creates_a_persisted_signer(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    store.load()
    signer = store.signer()
    assert signer.alg == "EdDSA"
    path = tmp_path / "keys" / f"{signer.kid}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700

    again = KeyStore(tmp_path / "keys")
    again.load()
    assert again.signer().kid == signer.kid


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3 example key and thumbprint.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    public = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(x))
    jwk = public_jwk("ignored", "EdDSA", public)
    assert jwk.x == x
    key = verification_key_from_jwk(jwk.model_copy(update={"kid": "abc"}))
    assert isinstance(key.key, ed25519.Ed25519PublicKey)
    assert jwk_thumbprint(key.key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rotation_retires_the_old_key_and_deletes_its_private_half(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KeyStore(tmp_path / "keys", retired_key_lifetime=3600, clock=clock)
    store.load()
    old = store.signer()
    new = store.rotate()
    assert new.kid != old.kid
    assert store.signer().kid == new.kid
    data = json.loads((tmp_path / "keys" / f"{old.kid}.json").read_text())
    assert "private_pem" not in data
    assert data["verify_until"] == clock.now + 3600
    assert store.verification_key(old.kid) is not None

    reloaded = KeyStore(tmp_path / "keys", retired_key_lifetime=3600, clock=clock)
    reloaded.load()
    assert reloaded.signer().kid == new.kid
    assert reloaded.verification_key(old.kid) is not None


def test_retired_key_stops_verifying_after_its_lifetime(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KeyStore(tmp_path / "keys", retired_key_lifetime=100, clock=clock)
    store.load()
    old = store.signer()
    store.rotate()
    clock.advance(101)
    assert store.verification_key(old.kid) is None
    assert old.kid not in {key.kid for key in store.jwks().keys}
    store.prune()
    assert not (tmp_path / "keys" / f"{old.kid}.json").exists()


def test_rotate_if_older_than(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KeyStore(tmp_path / "keys", clock=clock)
    store.load()
    first = store.signer().kid
    assert store.rotate_if_older_than(0) is False  # 0 disables
    clock.advance(50)
    assert store.rotate_if_older_than(100) is False
    clock.advance(60)
    assert store.rotate_if_older_than(100) is True
    assert store.signer().kid != first


def test_changing_the_configured_algorithm_rotates(tmp_path: Path) -> None:
    eddsa = KeyStore(tmp_path / "keys", retired_key_lifetime=60)
    eddsa.load()
    rsa_store = KeyStore(
        tmp_path / "keys", algorithm="RS256", rsa_key_size=2048, retired_key_lifetime=60
    )
    rsa_store.load()
    assert rsa_store.signer().alg == "RS256"
    assert {key.alg for key in rsa_store.jwks().keys} == {"RS256", "EdDSA"}


def test_hs256_secret_is_never_published(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", algorithm="HS256", hs256_secret=b"s" * 40)
    store.load()
    assert store.signer().alg == "HS256"
    assert store.jwks().keys == ()


def test_unreadable_key_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "broken.json").write_text("{not json")
    store = KeyStore(tmp_path / "keys")
    store.load()
    assert store.signer().kid != "broken"


def test_jwk_with_unsupported_algorithm_is_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    jwk = public_jwk("kid1", "EdDSA", key)
    with pytest.raises(ValueError, match="unsupported"):
        verification_key_from_jwk(jwk.model_copy(update={"alg": "HS256"}))
    with pytest.raises(ValueError, match="malformed kid"):
        verification_key_from_jwk(jwk.model_copy(update={"kid": "../x"}))


# ----- acceptance 4: rotation through the service ---------------------------------------------


@pytest.fixture
async def rotating(tmp_path: Path) -> AsyncIterator[tuple[LocalAuthService, FakeClock]]:
    clock = FakeClock()
    settings = fast_settings(tmp_path / "auth", access_ttl_seconds=600, refresh_ttl_seconds=3600)
    async with await LocalAuthService.create(settings, clock=clock) as service:
        yield service, clock


async def test_tokens_of_the_old_key_validate_after_rotation_until_expiry(
    rotating: tuple[LocalAuthService, FakeClock],
) -> None:
    service, clock = rotating
    await service.register("rot@example.com", PASSWORD)
    old_pair = await service.login("rot@example.com", PASSWORD)
    old_kid = service.key_store.signer().kid

    new_kid = service.rotate_signing_key()
    assert new_kid != old_kid
    new_pair = await service.login("rot@example.com", PASSWORD)

    jwks = await service.get_jwks()
    assert [key.kid for key in jwks.keys] == [new_kid, old_kid]  # signer first
    assert (await service.authenticate_token(old_pair.access_token)).success
    assert (await service.authenticate_token(new_pair.access_token)).success
    refreshed = await service.refresh(old_pair.refresh_token)  # an old-key refresh token works
    assert (await service.authenticate_token(refreshed.access_token)).success

    clock.advance(600 + service.settings.leeway_seconds + 1)  # old access token expired
    result = await service.authenticate_token(old_pair.access_token)
    assert result.error_code is AuthErrorCode.EXPIRED

    clock.advance(3600)  # past the longest token lifetime: the old key is gone
    assert old_kid not in {key.kid for key in (await service.get_jwks()).keys}
    assert service.key_store.verification_key(old_kid) is None


async def test_automatic_rotation_by_age(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = fast_settings(tmp_path / "auth", key_rotation_interval_seconds=1000)
    async with await LocalAuthService.create(settings, clock=clock) as service:
        await service.register("age@example.com", PASSWORD)
        first = service.key_store.signer().kid
        await service.login("age@example.com", PASSWORD)
        assert service.key_store.signer().kid == first
        clock.advance(1001)
        pair = await service.login("age@example.com", PASSWORD)
        assert service.key_store.signer().kid != first
        assert (await service.authenticate_token(pair.access_token)).success


async def test_rotation_by_another_process_is_picked_up(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth")
    async with (
        await LocalAuthService.create(settings) as issuer,
        await LocalAuthService.create(settings) as verifier,
    ):
        await issuer.register("shared@example.com", PASSWORD)
        issuer.rotate_signing_key()
        pair = await issuer.login("shared@example.com", PASSWORD)
        assert (await verifier.authenticate_token(pair.access_token)).success
