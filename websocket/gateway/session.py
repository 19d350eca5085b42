"""``ClientSession``: one authenticated connection, from ``authentication_success`` to close.

It reads the client's messages in order, applies the per-connection rate limit, and
answers each one: ``start_agent`` (a new run under a context built from the verified user,
never from the message), ``cancel_run``, ``resume`` (replay, then live), ``ping`` and
``refresh_token`` (handed to the expiry watcher). A bad message gets an ``error`` frame and
the connection stays open; a flood closes it with 1013.

It is also what the router delivers to (:meth:`send`, :meth:`close`, ``connection_id``,
``user_id``) and the expiry watcher's transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog
from limits import RateLimitItem
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from context.api import UserExecutionContext, context_scope
from websocket.auth.api import (
    TokenExpiringMessage,
    TokenRefreshedMessage,
    WebSocketAuthError,
    WebSocketAuthResult,
    authentication_error_message,
)
from websocket.auth.expiry import ExpiryWatcher
from websocket.emitter.api import EventEnvelope, ReplayBuffer
from websocket.gateway.api import (
    CLOSE_TRY_AGAIN_LATER,
    GatewayError,
    InternalGatewayError,
    RateLimitedError,
    RunNotFoundError,
    ServiceUnavailableError,
    ShuttingDownError,
)
from websocket.gateway.event_stream import EventStream
from websocket.gateway.messages import (
    CancelRun,
    ClientMessage,
    ErrorMessage,
    Ping,
    PongMessage,
    RefreshToken,
    Resume,
    RunAcceptedMessage,
    StartAgent,
    error_message,
    parse_client_message,
    to_text,
)
from websocket.gateway.metrics import GatewayMetrics
from websocket.gateway.runs import AgentRuns

__all__ = ["ClientSession", "close_draining"]

log = structlog.get_logger(__name__)

_RATE_LIMIT_NAMESPACE = "ws-messages"


async def close_draining(websocket: ServerConnection, code: int, reason: str) -> None:
    """Close, discarding whatever the peer still sends until it acknowledges.

    Only for the task that reads the connection. A flooding peer may have filled the
    receive queue, which stops ``websockets`` from reading the socket; without draining,
    the peer's closing frame would never be seen and the close would hang until
    ``close_timeout``.
    """
    closing = asyncio.create_task(websocket.close(code, reason))
    try:
        async for _ in websocket:
            pass
    except ConnectionClosed:
        pass
    await closing


class ClientSession:
    """The server side of one authenticated connection."""

    def __init__(
        self,
        websocket: ServerConnection,
        auth: WebSocketAuthResult,
        *,
        replay: ReplayBuffer,
        runs: AgentRuns,
        touch: Callable[[str], Awaitable[object]],
        limiter: MovingWindowRateLimiter,
        rate_limits: Sequence[RateLimitItem],
        metrics: GatewayMetrics,
        accepting_runs: Callable[[], bool],
    ) -> None:
        self._ws = websocket
        self._auth = auth
        self._runs = runs
        self._limiter = limiter
        self._rate_limits = tuple(rate_limits)
        self._metrics = metrics
        self._accepting_runs = accepting_runs
        self._touch = touch
        self._stream = EventStream(
            user_id=auth.user_id,
            replay=replay,
            send=websocket.send,
            on_event_sent=metrics.events_sent.inc,
        )
        self._expiry: ExpiryWatcher | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._log = log.bind(user_id=auth.user_id, connection_id=auth.connection_id)

    # -- identity (the router's view) ------------------------------------------------------

    @property
    def connection_id(self) -> str:
        return self._auth.connection_id

    @property
    def user_id(self) -> str:
        return self._auth.user_id

    @property
    def context(self) -> UserExecutionContext:
        return self._auth.context

    @property
    def stream(self) -> EventStream:
        return self._stream

    def attach_expiry(self, watcher: ExpiryWatcher) -> None:
        self._expiry = watcher

    # -- delivery from the router ----------------------------------------------------------

    async def send(self, text: str) -> None:
        """A live event as wire JSON (the router's delivery form).

        The envelope is parsed back so the stream can order it by ``seq``.
        """
        try:
            envelope = EventEnvelope.model_validate_json(text)
        except ValidationError:
            # Not an envelope: nothing but events is routed, so refuse rather than guess.
            self._log.error("gateway_unroutable_frame_dropped")
            return
        await self._stream.live(envelope)

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (the router does so for slow consumers and shutdown)."""
        await self._ws.close(code, reason)

    # -- the expiry watcher's transport ----------------------------------------------------

    async def send_expiry_message(
        self, message: TokenExpiringMessage | TokenRefreshedMessage
    ) -> None:
        await self._stream.write(to_text(message))

    async def reject_refresh(self, error: WebSocketAuthError) -> None:
        await self._stream.write(
            to_text(ErrorMessage(error_code=error.error_code.value, message=error.message))
        )

    async def close_for(self, error: WebSocketAuthError) -> None:
        self._metrics.server_closes.labels(reason=error.error_code.value.lower()).inc()
        try:
            await self._stream.write(to_text(authentication_error_message(error)))
        except ConnectionClosed:
            return
        self._begin_close(error.close_code, error.error_code.value)

    def _begin_close(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for it.

        From then on the receive loop only discards frames: it must keep reading so that
        the peer's closing frame is seen even when its earlier messages filled the receive
        queue (``websockets`` stops reading the socket while the queue is full), and it must
        not act on anything the peer sent after being told to go.
        """
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._ws.close(code, reason))

    # -- the receive loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve client messages until the connection closes."""
        try:
            async for frame in self._ws:
                if self._close_task is not None:
                    continue
                if not await self._within_rate_limit():
                    await self._close_for_flood()
                    continue
                await self._touch(self.connection_id)
                await self._handle_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            # The connection's rate-limit entries are not cleared here: they age out of
            # the moving window, and the limiter's own expiry drops them.
            if self._close_task is not None:
                await asyncio.gather(self._close_task, return_exceptions=True)

    async def _within_rate_limit(self) -> bool:
        allowed = True
        for item in self._rate_limits:
            if not await self._limiter.hit(item, _RATE_LIMIT_NAMESPACE, self.connection_id):
                allowed = False
        return allowed

    async def _close_for_flood(self) -> None:
        self._metrics.server_closes.labels(reason="rate_limited").inc()
        self._log.warning("gateway_connection_flooding")
        error = RateLimitedError()
        try:
            await self._stream.write(to_text(error_message(error)))
        except ConnectionClosed:
            return
        self._begin_close(CLOSE_TRY_AGAIN_LATER, error.error_code.value)

    async def _handle_frame(self, frame: str | bytes) -> None:
        try:
            message = parse_client_message(frame)
        except GatewayError as exc:
            self._metrics.messages.labels(type="invalid").inc()
            self._log.info("gateway_message_refused", error_code=exc.error_code.value)
            await self._stream.write(to_text(error_message(exc)))
            return
        self._metrics.messages.labels(type=message.type).inc()
        try:
            async with context_scope(self.context):
                await self._dispatch(message)
        except GatewayError as exc:
            self._log.info(
                "gateway_request_failed", message_type=message.type, error_code=exc.error_code.value
            )
            await self._stream.write(to_text(error_message(exc)))
        except ConnectionClosed:
            raise
        except Exception:
            self._log.exception("gateway_request_crashed", message_type=message.type)
            await self._stream.write(to_text(error_message(InternalGatewayError())))

    async def _dispatch(self, message: ClientMessage) -> None:
        match message:
            case Ping():
                await self._stream.write(to_text(PongMessage()))
            case StartAgent():
                await self._start_agent(message)
            case CancelRun():
                await self._cancel_run(message)
            case Resume():
                await self._stream.resume(message.run_id, message.after_seq)
            case RefreshToken():
                if self._expiry is None:
                    raise InternalGatewayError("Token refresh is not available on this connection.")
                await self._expiry.refresh(message.access_token)

    async def _start_agent(self, message: StartAgent) -> None:
        if not self._accepting_runs():
            raise ShuttingDownError
        ctx = UserExecutionContext.from_request(
            self.user_id,
            thread_id=message.thread_id,
            websocket_client_id=self.connection_id,
            audit_metadata={"connection_request_id": self.context.request_id},
        )
        self._stream.hold(ctx.run_id)
        try:
            accepted = await self._runs.start(
                ctx, agent_name=message.agent, message=message.message
            )
        except GatewayError:
            await self._stream.release(ctx.run_id)
            raise
        except Exception as exc:
            await self._stream.release(ctx.run_id)
            self._log.error("gateway_run_start_failed", error=type(exc).__name__)
            raise ServiceUnavailableError from None
        if accepted.run_id != ctx.run_id:
            self._log.error("gateway_run_id_mismatch", run_id=ctx.run_id)
        reply = RunAcceptedMessage(
            run_id=accepted.run_id,
            thread_id=accepted.thread_id,
            client_msg_id=message.client_msg_id,
        )
        await self._stream.release(ctx.run_id, to_text(reply))
        self._log.info("gateway_run_accepted", run_id=accepted.run_id, agent=message.agent)

    async def _cancel_run(self, message: CancelRun) -> None:
        try:
            cancelled = await self._runs.cancel(self.context, message.run_id)
        except GatewayError:
            raise
        except Exception as exc:
            self._log.error("gateway_run_cancel_failed", error=type(exc).__name__)
            raise ServiceUnavailableError from None
        if not cancelled:
            raise RunNotFoundError
        self._log.info("gateway_run_cancelled", run_id=message.run_id)
