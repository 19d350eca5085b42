"""The bare gRPC echo baseline answers with the request's bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from tools.bench.grpc_echo import ECHO_METHOD, echo_handler


async def test_echo_returns_the_same_bytes() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Callable[..., Any] = channel.unary_unary(ECHO_METHOD)
            payload = bytes(range(256)) * 3
            assert await call(payload, timeout=10) == payload
            assert await call(b"", timeout=10) == b""
    finally:
        await server.stop(None)
