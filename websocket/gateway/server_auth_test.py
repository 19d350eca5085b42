"""The handshake, with a real client: success, and each hostile handshake on its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from auth.service import LocalAuthService
from auth.testing import fast_settings
from websocket.auth.credentials import encode_token_subprotocol
from websocket.auth.testing import TestUser, register_user, unreachable_auth_service
from websocket.gateway.conftest import ALLOWED_ORIGIN, GatewayFactory, Harness, eventually

# ----- success --------------------------------------------------------------------------------


async def test_header_token_gets_authentication_success_with_the_designed_fields(
    harness: Harness, alice: TestUser
) -> None:
    client = await harness.raw(token=alice.access_token)
    welcome = await client.recv()
    assert set(welcome) == {"type", "user_id", "connection_id", "permissions"}
    assert welcome["type"] == "authentication_success"
    assert welcome["user_id"] == alice.user_id
    assert welcome["connection_id"].startswith("conn_")
    assert welcome["permissions"] == []
    assert client.ws.subprotocol is None
    await client.ping_pong()


async def test_subprotocol_token_is_accepted_and_jwt_auth_selected(
    harness: Harness, alice: TestUser
) -> None:
    client = await harness.raw(
        subprotocols=["jwt-auth", encode_token_subprotocol(alice.access_token)]
    )
    assert client.ws.subprotocol == "jwt-auth"
    welcome = await client.recv()
    assert welcome["type"] == "authentication_success"
    assert welcome["user_id"] == alice.user_id


async def test_allowed_origin_is_accepted(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice, origin=ALLOWED_ORIGIN)
    await client.ping_pong()


async def test_every_connection_gets_its_own_connection_id(
    harness: Harness, alice: TestUser
) -> None:
    ids = set()
    for _ in range(3):
        client = await harness.raw(token=alice.access_token)
        ids.add((await client.recv())["connection_id"])
    assert len(ids) == 3


# ----- hostile handshakes ---------------------------------------------------------------------


async def assert_refused(client_coro: object, error_code: str, close_code: int = 1008) -> str:
    assert asyncio.iscoroutine(client_coro)
    client = await client_coro
    message = await client.recv()
    assert set(message) == {"type", "error_code", "message"}
    assert message["type"] == "authentication_error"
    assert message["error_code"] == error_code
    code, _ = await client.closed()
    assert code == close_code
    text: str = message["message"]
    return text


async def test_no_token_is_refused_1008(harness: Harness) -> None:
    await assert_refused(harness.raw(), "NO_TOKEN")


async def test_bad_token_is_refused_1008(harness: Harness) -> None:
    message = await assert_refused(harness.raw(token="not.a.jwt"), "INVALID_TOKEN")
    assert "INVALID_FORMAT" in message


async def test_forged_signature_is_refused_1008(harness: Harness, alice: TestUser) -> None:
    head, payload, signature = alice.access_token.split(".")
    forged = f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    message = await assert_refused(harness.raw(token=forged), "INVALID_TOKEN")
    assert "BAD_SIGNATURE" in message


async def test_expired_token_is_refused_1008(harness: Harness, tmp_path: Path) -> None:
    # Same keys and database as the gateway's auth service, but issuing an hour ago.
    issued_at = time.time() - 3600
    async with await LocalAuthService.create(
        fast_settings(tmp_path / "auth"), clock=lambda: issued_at
    ) as past:
        late = await register_user(past, "late")
    message = await assert_refused(harness.raw(token=late.access_token), "INVALID_TOKEN")
    assert "EXPIRED" in message


async def test_token_in_query_string_is_refused_1008_even_with_a_valid_header(
    harness: Harness, alice: TestUser
) -> None:
    message = await assert_refused(
        harness.raw(token=alice.access_token, path=f"/ws?access_token={alice.access_token}"),
        "TOKEN_IN_QUERY_STRING",
    )
    assert alice.access_token not in message


async def test_token_in_query_string_alone_is_refused_1008(
    harness: Harness, alice: TestUser
) -> None:
    await assert_refused(
        harness.raw(path=f"/ws?token={alice.access_token}"), "TOKEN_IN_QUERY_STRING"
    )


async def test_disallowed_origin_is_refused_1008(harness: Harness, alice: TestUser) -> None:
    await assert_refused(
        harness.raw(token=alice.access_token, origin="https://evil.example.com"),
        "ORIGIN_NOT_ALLOWED",
    )


async def test_malformed_subprotocol_token_is_refused_1008_and_jwt_auth_still_selected(
    harness: Harness,
) -> None:
    client = await harness.raw(subprotocols=["jwt-auth", "jwt.QR"])  # non-canonical base64url
    assert client.ws.subprotocol == "jwt-auth"
    message = await client.recv()
    assert message["error_code"] == "INVALID_TOKEN"
    assert (await client.closed())[0] == 1008


async def test_header_and_subprotocol_token_together_are_refused_1008(
    harness: Harness, alice: TestUser
) -> None:
    await assert_refused(
        harness.raw(
            token=alice.access_token,
            subprotocols=["jwt-auth", encode_token_subprotocol(alice.access_token)],
        ),
        "MULTIPLE_TOKENS",
    )


async def test_sixth_connection_of_a_user_is_refused_1008_and_the_five_stay(
    harness: Harness, alice: TestUser, bob: TestUser
) -> None:
    five = [await harness.connect(alice) for _ in range(5)]
    message = await assert_refused(harness.raw(token=alice.access_token), "TOO_MANY_CONNECTIONS")
    assert "at most 5" in message
    for client in five:
        await client.ping_pong()
    # Other users are unaffected; a closed connection frees its place.
    await (await harness.connect(bob)).ping_pong()
    await five[0].ws.close()
    await eventually(lambda: harness.authenticator.slots.count(alice.user_id) == 4)
    await (await harness.connect(alice)).ping_pong()


async def test_auth_service_down_is_refused_1011(make_harness: GatewayFactory) -> None:
    async with unreachable_auth_service() as down:
        harness = await make_harness(token_auth=down)
        user = await harness.user("dora")  # a real token; its checker is unreachable
        await assert_refused(harness.raw(token=user.access_token), "AUTH_SERVICE_UNAVAILABLE", 1011)


async def test_wrong_path_is_404(harness: Harness, alice: TestUser) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await harness.raw(token=alice.access_token, path="/other")
    assert caught.value.response.status_code == 404


async def test_auth_failures_are_counted_by_error_code(
    make_harness: GatewayFactory,
) -> None:
    harness = await make_harness()
    await assert_refused(harness.raw(), "NO_TOKEN")
    await assert_refused(harness.raw(token="x.y.z"), "INVALID_TOKEN")
    metrics = harness.gateway.metrics
    assert metrics.value("ssot_ws_auth_failures_total", {"error_code": "NO_TOKEN"}) == 1
    assert metrics.value("ssot_ws_auth_failures_total", {"error_code": "INVALID_TOKEN"}) == 1
    assert metrics.value("ssot_ws_connections_total") == 0
