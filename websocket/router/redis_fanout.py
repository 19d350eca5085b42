"""Cross-node delivery over Redis pub/sub: :class:`RedisFanoutRouter`.

With several gateway processes ("nodes"), a user may be connected to node B while their
run executes on node A. Each node wraps its own :class:`InProcessEventRouter` for the
connections it holds, and:

* ``deliver(user_id, envelope)`` delivers to the user's connections on this node directly
  and publishes the event on the user's channel ``<prefix>:{<user_id>}``, tagged with this
  node's ID;
* each node subscribes to the channel of every user who has a connection on it (and
  unsubscribes when the user's last local connection leaves, whatever the reason), and
  delivers what it receives to that user's local connections only, skipping messages it
  published itself (already delivered locally).

Routing stays owner-checked on every node: a received message is delivered only to the
local connections of the user it names, and only if it arrived on that user's own
channel; a message whose channel and user disagree is dropped and logged as a security
event. User IDs are context IDs (``[A-Za-z0-9_.:-]``), so the braces delimit them exactly.

Pub/sub is best effort (a node that is briefly disconnected misses live messages); the
replay buffer is the record, and clients resume from it by ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self, cast

import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from context import IDKind, new_id
from websocket.emitter.api import EventEnvelope, RoutedEvent
from websocket.router.api import (
    Connection,
    ConnectionInfo,
    RouterStats,
    RouterUnavailableError,
)
from websocket.router.router import InProcessEventRouter, raised_at

__all__ = ["DEFAULT_CHANNEL_PREFIX", "FanoutMessage", "RedisFanoutRouter"]

log = structlog.get_logger(__name__)

DEFAULT_CHANNEL_PREFIX = "ssot:ws:events"
_RECONNECT_DELAY = 0.5


class FanoutMessage(BaseModel):
    """What travels on a user's channel: the routed event and the publishing node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    origin: str
    event: RoutedEvent


async def _close_pubsub(pubsub: PubSub) -> None:
    # redis-py leaves PubSub.aclose unannotated; it is a coroutine function returning None.
    aclose = cast(Callable[[], Awaitable[None]], pubsub.aclose)
    await aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisFanoutRouter:
    """A :class:`~websocket.router.api.WebSocketEventRouter` spanning nodes via Redis.

    Call :meth:`start` before use and :meth:`close` at the end. A client passed in should
    use a ``BlockingConnectionPool`` (as :meth:`from_url` does), so that many concurrent
    publishers wait for a connection instead of failing. ``deliver`` returns the
    connections reached on this node plus the other nodes the event was published to
    (each of which delivers to its own connections of the user), so a result of 0 means
    nobody anywhere was listening.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        local: InProcessEventRouter | None = None,
        node_id: str | None = None,
        channel_prefix: str = DEFAULT_CHANNEL_PREFIX,
        subscribe_timeout: float = 5.0,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._local = local or InProcessEventRouter()
        self.node_id = node_id or new_id(IDKind.SERVICE)
        self._prefix = channel_prefix
        self._subscribe_timeout = subscribe_timeout
        self._owns_client = owns_client
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribed: set[str] = set()
        self._confirmations: dict[str, deque[asyncio.Future[None]]] = {}
        self._subscription_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._received = 0
        self._rejected = 0
        self._local.add_removal_listener(self._on_local_removal)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        local: InProcessEventRouter | None = None,
        node_id: str | None = None,
        channel_prefix: str = DEFAULT_CHANNEL_PREFIX,
        timeout: float = 5.0,
        max_connections: int = 64,
    ) -> Self:
        """A router with its own Redis client for ``url`` (closed by :meth:`close`).

        The pool holds at most ``max_connections`` connections (one is the subscriber);
        when all are busy a publisher waits up to ``timeout`` seconds for one, instead of
        failing at once as redis-py's default pool does past its limit.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
        )
        client = aioredis.Redis.from_pool(pool)
        return cls(
            client,
            local=local,
            node_id=node_id,
            channel_prefix=channel_prefix,
            subscribe_timeout=timeout,
            owns_client=True,
        )

    @property
    def local(self) -> InProcessEventRouter:
        """This node's in-process router."""
        return self._local

    def channel_of(self, user_id: str) -> str:
        return f"{self._prefix}:{{{user_id}}}"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the subscriber and start reading; raises RouterUnavailableError."""
        if self._pubsub is not None:
            return
        pubsub = self._client.pubsub()
        # A channel of this node alone keeps the subscriber connection subscribed (and
        # the reader running) while no user is connected here.
        node_channel = f"{self._prefix}:node:{self.node_id}"
        confirmed = self._expect_confirmation(node_channel)
        try:
            await pubsub.subscribe(node_channel)
        except (RedisError, OSError) as error:
            self._confirmations.pop(node_channel, None)
            await _close_pubsub(pubsub)
            raise RouterUnavailableError("cannot subscribe to the event fan-out") from error
        self._pubsub = pubsub
        self._reader = asyncio.create_task(self._read_loop(pubsub), name="ws-fanout-reader")
        await self._await_confirmation(node_channel, confirmed)
        log.info("router.fanout_started", node_id=self.node_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self._local.close()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await _close_pubsub(pubsub)
        if self._owns_client:
            await self._client.aclose()
        log.info("router.fanout_closed", node_id=self.node_id)

    # -- registry (local, plus the user's channel subscription) --------------------------

    async def register(self, connection: Connection) -> ConnectionInfo:
        self._ensure_started()
        info = await self._local.register(connection)
        try:
            await self._sync_subscription(info.user_id)
        except RouterUnavailableError:
            await self._local.unregister(info.connection_id)
            raise
        return info

    async def unregister(self, connection_id: str) -> bool:
        user_id = self._local.owner_of(connection_id)
        removed = await self._local.unregister(connection_id)
        if removed and user_id is not None:
            with contextlib.suppress(RouterUnavailableError):
                await self._sync_subscription(user_id)
        return removed

    async def touch(self, connection_id: str) -> bool:
        return await self._local.touch(connection_id)

    def connections_of(self, user_id: str) -> list[ConnectionInfo]:
        return self._local.connections_of(user_id)

    async def cleanup_stale(self, max_idle: float) -> int:
        return await self._local.cleanup_stale(max_idle)

    def stats(self) -> RouterStats:
        return self._local.stats()

    def subscribed_users(self) -> set[str]:
        """Users whose channel this node is subscribed to."""
        return set(self._subscribed)

    # -- routing -------------------------------------------------------------------------

    async def route_event(self, user_id: str, connection_id: str, envelope: EventEnvelope) -> bool:
        return await self._local.route_event(user_id, connection_id, envelope)

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        self._ensure_started()
        message = FanoutMessage(
            origin=self.node_id, event=RoutedEvent(user_id=user_id, envelope=envelope)
        )
        reached = await self._local.deliver(user_id, envelope)
        try:
            receivers = int(
                await self._client.publish(self.channel_of(user_id), message.model_dump_json())
            )
        except (RedisError, OSError) as error:
            log.warning(
                "router.fanout_publish_failed",
                user_id=user_id,
                run_id=envelope.run_id,
                seq=envelope.seq,
                error_type=type(error).__name__,
            )
            raise RouterUnavailableError("publishing the event to other nodes failed") from error
        own_subscription = 1 if user_id in self._subscribed else 0
        return reached + max(0, receivers - own_subscription)

    # -- subscriptions -------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._closed:
            raise RouterUnavailableError("the router is closed")
        if self._pubsub is None:
            raise RouterUnavailableError("the router was not started")

    def _on_local_removal(self, info: ConnectionInfo) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._quiet_sync(info.user_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quiet_sync(self, user_id: str) -> None:
        with contextlib.suppress(RouterUnavailableError):
            await self._sync_subscription(user_id)

    async def _sync_subscription(self, user_id: str) -> None:
        """Subscribe to ``user_id``'s channel iff the user has a local connection."""
        async with self._subscription_lock:
            pubsub = self._pubsub
            if pubsub is None or self._closed:
                return
            wanted = self._local.has_connections(user_id)
            channel = self.channel_of(user_id)
            try:
                if wanted and user_id not in self._subscribed:
                    confirmed = self._expect_confirmation(channel)
                    await pubsub.subscribe(channel)
                    await self._await_confirmation(channel, confirmed)
                    self._subscribed.add(user_id)
                elif not wanted and user_id in self._subscribed:
                    self._subscribed.discard(user_id)
                    await pubsub.unsubscribe(channel)
            except (RedisError, OSError) as error:
                log.warning(
                    "router.fanout_subscription_failed",
                    user_id=user_id,
                    error_type=type(error).__name__,
                )
                raise RouterUnavailableError("the event fan-out subscription failed") from error

    def _expect_confirmation(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, deque()).append(future)
        return future

    async def _await_confirmation(self, channel: str, future: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await future
        except TimeoutError:
            pending = self._confirmations.get(channel)
            if pending is not None and future in pending:
                pending.remove(future)
            raise RouterUnavailableError(
                "the event fan-out did not confirm a subscription"
            ) from None

    def _confirm(self, channel: str) -> None:
        pending = self._confirmations.get(channel)
        while pending:
            future = pending.popleft()
            if not future.done():
                future.set_result(None)
                break
        if pending is not None and not pending:
            del self._confirmations[channel]

    # -- receiving -----------------------------------------------------------------------

    async def _read_loop(self, pubsub: PubSub) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    await self._handle(message)
                return  # no subscription left: only at shutdown
            except (RedisError, OSError) as error:
                log.warning("router.fanout_reader_error", error_type=type(error).__name__)
                await asyncio.sleep(_RECONNECT_DELAY)
            except Exception as error:
                # No traceback: its locals would include event payloads.
                log.error(
                    "router.fanout_reader_failed",
                    error_type=type(error).__name__,
                    raised_at=raised_at(error),
                )
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = _text(message.get("type") or "")
        channel = _text(message.get("channel") or "")
        if kind == "subscribe":
            self._confirm(channel)
            return
        if kind != "message":
            return
        self._received += 1
        try:
            fanout = FanoutMessage.model_validate_json(message.get("data") or b"")
        except ValidationError as error:
            self._rejected += 1
            log.error("router.fanout_bad_message", errors=error.error_count())
            return
        user_id = fanout.event.user_id
        if channel != self.channel_of(user_id):
            self._rejected += 1
            log.error(
                "router.fanout_channel_mismatch",
                security_event=True,
                channel=channel,
                event_user_id=user_id,
                origin=fanout.origin,
            )
            return
        if fanout.origin == self.node_id:
            return
        await self._local.deliver(user_id, fanout.event.envelope)

    async def wait_idle(self) -> None:
        """Wait until background work (socket closes, subscription changes) is done."""
        await self._local.wait_idle()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def fanout_stats(self) -> dict[str, int]:
        """Messages received from the fan-out and how many were rejected."""
        return {"received": self._received, "rejected": self._rejected}
