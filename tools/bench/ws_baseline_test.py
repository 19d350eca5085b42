"""The plain websockets baseline: exact frame sizes, and the server's replies."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from tools.bench.users import received_latency
from tools.bench.ws_baseline import GO, _handler, padded_frame, timestamp_now

STAMP = "2025-01-31T12:00:00.123456Z"


@pytest.mark.parametrize("size", [120, 333, 4096])
def test_padded_frame_has_exactly_the_size(size: int) -> None:
    frame = padded_frame(7, size, STAMP)
    assert len(frame.encode()) == size
    fields = json.loads(frame)
    assert fields["seq"] == 7
    assert fields["timestamp"] == STAMP


def test_a_size_below_the_fields_gives_the_minimal_frame() -> None:
    frame = padded_frame(1, 10, STAMP)
    assert json.loads(frame)["payload"] == ""
    assert len(frame) > 10


def test_timestamp_now_is_what_the_latency_parser_reads() -> None:
    latency = received_latency(timestamp_now(), 0.0)
    assert latency is not None
    assert latency < 0  # "received" at the epoch: long before now


async def test_the_server_sends_one_frame_per_size() -> None:
    sizes = [200, 500, 301, 1000]
    async with serve(_handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send(json.dumps({"type": GO, "sizes": sizes}))
            frames = [await asyncio.wait_for(ws.recv(), 10) for _ in sizes]
    assert [len(str(frame).encode()) for frame in frames] == sizes
    assert [json.loads(frame)["seq"] for frame in frames] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "start", "sizes": [100]},
        {"type": GO, "sizes": [-1]},
        {"type": GO, "sizes": "100"},
        [GO],
    ],
)
async def test_the_server_closes_on_a_malformed_request(request_: object) -> None:
    async with serve(_handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send(json.dumps(request_))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
