"""``WebSocketGateway``: the WebSocket server of design section 5, on ``websockets``.

Handshake (``process_request``): the path must be the configured one (404 otherwise) and
the server must not be shutting down (503); then the request is authenticated by
``websocket.auth`` (token from the ``Authorization`` header or the ``jwt-auth`` +
``jwt.<base64url>`` subprotocols, Origin allowlist, per-user connection limit). The
handshake itself then completes either way, selecting ``jwt-auth`` when offered, so that
every client - browsers included, which cannot read an HTTP error - learns why it was
refused: a refused client receives ``authentication_error`` and the connection is closed
with 1008 (1011 when authentication itself failed on the server side).

An admitted connection is registered with the router, receives
``authentication_success`` and is then served by a :class:`ClientSession`. Frames larger
than ``max_frame_bytes`` close it with 1009 (``websockets`` enforces ``max_size``), a
message flood with 1013, and ``websockets`` keep-alive pings detect dead peers.

Shutdown (:meth:`WebSocketGateway.shutdown`) stops accepting, lets running runs finish for
up to ``shutdown_grace_seconds``, then closes every connection with 1001.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import structlog
from limits import parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from websocket.auth.api import (
    CLOSE_INTERNAL_ERROR,
    HandshakeRequest,
    TooManyConnectionsError,
    UnifiedWebSocketAuth,
    WebSocketAuthError,
    WebSocketAuthResult,
    authentication_error_message,
    authentication_success_message,
)
from websocket.auth.credentials import select_subprotocol
from websocket.auth.expiry import Clock, ExpiryPolicy, ExpiryWatcher
from websocket.emitter.api import ReplayBuffer
from websocket.gateway.api import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    GatewayError,
    ServiceUnavailableError,
)
from websocket.gateway.messages import error_message, to_text
from websocket.gateway.metrics import GatewayMetrics
from websocket.gateway.runs import AgentRuns
from websocket.gateway.session import ClientSession, close_draining
from websocket.gateway.settings import GatewaySettings
from websocket.router.api import ConnectionLimitError, RouterError, WebSocketEventRouter

__all__ = ["GatewayConnection", "WebSocketGateway"]

log = structlog.get_logger(__name__)

_SHUTDOWN_REASON = "server shutting down"


class GatewayConnection(ServerConnection):
    """A ``websockets`` server connection that carries its handshake's auth outcome."""

    auth_outcome: WebSocketAuthResult | WebSocketAuthError | None = None


class WebSocketGateway:
    """The gateway server. ``async with gateway:`` starts it and shuts it down.

    ``router`` receives the admitted connections; ``replay`` serves ``resume``; ``runs``
    starts and cancels agent runs. Metrics go to ``metrics_registry`` (a private registry
    if none is given). ``clock`` and ``expiry_policy`` drive the token-expiry protocol
    (defaults: the system clock and the authenticator's configured periods).
    """

    def __init__(
        self,
        *,
        authenticator: UnifiedWebSocketAuth,
        router: WebSocketEventRouter,
        replay: ReplayBuffer,
        runs: AgentRuns,
        settings: GatewaySettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
        expiry_policy: ExpiryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._router = router
        self._replay = replay
        self._runs = runs
        self._settings = settings or GatewaySettings()
        self.metrics = GatewayMetrics(metrics_registry)
        self._expiry_policy = expiry_policy or ExpiryPolicy()
        self._clock = clock
        self._rate_limits = parse_many(self._settings.message_rate_limit)
        self._limit_storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._limit_storage)
        self._server: Server | None = None
        self._address: tuple[str, int] | None = None
        self._accepting = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._cleanup_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def settings(self) -> GatewaySettings:
        return self._settings

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; the real port when configured with port 0."""
        if self._address is None:
            raise RuntimeError("the gateway is not started")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"ws://{shown}:{port}{self._settings.path}"

    @property
    def accepting(self) -> bool:
        """Whether new connections and new runs are accepted (False once shutting down)."""
        return self._accepting

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        settings = self._settings
        self._server = await serve(
            self._handle,
            settings.host,
            settings.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression=settings.compression,
            open_timeout=settings.open_timeout_seconds,
            ping_interval=settings.ping_interval_seconds,
            ping_timeout=settings.ping_timeout_seconds,
            close_timeout=settings.close_timeout_seconds,
            max_size=settings.max_frame_bytes,
            create_connection=GatewayConnection,
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        self._accepting = True
        log.info("gateway_listening", url=self.url, host=self._address[0], port=self._address[1])

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let runs finish (up to the grace), close connections with 1001.

        Idempotent; concurrent callers wait for the same shutdown.
        """
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(grace_seconds))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, grace_seconds: float | None) -> None:
        server = self._server
        self._accepting = False
        if server is None:
            return
        grace = self._settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        log.info("gateway_shutting_down", grace_seconds=grace)
        server.server.close()  # stop listening; handshakes in progress get 503
        try:
            idle = await self._runs.wait_idle(grace)
        except Exception as exc:
            log.error("gateway_shutdown_wait_failed", error=type(exc).__name__)
            idle = False
        if not idle:
            log.warning("gateway_shutdown_runs_still_running", grace_seconds=grace)
        server.close(close_connections=True, code=CLOSE_GOING_AWAY, reason=_SHUTDOWN_REASON)
        await server.wait_closed()
        if self._cleanup_tasks:
            await asyncio.gather(*self._cleanup_tasks, return_exceptions=True)
        expiring = self._limit_storage.timer  # the limiter's background expiry pass
        if expiring is not None:
            await asyncio.gather(expiring, return_exceptions=True)
        log.info("gateway_stopped")

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until :meth:`shutdown`; cancelling shuts down."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.wait_closed()
        except asyncio.CancelledError:
            await self.shutdown()
            raise

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- handshake -------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        assert isinstance(connection, GatewayConnection)
        path = request.path.partition("?")[0]
        if path != self._settings.path:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if not self._accepting:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Shutting down\n")
        try:
            offered = tuple(
                subprotocol
                for value in request.headers.get_all("Sec-WebSocket-Protocol")
                for subprotocol in parse_subprotocol(value)
            )
        except InvalidHeader:
            return None  # websockets refuses the malformed header with 400 during accept()
        handshake = HandshakeRequest(
            path=request.path,
            headers=tuple(request.headers.raw_items()),
            subprotocols=offered,
            remote_address=_peer(connection),
        )
        try:
            result = await self._authenticator.authenticate(handshake)
        except WebSocketAuthError as exc:
            self.metrics.auth_failures.labels(error_code=exc.error_code.value).inc()
            connection.auth_outcome = exc
            return None
        self._release_when_closed(connection, result.connection_id)
        connection.auth_outcome = result
        return None

    @staticmethod
    def _select_subprotocol(
        connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """``jwt-auth`` when offered (also for a refused client, so that it can read the
        ``authentication_error``); never the ``jwt.<token>`` entry; nothing otherwise."""
        selected = select_subprotocol(tuple(subprotocols))
        return None if selected is None else Subprotocol(selected)

    def _release_when_closed(self, connection: ServerConnection, connection_id: str) -> None:
        """Free the connection's slot when its TCP connection ends, however it ends
        (also when the handshake never completes and no handler runs)."""

        def on_lost(_: object) -> None:
            task = asyncio.get_running_loop().create_task(
                self._authenticator.release(connection_id)
            )
            self._cleanup_tasks.add(task)
            task.add_done_callback(self._cleanup_tasks.discard)

        connection.connection_lost_waiter.add_done_callback(on_lost)

    # -- connections -----------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, GatewayConnection)
        outcome = connection.auth_outcome
        if outcome is None:  # cannot happen: process_request always decides
            await connection.close(CLOSE_INTERNAL_ERROR, "no authentication outcome")
            return
        if isinstance(outcome, WebSocketAuthError):
            await self._refuse(connection, outcome)
            return
        await self._serve(connection, outcome)

    async def _refuse(self, connection: ServerConnection, error: WebSocketAuthError) -> None:
        try:
            await connection.send(to_text(authentication_error_message(error)))
        except ConnectionClosed:
            return
        await close_draining(connection, error.close_code, error.error_code.value)

    async def _serve(self, connection: ServerConnection, auth: WebSocketAuthResult) -> None:
        session = ClientSession(
            connection,
            auth,
            replay=self._replay,
            runs=self._runs,
            touch=self._router.touch,
            limiter=self._limiter,
            rate_limits=self._rate_limits,
            metrics=self.metrics,
            accepting_runs=lambda: self._accepting,
        )
        try:
            await self._router.register(session)
        except ConnectionLimitError:
            await self._refuse(connection, TooManyConnectionsError())
            return
        except RouterError as exc:
            log.error("gateway_router_register_failed", error_code=exc.error_code)
            await self._close_with_error(
                connection, ServiceUnavailableError(), CLOSE_INTERNAL_ERROR
            )
            return
        watcher = ExpiryWatcher(
            user_id=auth.user_id,
            expires_at=auth.expires_at,
            authenticator=self._authenticator,
            transport=session,
            policy=self._expiry_policy,
            clock=self._clock,
        )
        session.attach_expiry(watcher)
        watch: asyncio.Task[None] | None = None
        self.metrics.connections.inc()
        self.metrics.active_connections.inc()
        try:
            await session.stream.open(to_text(authentication_success_message(auth)))
            watch = asyncio.create_task(watcher.run())
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            sent = connection.protocol.close_sent
            if sent is not None and sent.code == CLOSE_MESSAGE_TOO_BIG:
                self.metrics.server_closes.labels(reason="message_too_big").inc()
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            await self._router.unregister(session.connection_id)
            await self._authenticator.release(auth.connection_id)
            self.metrics.active_connections.dec()
            log.info(
                "gateway_connection_closed",
                user_id=auth.user_id,
                connection_id=auth.connection_id,
                close_sent=None if sent is None else int(sent.code),
                close_received=connection.close_code,
            )

    async def _close_with_error(
        self, connection: ServerConnection, error: GatewayError, code: int
    ) -> None:
        try:
            await connection.send(to_text(error_message(error)))
        except ConnectionClosed:
            return
        await close_draining(connection, code, error.error_code.value)


def _peer(connection: ServerConnection) -> str | None:
    try:
        address = connection.remote_address
    except Exception:
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None
