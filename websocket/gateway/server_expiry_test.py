"""Token expiry on live connections, end to end: token_expiring, refresh_token (same user
accepted, another user's token refused with 1008, a bad token answered with an error),
and the 1008 close when no valid token came before the grace period ended.

The gateway's expiry clock is a manual clock; the tokens are real ones with their real
expiry.
"""

from __future__ import annotations

import pytest

from auth.api import AuthContextKind
from websocket.auth.expiry import ExpiryPolicy
from websocket.auth.testing import ManualClock, ShiftedTime, TestUser, login_again
from websocket.gateway.conftest import Client, GatewayFactory, Harness


class Expiring:
    def __init__(self, harness: Harness, clock: ManualClock, user: TestUser, expires_at: float):
        self.harness = harness
        self.clock = clock
        self.user = user
        self.expires_at = expires_at

    async def settle(self) -> None:
        """Wait until the connection's expiry watcher is asleep again."""
        await self.clock.wait_for_sleeper()

    async def warned(self, client: Client) -> None:
        self.clock.set(self.expires_at - 60)
        assert await client.recv() == {"type": "token_expiring", "expires_in": 60}


@pytest.fixture
async def expiring(make_harness: GatewayFactory) -> Expiring:
    clock = ManualClock(start=0.0)
    harness = await make_harness(
        clock=clock, expiry_policy=ExpiryPolicy(warning_seconds=60, grace_seconds=30)
    )
    user = await harness.user("erin")
    result = await harness.auth.authenticate_token(user.access_token, AuthContextKind.WEBSOCKET)
    assert result.expires_at is not None
    expires_at = result.expires_at.timestamp()
    clock.set(expires_at - 600)
    return Expiring(harness, clock, user, expires_at)


async def test_token_expiring_is_sent_before_expiry(expiring: Expiring) -> None:
    client = await expiring.harness.connect(expiring.user)
    await expiring.settle()
    expiring.clock.set(expiring.expires_at - 61)
    await expiring.settle()
    await client.ping_pong()  # not yet
    await expiring.warned(client)


async def test_no_refresh_closes_1008_after_the_grace(expiring: Expiring) -> None:
    client = await expiring.harness.connect(expiring.user)
    await expiring.warned(client)
    await expiring.settle()
    expiring.clock.set(expiring.expires_at + 29)
    await expiring.settle()
    await client.ping_pong()  # still inside the grace period
    expiring.clock.set(expiring.expires_at + 30)
    error = await client.recv()
    assert error["type"] == "authentication_error"
    assert error["error_code"] == "TOKEN_EXPIRED"
    assert (await client.closed())[0] == 1008


async def test_refresh_with_the_same_users_new_token_keeps_the_connection(
    expiring: Expiring, auth_time: ShiftedTime
) -> None:
    harness, clock = expiring.harness, expiring.clock
    client = await harness.connect(expiring.user)
    await expiring.warned(client)
    auth_time.offset = 600  # the client logs in again ten minutes later
    fresh = await login_again(harness.auth, expiring.user)
    await client.send({"type": "refresh_token", "access_token": fresh})
    reply = await client.recv()
    assert reply["type"] == "token_refreshed"
    assert reply["expires_in"] == pytest.approx(660, abs=5)
    checked = await harness.auth.authenticate_token(fresh, AuthContextKind.WEBSOCKET)
    assert checked.expires_at is not None
    new_expiry = checked.expires_at.timestamp()
    # The old deadline passes and the connection stays ...
    await expiring.settle()
    clock.set(expiring.expires_at + 31)
    await expiring.settle()
    await client.ping_pong()
    # ... until the new token nears its own expiry.
    clock.set(new_expiry - 60)
    assert await client.recv() == {"type": "token_expiring", "expires_in": 60}


async def test_refresh_with_another_users_token_is_refused_and_closes_1008(
    expiring: Expiring,
) -> None:
    harness = expiring.harness
    mallory = await harness.user("mallory")
    client = await harness.connect(expiring.user)
    await expiring.warned(client)
    await client.send({"type": "refresh_token", "access_token": mallory.access_token})
    error = await client.recv()
    assert error["type"] == "authentication_error"
    assert error["error_code"] == "USER_MISMATCH"
    assert mallory.user_id not in error["message"]
    assert (await client.closed())[0] == 1008


async def test_refresh_with_a_bad_token_gets_an_error_and_the_connection_stays(
    expiring: Expiring,
) -> None:
    client = await expiring.harness.connect(expiring.user)
    await expiring.warned(client)
    await client.send({"type": "refresh_token", "access_token": "not-a-jwt"})
    error = await client.recv()
    assert error["type"] == "error"
    assert error["error_code"] == "INVALID_TOKEN"
    await client.ping_pong()
