"""The token-expiry protocol: the pure state, then the watcher on a manual clock with the
real authenticator and auth service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from auth.service import LocalAuthService
from auth.testing import fast_settings
from websocket.auth.api import (
    HandshakeRequest,
    InvalidTokenError,
    TokenExpiredError,
    TokenExpiringMessage,
    TokenRefreshedMessage,
    UserMismatchError,
    WebSocketAuthError,
)
from websocket.auth.authenticator import WebSocketAuthenticator
from websocket.auth.expiry import ExpiryPolicy, ExpiryWatcher, TokenExpiry
from websocket.auth.testing import ManualClock, ShiftedTime, TestUser, login_again

POLICY = ExpiryPolicy(warning_seconds=60, grace_seconds=30)

# ----- TokenExpiry (pure) ---------------------------------------------------------------------


def test_token_without_expiry_never_has_anything_due() -> None:
    state = TokenExpiry(user_id="usr_a", expires_at=None, policy=POLICY)
    assert state.next_deadline() is None
    assert state.poll(1e12) is None


def test_warning_then_expiry_at_their_deadlines() -> None:
    state = TokenExpiry(user_id="usr_a", expires_at=1000.0, policy=POLICY)
    assert state.next_deadline() == 940.0
    assert state.poll(939.9) is None
    warning = state.poll(940.0)
    assert isinstance(warning, TokenExpiringMessage)
    assert warning.model_dump() == {"type": "token_expiring", "expires_in": 60}
    assert state.poll(940.0) is None
    assert state.next_deadline() == 1030.0
    assert state.poll(1029.9) is None
    assert isinstance(state.poll(1030.0), TokenExpiredError)


def test_late_poll_owes_the_warning_first_then_the_close() -> None:
    state = TokenExpiry(user_id="usr_a", expires_at=1000.0, policy=POLICY)
    warning = state.poll(2000.0)
    assert isinstance(warning, TokenExpiringMessage)
    assert warning.expires_in == 0
    assert isinstance(state.poll(2000.0), TokenExpiredError)


def test_refresh_moves_the_deadlines_and_re_arms_the_warning() -> None:
    state = TokenExpiry(user_id="usr_a", expires_at=1000.0, policy=POLICY)
    assert isinstance(state.poll(950.0), TokenExpiringMessage)
    reply = state.refreshed(1900.0, now=960.0)
    assert reply.model_dump() == {"type": "token_refreshed", "expires_in": 940}
    assert state.poll(1030.0) is None  # the old deadline no longer applies
    assert state.next_deadline() == 1840.0
    assert state.refreshes == 1


def test_negative_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        ExpiryPolicy(warning_seconds=-1)


# ----- ExpiryWatcher --------------------------------------------------------------------------


class RecordingTransport:
    """The connection side of the watcher: records what it was asked to do."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def send_expiry_message(
        self, message: TokenExpiringMessage | TokenRefreshedMessage
    ) -> None:
        await self.events.put(("send", message))

    async def reject_refresh(self, error: WebSocketAuthError) -> None:
        await self.events.put(("reject", error))

    async def close_for(self, error: WebSocketAuthError) -> None:
        await self.events.put(("close", error))

    async def next(self) -> tuple[str, object]:
        return await asyncio.wait_for(self.events.get(), timeout=5)


@dataclass
class Live:
    watcher: ExpiryWatcher
    transport: RecordingTransport
    clock: ManualClock
    expires_at: float
    task: asyncio.Task[None]

    async def idle(self) -> None:
        """Wait until the watcher is asleep on the clock again (or has finished)."""
        sleeping = asyncio.ensure_future(self.clock.wait_for_sleeper())
        try:
            await asyncio.wait(
                {sleeping, self.task}, timeout=5, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            sleeping.cancel()
        assert self.clock.sleepers or self.task.done()


@pytest.fixture
def auth_time() -> ShiftedTime:
    return ShiftedTime()


@pytest.fixture
async def auth_service(tmp_path: Path, auth_time: ShiftedTime) -> AsyncIterator[LocalAuthService]:
    """The real auth service, on a clock the test can move forward."""
    settings = fast_settings(tmp_path / "auth")
    async with await LocalAuthService.create(settings, clock=auth_time) as service:
        yield service


@pytest.fixture
async def live(auth_service: LocalAuthService, alice: TestUser) -> AsyncIterator[Live]:
    authenticator = WebSocketAuthenticator(auth_service)
    result = await authenticator.authenticate(
        HandshakeRequest(path="/ws", headers=(("Authorization", f"Bearer {alice.access_token}"),))
    )
    assert result.expires_at is not None
    expires_at = result.expires_at.timestamp()
    clock = ManualClock(start=expires_at - 600)
    transport = RecordingTransport()
    watcher = ExpiryWatcher(
        user_id=alice.user_id,
        expires_at=result.expires_at,
        authenticator=authenticator,
        transport=transport,
        policy=POLICY,
        clock=clock,
    )
    task = asyncio.create_task(watcher.run())
    state = Live(watcher, transport, clock, expires_at, task)
    await state.idle()
    yield state
    if not task.done():
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled() or task.exception() is None


async def test_token_expiring_is_sent_at_the_warning_time_not_before(live: Live) -> None:
    live.clock.set(live.expires_at - 61)
    await live.idle()
    assert live.transport.events.empty()
    live.clock.set(live.expires_at - 60)
    kind, message = await live.transport.next()
    assert kind == "send"
    assert message == TokenExpiringMessage(expires_in=60)


async def test_no_refresh_closes_with_token_expired_after_the_grace(live: Live) -> None:
    live.clock.set(live.expires_at - 60)
    assert (await live.transport.next())[0] == "send"
    await live.idle()
    live.clock.set(live.expires_at + 29)
    await live.idle()
    assert live.transport.events.empty()
    live.clock.set(live.expires_at + 30)
    kind, error = await live.transport.next()
    assert kind == "close"
    assert isinstance(error, TokenExpiredError)
    assert error.close_code == 1008
    await asyncio.wait_for(live.task, timeout=5)
    assert live.watcher.closed


async def test_refresh_with_the_same_users_token_keeps_the_connection(
    live: Live, auth_service: LocalAuthService, auth_time: ShiftedTime, alice: TestUser
) -> None:
    live.clock.set(live.expires_at - 60)
    assert (await live.transport.next())[0] == "send"
    # The client logs in again ten minutes later and refreshes with the new token.
    auth_time.offset = 600
    fresh = await login_again(auth_service, alice)
    await live.watcher.refresh(fresh)
    kind, reply = await live.transport.next()
    assert kind == "send"
    assert isinstance(reply, TokenRefreshedMessage)
    new_expiry = live.watcher.state.expires_at
    assert new_expiry is not None
    assert new_expiry == pytest.approx(live.expires_at + 600, abs=5)
    # The old deadline passes without a close ...
    await live.idle()
    live.clock.set(live.expires_at + 31)
    await live.idle()
    assert live.transport.events.empty()
    assert not live.watcher.closed
    # ... and the warning is re-armed for the new token.
    live.clock.set(new_expiry - 60)
    kind, warning = await live.transport.next()
    assert (kind, warning) == ("send", TokenExpiringMessage(expires_in=60))


async def test_refresh_with_another_users_token_closes_1008(
    live: Live, bob: TestUser, alice: TestUser
) -> None:
    await live.watcher.refresh(bob.access_token)
    kind, error = await live.transport.next()
    assert kind == "close"
    assert isinstance(error, UserMismatchError)
    assert error.close_code == 1008
    await asyncio.wait_for(live.task, timeout=5)
    assert live.watcher.state.user_id == alice.user_id
    assert live.watcher.state.refreshes == 0


async def test_refresh_with_a_bad_token_is_rejected_and_the_deadline_stands(live: Live) -> None:
    await live.watcher.refresh("not-a-jwt")
    kind, error = await live.transport.next()
    assert kind == "reject"
    assert isinstance(error, InvalidTokenError)
    assert not live.watcher.closed
    live.clock.set(live.expires_at + 30)
    assert (await live.transport.next())[0] == "send"  # the owed warning first
    kind, closing = await live.transport.next()
    assert kind == "close"
    assert isinstance(closing, TokenExpiredError)


async def test_refresh_after_the_close_does_nothing(live: Live, alice: TestUser) -> None:
    live.clock.set(live.expires_at + 30)
    assert (await live.transport.next())[0] == "send"
    assert (await live.transport.next())[0] == "close"
    await live.watcher.refresh(alice.access_token)
    await asyncio.sleep(0)
    assert live.transport.events.empty()
