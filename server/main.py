"""``tools/bazel run //:server``: the platform, in one process or one role per process.

Embedded default (``--role all``): every gRPC service + health + reflection on
127.0.0.1:50051, the WebSocket gateway on ws://127.0.0.1:8000/ws, SQLite and keys under
``--data-dir`` (default ``.ssot/`` in the workspace), in-memory cache and router, the
offline ``local`` LLM provider. ``--redis-url`` / ``--database-url`` switch to Redis and
PostgreSQL.

Split roles, one service per process, wired over gRPC:

* ``--role auth``: the AuthService alone;
* ``--role dispatch --auth-address A``: data, tools, LLM and agents; tokens verified by
  the auth process;
* ``--role gateway --auth-address A --dispatch-address D``: the WebSocket gateway with its
  router and replay buffer; runs go to the dispatch process;
* ``--role data --auth-address A``: the DataAccess service alone.

With ``SSOT_SERVICE_SECRET`` (and the auth process knowing that secret for
``SSOT_SERVICE_ID`` in ``SSOT_AUTH_SERVICE_CREDENTIALS``) a split process authenticates its
own calls to auth with a service token.

Port 0 binds a free port. The bound addresses are logged at start, and one line
``LISTENING grpc=<address> ws=<url>`` (``-`` for what the role does not serve) is printed
on stdout. Prometheus metrics on ``--metrics-port``. SIGTERM or SIGINT shut down
gracefully: the gateway stops accepting, lets runs finish (up to
``SSOT_SHUTDOWN_GRACE_SECONDS``) and closes connections with 1001; gRPC turns NOT_SERVING
and drains; then everything is closed in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from auth.grpc_client import GrpcAuthClient
from auth.service import LocalAuthService
from auth.settings import AuthSettings
from context.log_config import configure_logging
from server.composition import (
    GrpcHost,
    build_data_factory,
    build_dispatch_services,
    build_gateway_stack,
    build_platform,
    serve_grpc,
    serve_services,
)
from server.metrics import (
    CountingTokenAuthenticator,
    PlatformMetrics,
    ServiceCollector,
    serve_metrics,
)
from server.settings import Role, ServerSettings

__all__ = ["main", "parse_args", "run", "settings_from_args"]

log = structlog.get_logger(__name__)

_SERVICE_TOKEN_MARGIN_SECONDS = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server", description="Run the SSOT platform (or one of its roles)."
    )
    parser.add_argument("--role", choices=[role.value for role in Role], help="default: all")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 = free)")
    parser.add_argument("--ws-port", type=int, help="WebSocket port (default 8000; 0 = free)")
    parser.add_argument("--data-dir", type=Path, help="SQLite and keys (default .ssot/)")
    parser.add_argument("--database-url", help="SQLAlchemy URL of the user data")
    parser.add_argument("--redis-url", help="Redis: cache, rate limits, event fan-out, replay")
    parser.add_argument("--auth-address", help="host:port of the auth process (split roles)")
    parser.add_argument("--dispatch-address", help="host:port of the dispatch process")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0 = free)")
    parser.add_argument("--log-format", choices=("json", "console"))
    parser.add_argument("--log-level")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """``SSOT_*`` environment settings, overridden by the flags that were given."""
    flags = {
        "role": args.role,
        "host": args.host,
        "grpc_port": args.grpc_port,
        "ws_port": args.ws_port,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "redis_url": args.redis_url,
        "auth_address": args.auth_address,
        "dispatch_address": args.dispatch_address,
        "metrics_port": args.metrics_port,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    return ServerSettings(**{key: value for key, value in flags.items() if value is not None})


# -- the remote auth service of a split process -------------------------------------------


def _service_token_provider(
    client_factory: Callable[[], GrpcAuthClient], settings: ServerSettings
) -> Callable[[], Awaitable[str | None]] | None:
    """Service tokens for this process's identity, fetched when needed and renewed
    before they expire; ``None`` when no service secret is configured."""
    secret = settings.service_secret
    if secret is None:
        return None
    cached: dict[str, Any] = {}

    async def provide() -> str | None:
        expires = cached.get("expires", 0.0)
        if time.time() + _SERVICE_TOKEN_MARGIN_SECONDS >= expires:
            issuer = client_factory()
            try:
                token = await issuer.issue_service_token(
                    settings.service_id, secret.get_secret_value()
                )
            finally:
                await issuer.close()
            cached["token"] = token.token
            cached["expires"] = token.expires_at.timestamp()
        value: str | None = cached.get("token")
        return value

    return provide


async def _remote_auth(stack: AsyncExitStack, settings: ServerSettings) -> GrpcAuthClient:
    address = settings.auth_address
    assert address is not None  # the settings validator requires it for split roles
    provider = _service_token_provider(lambda: GrpcAuthClient(address), settings)
    client = GrpcAuthClient(address, token_provider=provider)
    stack.push_async_callback(client.close)
    try:
        async with asyncio.timeout(30.0):
            await client.wait_until_ready()
    except TimeoutError:
        raise OSError(f"the auth service at {address} is not reachable") from None
    if provider is not None:
        await provider()  # fail at start-up, not on the first request, if refused
    log.info("remote_auth_connected", address=address, service_identity=provider is not None)
    return client


# -- roles ---------------------------------------------------------------------------------


class _Running:
    """What one role serves, and how it stops."""

    def __init__(self) -> None:
        self.grpc: GrpcHost | None = None
        self.ws_url: str | None = None
        # The roles that build a platform or a gateway replace it with theirs.
        self.metrics = PlatformMetrics(CollectorRegistry())
        self.shutdown_gateway: Callable[[], Awaitable[None]] | None = None


@asynccontextmanager
async def _serve_role(settings: ServerSettings) -> AsyncIterator[_Running]:
    running = _Running()
    async with AsyncExitStack() as stack:
        role = settings.role
        if role is Role.ALL:
            platform = await build_platform(settings)
            running.metrics = platform.metrics
            stack.push_async_callback(platform.aclose)
            running.grpc = await serve_grpc(platform, settings.host, settings.grpc_port)
            stack.push_async_callback(running.grpc.stop)
            running.ws_url = platform.ws_url
            running.shutdown_gateway = platform.gateway.shutdown
        elif role is Role.AUTH:
            overrides: dict[str, Any] = {"data_dir": settings.data_dir / "auth"}
            if settings.auth_database_url:
                overrides["database_url"] = settings.auth_database_url
            auth = await LocalAuthService.create(AuthSettings(**overrides))
            stack.push_async_callback(auth.close)
            running.grpc = await serve_services(
                token_auth=CountingTokenAuthenticator(auth, running.metrics, "grpc"),
                host=settings.host,
                port=settings.grpc_port,
                auth=auth,
            )
            stack.push_async_callback(running.grpc.stop)
        elif role is Role.DISPATCH:
            remote_auth = await _remote_auth(stack, settings)
            services = await build_dispatch_services(settings)
            stack.push_async_callback(services.aclose)
            running.grpc = await serve_services(
                token_auth=CountingTokenAuthenticator(remote_auth, running.metrics, "grpc"),
                host=settings.host,
                port=settings.grpc_port,
                data=services.data,
                engine=services.engine,
                llm=services.llm,
                runner=services.runner,
            )
            stack.push_async_callback(running.grpc.stop)
            running.metrics.registry.register(
                ServiceCollector(runner=services.runner, engine=services.engine)
            )
        elif role is Role.DATA:
            remote_auth = await _remote_auth(stack, settings)
            data = await build_data_factory(settings)
            stack.push_async_callback(data.shutdown)
            running.grpc = await serve_services(
                token_auth=CountingTokenAuthenticator(remote_auth, running.metrics, "grpc"),
                host=settings.host,
                port=settings.grpc_port,
                data=data,
            )
            stack.push_async_callback(running.grpc.stop)
        elif role is Role.GATEWAY:
            remote_auth = await _remote_auth(stack, settings)
            assert settings.dispatch_address is not None  # required by the settings
            gateway = await build_gateway_stack(
                settings,
                token_auth=remote_auth,
                dispatch_address=settings.dispatch_address,
            )
            running.metrics = gateway.metrics
            stack.push_async_callback(gateway.aclose)
            running.ws_url = gateway.ws_url
            running.shutdown_gateway = gateway.gateway.shutdown
        if settings.metrics_port is not None:
            server, port = serve_metrics(
                running.metrics.registry, settings.host, settings.metrics_port
            )
            stack.callback(server.shutdown)
            log.info("metrics_listening", address=f"http://{settings.host}:{port}/metrics")
        yield running
        # Shutdown order: the gateway first (stop accepting, let runs finish, 1001), then
        # the gRPC server drains, then the stack closes the rest in reverse order.
        if running.shutdown_gateway is not None:
            await running.shutdown_gateway()
        if running.grpc is not None:
            await running.grpc.stop()


async def run(settings: ServerSettings, *, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``settings.role`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with _serve_role(settings) as running:
            grpc_shown = running.grpc.address if running.grpc is not None else "-"
            ws_shown = running.ws_url or "-"
            log.info(
                "server_listening",
                role=settings.role.value,
                grpc=grpc_shown,
                ws=ws_shown,
                data_dir=str(settings.data_dir),
            )
            line = f"LISTENING grpc={grpc_shown} ws={ws_shown}"
            print(line, flush=True)
            if ready is not None:
                ready(line)
            await stop.wait()
            log.info("server_stopping", role=settings.role.value)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    log.info("server_stopped", role=settings.role.value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"server: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, log_format=settings.log_format)
    try:
        asyncio.run(run(settings))
    except OSError as exc:
        log.error("server_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
