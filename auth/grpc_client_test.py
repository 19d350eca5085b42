"""The remote facade: retries, deadline, circuit breaker, recovery (acceptance 5)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth.api import (
    AccountNotFoundError,
    AuthErrorCode,
    HealthState,
    RateLimitedError,
    ServiceUnavailableError,
    TokenError,
    UnifiedAuthenticationService,
)
from auth.grpc_client import ClientPolicy, GrpcAuthClient
from auth.grpc_server import build_server
from auth.resilience import BreakerState, CircuitBreaker, backoff_delay
from auth.service import LocalAuthService
from auth.testing import AuthServerProcess, fast_settings

PASSWORD = "correct horse battery staple"
SERVICE_SECRET = "svc-test-secret-0123456789abcdef"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property: the state changes between reads as time and calls pass.
    return breaker.state


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ----- breaker and backoff --------------------------------------------------------------------


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_seconds=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN and not breaker.allow()
    clock.now += 10
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else while it is out
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED and breaker.allow()


def test_failed_trial_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_seconds=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED


def test_backoff_is_exponential_with_full_jitter() -> None:
    seen: list[tuple[float, float]] = []

    def upper(low: float, high: float) -> float:
        seen.append((low, high))
        return high

    delays = [backoff_delay(n, base=0.1, cap=1.0, rng=upper) for n in (1, 2, 3, 4, 5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert all(low == 0.0 for low, _ in seen)


# ----- against nothing ------------------------------------------------------------------------


async def test_malformed_tokens_are_rejected_without_the_network() -> None:
    async with GrpcAuthClient(f"127.0.0.1:{_unused_port()}") as client:
        assert (await client.authenticate_token(None)).error_code is AuthErrorCode.NO_TOKEN
        assert (await client.authenticate_token("x.y")).error_code is AuthErrorCode.INVALID_FORMAT
        assert _state(client.breaker) is BreakerState.CLOSED


async def test_refresh_is_never_retried_but_reads_are() -> None:
    policy = ClientPolicy(
        deadline_seconds=5,
        attempt_timeout_seconds=1,
        max_attempts=3,
        backoff_base_seconds=0.01,
        breaker_failure_threshold=2,
    )
    async with GrpcAuthClient(f"127.0.0.1:{_unused_port()}", policy=policy) as client:
        with pytest.raises(ServiceUnavailableError):
            await client.refresh("a.b.c")
        assert _state(client.breaker) is BreakerState.CLOSED  # one attempt, one failure
        with pytest.raises(ServiceUnavailableError):
            await client.get_jwks()  # retried: the second failure opens the breaker
        assert _state(client.breaker) is BreakerState.OPEN
        assert (await client.health()).state is HealthState.UNAVAILABLE


# ----- against an in-process server -----------------------------------------------------------


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[tuple[LocalAuthService, GrpcAuthClient]]:
    settings = fast_settings(tmp_path / "auth", login_rate_limit_per_account="2/minute")
    async with await LocalAuthService.create(settings) as service:
        server, port, _ = await build_server(service, port=0)
        await server.start()
        try:
            async with GrpcAuthClient(f"127.0.0.1:{port}") as client:
                yield service, client
        finally:
            await server.stop(None)


async def test_client_satisfies_the_protocol(
    local: tuple[LocalAuthService, GrpcAuthClient],
) -> None:
    _, client = local
    assert isinstance(client, UnifiedAuthenticationService)


async def test_remote_and_local_results_agree(
    local: tuple[LocalAuthService, GrpcAuthClient],
) -> None:
    service, client = local
    account = await client.register("same@example.com", PASSWORD, "Same")
    pair = await client.login("same@example.com", PASSWORD)
    remote = await client.authenticate_token(pair.access_token)
    direct = await service.authenticate_token(pair.access_token)
    fields = ("success", "user_id", "email", "plan", "roles", "token_type", "session_id", "jti")
    assert {f: getattr(remote, f) for f in fields} == {f: getattr(direct, f) for f in fields}
    assert remote.expires_at == direct.expires_at
    assert remote.user_id == account.user_id
    for bad in (pair.refresh_token, pair.access_token[:-4] + "AAAA"):
        assert (await client.authenticate_token(bad)).error_code is (
            (await service.authenticate_token(bad)).error_code
        )


async def test_typed_errors_survive_the_wire(
    local: tuple[LocalAuthService, GrpcAuthClient],
) -> None:
    _, client = local
    await client.register("limit@example.com", PASSWORD)
    for _ in range(2):
        await client.login("limit@example.com", PASSWORD)
    with pytest.raises(RateLimitedError):
        await client.login("limit@example.com", PASSWORD)
    with pytest.raises(TokenError) as caught:
        await client.logout("a.b.c")
    assert caught.value.error_code is AuthErrorCode.INVALID_FORMAT


async def test_service_token_calls_admin_operations(
    local: tuple[LocalAuthService, GrpcAuthClient],
) -> None:
    service, client = local
    issued = await client.issue_service_token("svc-test", SERVICE_SECRET)
    assert (await client.authenticate_service(issued.token, "svc-test")).success
    wrong = await client.authenticate_service(issued.token, "other")
    assert wrong.error_code is AuthErrorCode.WRONG_SUBJECT

    async def token() -> str:
        return issued.token

    async with GrpcAuthClient(client.target, token_provider=token) as admin:
        with pytest.raises(AccountNotFoundError):
            await admin.update_account("usr_unknown", roles=())
        account = await service.register("clear@example.com", PASSWORD)
        await service.update_account(account.user_id, roles=("admin", "ops"))
        cleared = await admin.update_account(account.user_id, roles=())
        assert cleared.roles == ()


# ----- acceptance 5: server down, breaker, recovery -------------------------------------------


async def test_unavailable_within_deadline_then_breaker_opens_then_recovers(tmp_path: Path) -> None:
    server = AuthServerProcess(tmp_path / "data")
    address = await asyncio.to_thread(server.start)
    clock = FakeClock()
    policy = ClientPolicy(
        deadline_seconds=2.0,
        attempt_timeout_seconds=0.5,
        max_attempts=3,
        backoff_base_seconds=0.02,
        backoff_max_seconds=0.1,
        breaker_failure_threshold=3,
        breaker_cooldown_seconds=30,
        reconnect_backoff_ms=50,
        max_reconnect_backoff_ms=200,
    )
    try:
        async with GrpcAuthClient(address, policy=policy, breaker_clock=clock) as client:
            await client.register("down@example.com", PASSWORD)
            pair = await client.login("down@example.com", PASSWORD)
            assert (await client.authenticate_token(pair.access_token)).success

            await asyncio.to_thread(server.stop)

            started = time.monotonic()
            result = await client.authenticate_token(pair.access_token)
            elapsed = time.monotonic() - started
            assert result.success is False
            assert result.error_code is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE
            assert elapsed <= policy.deadline_seconds + 1.0  # scheduling slack only
            assert _state(client.breaker) is BreakerState.OPEN
            assert (await client.stats()).circuit_state == "open"

            # Open: later calls fail at once, even once the server is back.
            restarted = AuthServerProcess(tmp_path / "data", port=server.port)
            assert await asyncio.to_thread(restarted.start) == address
            try:
                fast = await client.authenticate_token(pair.access_token)
                assert fast.error_code is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE
                assert "circuit open" in (fast.error or "")

                clock.now += policy.breaker_cooldown_seconds  # cooldown over: half-open
                assert _state(client.breaker) is BreakerState.HALF_OPEN
                async with asyncio.timeout(10):
                    await client.wait_until_ready()
                recovered = await client.authenticate_token(pair.access_token)
                assert recovered.success, recovered.error  # same data dir: same keys, same DB
                assert _state(client.breaker) is BreakerState.CLOSED
            finally:
                await asyncio.to_thread(restarted.stop)
    finally:
        await asyncio.to_thread(server.stop)
