"""The auth benchmark's gRPC baseline: a bare ``grpc.aio`` unary echo server.

``python -m tools.bench.grpc_echo [--host 127.0.0.1] [--port 0]`` prints
``LISTENING host:port`` and serves ``/bench.Echo/Echo`` (bytes in, the same bytes out: no
(de)serialisation, no interceptor, no work) until SIGTERM. The benchmark sends it
requests of the same size as its ``ValidateToken`` requests, so the ratio isolates what
the auth service adds on top of gRPC itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import grpc
import grpc.aio

__all__ = ["ECHO_METHOD", "echo_handler", "main"]

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


def echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )


async def serve_until_stopped(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    print(f"LISTENING {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpc_echo", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve_until_stopped(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
