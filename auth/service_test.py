"""LocalAuthService: accounts, login, sessions, service tokens, limits, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from auth.api import (
    AccountExistsError,
    AccountNotFoundError,
    AuthErrorCode,
    HealthState,
    InvalidCredentialsError,
    InvalidRequestError,
    Plan,
    RateLimitedError,
    TokenError,
    TokenType,
)
from auth.keys import KeyStore
from auth.passwords import PasswordHasher
from auth.rate_limit import LoginRateLimiter
from auth.service import LocalAuthService
from auth.settings import Argon2Params
from auth.store import AuthStore
from auth.testing import FAST_ARGON2, fast_settings
from auth.tokens import TokenClaims

PASSWORD = "correct horse battery staple"
SERVICE_SECRET = "svc-test-secret-0123456789abcdef"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LocalAuthService]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as svc:
        yield svc


# ----- registration ---------------------------------------------------------------------------


async def test_register_normalizes_email_and_starts_on_the_free_plan(
    service: LocalAuthService,
) -> None:
    account = await service.register("  Alice@Example.COM ", PASSWORD, "Alice")
    assert account.email == "alice@example.com"
    assert account.plan is Plan.FREE
    assert account.user_id.startswith("usr_")
    assert (await service.get_account(account.user_id)) == account
    pair = await service.login("ALICE@example.com", PASSWORD)
    assert pair.user_id == account.user_id


async def test_register_twice_is_refused(service: LocalAuthService) -> None:
    await service.register("dup@example.com", PASSWORD)
    with pytest.raises(AccountExistsError) as caught:
        await service.register("DUP@example.com", PASSWORD)
    assert caught.value.error_code is AuthErrorCode.ACCOUNT_EXISTS


@pytest.mark.parametrize(
    ("email", "password", "name"),
    [
        ("not-an-email", PASSWORD, ""),
        ("a@b", PASSWORD, ""),
        ("x" * 400 + "@example.com", PASSWORD, ""),
        ("ok@example.com", "short", ""),
        ("ok@example.com", " " * 12, ""),
        ("ok@example.com", "p" * 2000, ""),
        ("ok@example.com", PASSWORD, "bad\x00name"),
        ("ok@example.com", PASSWORD, "n" * 201),
    ],
)
async def test_register_rejects_bad_input(
    service: LocalAuthService, email: str, password: str, name: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await service.register(email, password, name)
    assert caught.value.error_code is AuthErrorCode.INVALID_REQUEST
    assert password not in caught.value.message


# ----- login ----------------------------------------------------------------------------------


async def test_wrong_password_and_unknown_user_fail_identically(service: LocalAuthService) -> None:
    await service.register("known@example.com", PASSWORD)
    with pytest.raises(InvalidCredentialsError) as wrong:
        await service.login("known@example.com", "not the password")
    with pytest.raises(InvalidCredentialsError) as unknown:
        await service.login("nobody@example.com", PASSWORD)
    assert wrong.value.error_code is unknown.value.error_code is AuthErrorCode.INVALID_CREDENTIALS
    assert wrong.value.message == unknown.value.message


class CountingHasher(PasswordHasher):
    def __init__(self, params: Argon2Params) -> None:
        super().__init__(params)
        self.real = 0
        self.dummy = 0

    async def verify(self, password_hash: str, password: str) -> bool:
        self.real += 1
        return await super().verify(password_hash, password)

    async def verify_dummy(self, password: str) -> None:
        self.dummy += 1
        await super().verify_dummy(password)


async def test_unknown_user_still_costs_one_password_verification(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth")
    keys = KeyStore(settings.data_dir / "keys")
    keys.load()
    store = AuthStore(settings.resolved_database_url())
    await store.create_schema()
    hasher = CountingHasher(FAST_ARGON2)
    limiter = LoginRateLimiter(
        login_per_account="100/minute",
        login_per_client="100/minute",
        register_per_client="100/minute",
    )
    async with LocalAuthService(
        settings, store=store, keys=keys, hasher=hasher, limiter=limiter
    ) as service:
        await service.register("real@example.com", PASSWORD)
        with pytest.raises(InvalidCredentialsError):
            await service.login("ghost@example.com", PASSWORD)
        assert (hasher.dummy, hasher.real) == (1, 0)
        with pytest.raises(InvalidCredentialsError):
            await service.login("real@example.com", "wrong password!")
        assert (hasher.dummy, hasher.real) == (1, 1)


async def test_login_rehashes_a_password_hashed_with_old_parameters(tmp_path: Path) -> None:
    data_dir = tmp_path / "auth"
    async with await LocalAuthService.create(fast_settings(data_dir)) as old:
        account = await old.register("rehash@example.com", PASSWORD)
    stronger = Argon2Params(time_cost=2, memory_cost_kib=512, parallelism=1)
    async with await LocalAuthService.create(fast_settings(data_dir, argon2=stronger)) as new:
        before = await new.store.account(account.user_id)
        assert before is not None and "t=1" in before.password_hash
        await new.login("rehash@example.com", PASSWORD)
        after = await new.store.account(account.user_id)
        assert after is not None and "t=2" in after.password_hash and "m=512" in after.password_hash
        await new.login("rehash@example.com", PASSWORD)


async def test_login_flood_on_one_account_is_rate_limited(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth", login_rate_limit_per_account="3/minute")
    async with await LocalAuthService.create(settings) as service:
        await service.register("flood@example.com", PASSWORD)
        for _ in range(3):
            with pytest.raises(InvalidCredentialsError):
                await service.login("flood@example.com", "wrong password!")
        with pytest.raises(RateLimitedError) as caught:
            await service.login("flood@example.com", PASSWORD)  # even the right password
        assert caught.value.error_code is AuthErrorCode.RATE_LIMITED
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 60
        await service.register("calm@example.com", PASSWORD)
        await service.login("calm@example.com", PASSWORD)  # other accounts unaffected


async def test_password_spraying_from_one_client_is_rate_limited(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth", login_rate_limit_per_client="4/minute")
    async with await LocalAuthService.create(settings) as service:
        for index in range(4):
            with pytest.raises(InvalidCredentialsError):
                await service.login(f"u{index}@example.com", PASSWORD, client_id="ipv4:10.0.0.1")
        with pytest.raises(RateLimitedError):
            await service.login("u9@example.com", PASSWORD, client_id="ipv4:10.0.0.1")
        with pytest.raises(InvalidCredentialsError):  # another client is not limited
            await service.login("u9@example.com", PASSWORD, client_id="ipv4:10.0.0.2")


async def test_registration_flood_from_one_client_is_rate_limited(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth", register_rate_limit_per_client="2/minute")
    async with await LocalAuthService.create(settings) as service:
        await service.register("r1@example.com", PASSWORD, client_id="c")
        await service.register("r2@example.com", PASSWORD, client_id="c")
        with pytest.raises(RateLimitedError):
            await service.register("r3@example.com", PASSWORD, client_id="c")


# ----- sessions -------------------------------------------------------------------------------


async def test_refresh_rotates_and_keeps_the_session(service: LocalAuthService) -> None:
    await service.register("rot@example.com", PASSWORD)
    first = await service.login("rot@example.com", PASSWORD)
    second = await service.refresh(first.refresh_token)
    third = await service.refresh(second.refresh_token)
    assert first.session_id == second.session_id == third.session_id
    assert len({first.refresh_token, second.refresh_token, third.refresh_token}) == 3
    result = await service.authenticate_token(third.access_token)
    assert result.success and result.session_id == first.session_id


async def test_concurrent_replays_of_one_refresh_token_let_at_most_one_through(
    service: LocalAuthService,
) -> None:
    await service.register("race@example.com", PASSWORD)
    pair = await service.login("race@example.com", PASSWORD)
    outcomes = await asyncio.gather(
        *(service.refresh(pair.refresh_token) for _ in range(4)), return_exceptions=True
    )
    winners = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, TokenError)]
    assert len(winners) <= 1 and len(winners) + len(losers) == 4
    assert all(loser.error_code is AuthErrorCode.REVOKED for loser in losers)
    for winner in winners:  # the replay revoked the family, winner included
        assert (await service.authenticate_token(winner.access_token)).error_code is (
            AuthErrorCode.REVOKED
        )


async def test_refresh_carries_updated_entitlements(service: LocalAuthService) -> None:
    account = await service.register("up@example.com", PASSWORD)
    pair = await service.login("up@example.com", PASSWORD)
    updated = await service.update_account(
        account.user_id, plan=Plan.PRO, roles=("admin",), permissions=("tools:run",)
    )
    assert (updated.plan, updated.roles, updated.permissions) == (
        Plan.PRO,
        ("admin",),
        ("tools:run",),
    )
    refreshed = await service.refresh(pair.refresh_token)
    result = await service.authenticate_token(refreshed.access_token)
    assert result.plan is Plan.PRO and result.roles == ("admin",)
    assert result.permissions == ("tools:run",)


async def test_update_account_validates_input(service: LocalAuthService) -> None:
    account = await service.register("val@example.com", PASSWORD)
    with pytest.raises(InvalidRequestError):
        await service.update_account(account.user_id, roles=("bad role with spaces",))
    with pytest.raises(AccountNotFoundError):
        await service.update_account("usr_missing", plan=Plan.PRO)


async def test_logout_is_idempotent_and_rejects_garbage(service: LocalAuthService) -> None:
    await service.register("out@example.com", PASSWORD)
    pair = await service.login("out@example.com", PASSWORD)
    await service.logout(pair.refresh_token)
    await service.logout(pair.refresh_token)
    await service.logout(pair.access_token)
    assert (await service.authenticate_token(pair.access_token)).error_code is AuthErrorCode.REVOKED
    with pytest.raises(TokenError) as caught:
        await service.logout("not-a-token")
    assert caught.value.error_code is AuthErrorCode.INVALID_FORMAT


async def test_revoke_user_tokens_before_a_past_time_spares_later_tokens(
    service: LocalAuthService,
) -> None:
    account = await service.register("past@example.com", PASSWORD)
    pair = await service.login("past@example.com", PASSWORD)
    mark = await service.revoke_user_tokens(
        account.user_id, before=datetime.now(UTC) - timedelta(hours=1)
    )
    assert mark < datetime.now(UTC)
    assert (await service.authenticate_token(pair.access_token)).success
    # The mark never moves backwards.
    later = await service.revoke_user_tokens(account.user_id)
    again = await service.revoke_user_tokens(account.user_id, before=mark)
    assert again == later


# ----- service tokens -------------------------------------------------------------------------


async def test_service_token_round_trip(service: LocalAuthService) -> None:
    issued = await service.issue_service_token("svc-test", SERVICE_SECRET)
    result = await service.authenticate_service(issued.token, "svc-test")
    assert result.success and result.user_id == "svc-test"
    assert result.token_type is TokenType.SERVICE and result.roles == ("service",)
    assert (await service.authenticate_service(issued.token)).success


async def test_service_token_for_another_service_id_is_rejected(service: LocalAuthService) -> None:
    issued = await service.issue_service_token("svc-test", SERVICE_SECRET)
    result = await service.authenticate_service(issued.token, "billing")
    assert result.error_code is AuthErrorCode.WRONG_SUBJECT


@pytest.mark.parametrize(
    ("service_id", "secret"),
    [("svc-test", "wrong-secret"), ("svc-test", ""), ("unknown", SERVICE_SECRET)],
)
async def test_bad_service_credentials_fail_identically(
    service: LocalAuthService, service_id: str, secret: str
) -> None:
    with pytest.raises(InvalidCredentialsError) as caught:
        await service.issue_service_token(service_id, secret)
    assert caught.value.message == "invalid service credentials"


async def test_service_removed_from_configuration_loses_its_tokens(tmp_path: Path) -> None:
    data_dir = tmp_path / "auth"
    async with await LocalAuthService.create(fast_settings(data_dir)) as before:
        issued = await before.issue_service_token("svc-test", SERVICE_SECRET)
    async with await LocalAuthService.create(
        fast_settings(data_dir, service_credentials={})
    ) as after:
        result = await after.authenticate_service(issued.token)
        assert result.error_code is AuthErrorCode.REVOKED


# ----- observability and failure --------------------------------------------------------------


async def test_stats_count_by_context_and_error(service: LocalAuthService) -> None:
    await service.register("stats@example.com", PASSWORD)
    pair = await service.login("stats@example.com", PASSWORD)
    await service.authenticate_token(pair.access_token)
    await service.authenticate_token(None)
    await service.authenticate_token("a.b.c")
    stats = await service.stats()
    assert (stats.attempts, stats.successes, stats.failures) == (3, 1, 2)
    assert stats.by_context == {"rest_api": 3}
    assert stats.by_error_code == {"NO_TOKEN": 1, "INVALID_FORMAT": 1}


class FailingRevocation:
    async def is_revoked(self, claims: TokenClaims) -> bool:
        raise OperationalError("SELECT 1", {}, Exception("database is down"))


async def test_store_failure_fails_closed_as_unavailable(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth")
    async with await LocalAuthService.create(settings) as healthy:
        await healthy.register("down@example.com", PASSWORD)
        pair = await healthy.login("down@example.com", PASSWORD)
    keys = KeyStore(settings.data_dir / "keys")
    keys.load()
    store = AuthStore(settings.resolved_database_url())
    async with LocalAuthService(
        settings,
        store=store,
        keys=keys,
        hasher=PasswordHasher(FAST_ARGON2),
        limiter=LoginRateLimiter(
            login_per_account="9/minute",
            login_per_client="9/minute",
            register_per_client="9/minute",
        ),
        revocation=FailingRevocation(),
    ) as broken:
        result = await broken.authenticate_token(pair.access_token)
        assert result.success is False
        assert result.error_code is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE


async def test_health_reports_an_unreachable_store(tmp_path: Path) -> None:
    settings = fast_settings(
        tmp_path / "auth", database_url=f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"
    )
    keys = KeyStore(settings.data_dir / "keys")
    keys.load()
    async with LocalAuthService(
        settings,
        store=AuthStore(settings.resolved_database_url()),
        keys=keys,
        hasher=PasswordHasher(FAST_ARGON2),
        limiter=LoginRateLimiter(
            login_per_account="9/minute",
            login_per_client="9/minute",
            register_per_client="9/minute",
        ),
    ) as service:
        health = await service.health()
        assert health.state is HealthState.UNAVAILABLE
        with pytest.raises(Exception) as caught:
            await service.register("x@example.com", PASSWORD)
        assert getattr(caught.value, "error_code", None) is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE


async def test_purge_removes_only_expired_rows(service: LocalAuthService) -> None:
    await service.register("purge@example.com", PASSWORD)
    pair = await service.login("purge@example.com", PASSWORD)
    await service.logout(pair.access_token)
    assert await service.purge_expired() == 0
    assert (await service.authenticate_token(pair.access_token)).error_code is AuthErrorCode.REVOKED


async def test_explicitly_configured_hs256(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "auth", algorithm="HS256", hs256_secret="k" * 48)
    async with await LocalAuthService.create(settings) as service:
        await service.register("hs@example.com", PASSWORD)
        pair = await service.login("hs@example.com", PASSWORD)
        assert pair.access_token.startswith("eyJhbGciOiJIUzI1NiIs")  # {"alg":"HS256",...
        assert (await service.authenticate_token(pair.access_token)).success
        assert (await service.get_jwks()).keys == ()  # a shared secret is never published
        async with await LocalAuthService.create(settings) as peer:  # a second process
            assert (await peer.authenticate_token(pair.access_token)).success
