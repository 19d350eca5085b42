"""Run the auth service alone: ``python -m auth.server_main [--port 8081] [--data-dir DIR]``.

Settings come from ``SSOT_AUTH_*`` environment variables (:class:`auth.settings.AuthSettings`);
flags override them. ``--port 0`` binds an ephemeral port. Once serving, the bound address
is logged (``auth_server_listening``) and one line ``LISTENING <host>:<port>`` is printed
to stdout for supervisors and tests; logs go to stderr as JSON lines. SIGTERM or SIGINT
stop the server gracefully (health turns NOT_SERVING first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from auth.grpc_server import build_server
from auth.service import LocalAuthService
from auth.settings import AuthSettings
from context.log_config import configure_logging

__all__ = ["main", "serve"]

log = structlog.get_logger(__name__)

_MAINTENANCE_INTERVAL_SECONDS = 3600.0


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: AuthSettings, *, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    service = await LocalAuthService.create(settings)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server, bound, health = await build_server(service, host=host, port=port)
        await server.start()
        address = _address(host, bound)
        log.info("auth_server_listening", address=address, data_dir=str(settings.data_dir))
        print(f"LISTENING {address}", flush=True)

        async def maintenance() -> None:
            while True:
                await asyncio.sleep(_MAINTENANCE_INTERVAL_SECONDS)
                try:
                    removed = await service.purge_expired()
                    log.info("auth_maintenance", purged=removed)
                except Exception:
                    log.exception("auth_maintenance_failed")

        maintenance_task = asyncio.create_task(maintenance())
        await stop.wait()
        log.info("auth_server_stopping", address=address)
        maintenance_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintenance_task
        await health.enter_graceful_shutdown()
        await server.stop(grace=2.0)
    finally:
        await service.close()
    log.info("auth_server_stopped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="auth.server_main", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port, 0 = ephemeral")
    parser.add_argument("--data-dir", type=Path, help="keys and the SQLite database live here")
    parser.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+asyncpg://...")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, log_format=args.log_format)
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    settings = AuthSettings(**overrides)
    try:
        asyncio.run(serve(settings, host=args.host, port=args.port))
    except OSError as exc:
        log.error("auth_server_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
