"""The users benchmark's baseline: a plain ``websockets`` server, nothing else.

``python -m tools.bench.ws_baseline [--host 127.0.0.1] [--port 0]`` prints
``LISTENING ws://host:port/`` and serves until SIGTERM. A client sends one text frame
``{"type": "go", "sizes": [n1, n2, ...]}``; the server answers with one frame per size,
each exactly that many bytes, carrying ``seq`` and the ``timestamp`` at which it was sent
(ISO-8601 UTC with microseconds, as the platform's envelopes). The client replays the
frame sizes each of its users received from the platform, so both sides move the same
bytes over the same number of connections with the library's default settings
(permessage-deflate included, as the gateway uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import UTC, datetime

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["GO", "MAX_SIZES", "main", "padded_frame", "timestamp_now"]

GO = "go"
#: Most frames one client may ask for (bounds the work of a single request).
MAX_SIZES = 100_000


def timestamp_now() -> str:
    """Now as the platform's envelopes write it: ``2025-01-31T12:00:00.123456Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def padded_frame(seq: int, size: int, timestamp: str) -> str:
    """A JSON frame with ``seq`` and ``timestamp``, padded to ``size`` bytes when it can be
    (a frame is never shorter than its fields: smaller sizes get the minimal frame)."""
    fields = {"type": "bench_event", "seq": seq, "timestamp": timestamp, "payload": ""}
    minimal = json.dumps(fields, separators=(",", ":"))
    missing = size - len(minimal)
    if missing <= 0:
        return minimal
    fields["payload"] = "x" * missing
    return json.dumps(fields, separators=(",", ":"))


async def _handler(ws: ServerConnection) -> None:
    try:
        request = json.loads(await ws.recv())
        if not isinstance(request, dict):
            request = {}
        sizes = request.get("sizes")
        if (
            request.get("type") != GO
            or not isinstance(sizes, list)
            or len(sizes) > MAX_SIZES
            or not all(isinstance(size, int) and 0 <= size <= 1 << 20 for size in sizes)
        ):
            await ws.close(1008, "expected {type: go, sizes: [int, ...]}")
            return
        for seq, size in enumerate(sizes, start=1):
            await ws.send(padded_frame(seq, size, timestamp_now()))
        await ws.wait_closed()
    except (ConnectionClosed, json.JSONDecodeError):
        return


async def serve_until_stopped(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(_handler, host, port) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"LISTENING ws://{host}:{bound}/", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ws_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve_until_stopped(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
