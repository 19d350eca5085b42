"""Client messages over a real connection: bad messages get an error frame and the
connection stays open (proved by a following ping/pong); abuse closes it."""

from __future__ import annotations

import asyncio
import base64
import json
import os

from websockets.exceptions import ConnectionClosed

from websocket.auth.testing import TestUser
from websocket.gateway.conftest import GatewayFactory, Harness, eventually


async def assert_error_then_still_open(
    harness: Harness, alice: TestUser, frame: str | bytes, error_code: str
) -> str:
    client = await harness.connect(alice)
    await client.ws.send(frame)
    reply = await client.recv()
    assert set(reply) == {"type", "error_code", "message"}
    assert reply["type"] == "error"
    assert reply["error_code"] == error_code
    await client.ping_pong()
    text: str = reply["message"]
    return text


async def test_ping_gets_pong(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)
    await client.ping_pong()
    await client.ping_pong()


async def test_malformed_json_gets_an_error_and_the_connection_stays(
    harness: Harness, alice: TestUser
) -> None:
    await assert_error_then_still_open(harness, alice, '{"type": "ping"', "INVALID_JSON")


async def test_unknown_message_type_gets_an_error_and_the_connection_stays(
    harness: Harness, alice: TestUser
) -> None:
    message = await assert_error_then_still_open(
        harness, alice, json.dumps({"type": "drop_tables"}), "UNKNOWN_MESSAGE_TYPE"
    )
    assert "drop_tables" not in message  # input is never echoed


async def test_invalid_fields_get_an_error_naming_them_and_the_connection_stays(
    harness: Harness, alice: TestUser
) -> None:
    message = await assert_error_then_still_open(
        harness,
        alice,
        json.dumps({"type": "resume", "run_id": "run_123", "after_seq": -1}),
        "INVALID_MESSAGE",
    )
    assert "run_id" in message
    assert "after_seq" in message


async def test_message_without_type_gets_an_error(harness: Harness, alice: TestUser) -> None:
    await assert_error_then_still_open(
        harness, alice, json.dumps({"agent": "x"}), "INVALID_MESSAGE"
    )


async def test_json_that_is_not_an_object_gets_an_error(harness: Harness, alice: TestUser) -> None:
    await assert_error_then_still_open(harness, alice, "[1, 2, 3]", "INVALID_MESSAGE")


async def test_deeply_nested_json_gets_an_error(harness: Harness, alice: TestUser) -> None:
    await assert_error_then_still_open(harness, alice, "[" * 20000 + "]" * 20000, "INVALID_JSON")


async def test_binary_frame_gets_an_error(harness: Harness, alice: TestUser) -> None:
    await assert_error_then_still_open(harness, alice, b'{"type": "ping"}', "INVALID_MESSAGE")


async def test_unknown_extra_field_gets_an_error(harness: Harness, alice: TestUser) -> None:
    await assert_error_then_still_open(
        harness, alice, json.dumps({"type": "ping", "user_id": "usr_x"}), "INVALID_MESSAGE"
    )


async def test_large_frame_under_the_limit_is_read_and_refused_by_validation(
    harness: Harness, alice: TestUser
) -> None:
    big = json.dumps({"type": "start_agent", "agent": "research", "message": "x" * 60_000})
    assert len(big) < 64 * 1024
    await assert_error_then_still_open(harness, alice, big, "INVALID_MESSAGE")


async def test_oversized_frame_closes_1009(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)
    await client.ws.send(json.dumps({"type": "ping", "pad": "x" * (64 * 1024)}))
    code, _ = await client.closed()
    assert code == 1009
    metrics = harness.gateway.metrics
    await eventually(lambda: metrics.value("ssot_ws_active_connections") == 0)
    assert metrics.value("ssot_ws_server_closes_total", {"reason": "message_too_big"}) == 1


async def test_oversized_compressed_frame_closes_1009(harness: Harness, alice: TestUser) -> None:
    # Compresses to almost nothing; the limit applies to the decompressed size.
    client = await harness.connect(alice)
    assert client.ws.protocol.extensions  # permessage-deflate negotiated
    await client.ws.send(json.dumps({"type": "ping", "pad": "a" * (1024 * 1024)}))
    assert (await client.closed())[0] == 1009


async def test_message_flood_closes_1013(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)  # default limit: 20 messages per second
    for _ in range(100):
        try:
            await client.ws.send(json.dumps({"type": "ping"}))
        except ConnectionClosed:
            break
    replies: list[dict[str, object]] = []
    code: int | None = None
    while code is None:
        try:
            frame = await asyncio.wait_for(client.ws.recv(), timeout=5)
        except ConnectionClosed:
            code = client.ws.close_code
        else:
            replies.append(json.loads(frame))
    assert code == 1013
    assert replies[-1]["type"] == "error"
    assert replies[-1]["error_code"] == "RATE_LIMITED"
    assert all(reply == {"type": "pong"} for reply in replies[:-1])
    assert 1 <= len(replies) - 1 <= 20


async def test_flood_is_counted_per_connection(harness: Harness, alice: TestUser) -> None:
    # Two connections of one user each get their own budget.
    first = await harness.connect(alice)
    second = await harness.connect(alice)
    for _ in range(15):
        await first.ping_pong()
        await second.ping_pong()


async def test_messages_are_counted_by_type(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)
    await client.ping_pong()
    await client.ws.send("{")
    await client.recv()
    metrics = harness.gateway.metrics
    assert metrics.value("ssot_ws_messages_total", {"type": "ping"}) == 1
    assert metrics.value("ssot_ws_messages_total", {"type": "invalid"}) == 1
    assert metrics.value("ssot_ws_connections_total") == 1
    assert metrics.value("ssot_ws_active_connections") == 1


async def test_keepalive_closes_a_peer_that_never_answers_pings(
    make_harness: GatewayFactory,
) -> None:
    harness = await make_harness(ping_interval_seconds=0.05, ping_timeout_seconds=0.05)
    alice = await harness.user("alice")
    host, port = harness.gateway.address
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {alice.access_token}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    # This peer reads what the server sends but never answers its pings.
    received = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(65536):
            received += chunk
    writer.close()
    assert received.startswith(b"HTTP/1.1 101")
    assert b"authentication_success" in received
    assert b"\x89" in received  # a ping frame (FIN + opcode 9) was sent before closing
