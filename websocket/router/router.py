"""The in-process router: :class:`InProcessEventRouter`.

It holds the registry ``user_id -> live connections`` of this process and delivers each
event to the connections of the event's user only.

Ownership is checked when routing, not just when registering: an event for user A is
only ever enqueued on a connection whose registered owner is A *and* whose
:class:`~websocket.router.api.Connection` still reports user A. ``route_event`` to a
connection of another user is refused, logged with ``security_event=True`` (without the
payload) and raises :class:`ConnectionOwnershipError`.

Slow-consumer isolation: every connection has a bounded ``asyncio.Queue`` and its own
sender task. ``deliver`` (the broadcast path every emitter uses) serialises the envelope
once and only ``put_nowait`` it on each queue; it never awaits a socket or a queue. When
a queue is full, or one send takes longer than ``send_timeout``, the connection is
unregistered at once and closed in the background with code 1013
(:data:`CLOSE_SLOW_CONSUMER`, "try again later"): the client reconnects and resumes from
the replay buffer, which still holds every event. A stuck socket therefore delays nobody,
not even its own user's other connections.

``route_event`` addresses one connection, typically from the handler serving that very
connection (replaying a ``resume``), which may send more events than a queue holds. It
therefore waits for room in that connection's queue, up to ``send_timeout``, before
treating the connection as a slow consumer: the back-pressure falls on the caller serving
that connection and on nobody else.

Activity: ``last_activity`` is the registration time or the last :meth:`touch` (the
gateway touches a connection on every inbound message, pings included);
:meth:`cleanup_stale` closes connections idle for longer than a bound.

The router belongs to one event loop; its registry changes happen without ``await``
in between, so concurrent tasks always see it consistent.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from context.errors import InvalidContextError
from context.execution_context import check_context_id
from websocket.emitter.api import EventEnvelope
from websocket.router.api import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_SLOW_CONSUMER,
    Connection,
    ConnectionInfo,
    ConnectionLimitError,
    ConnectionOwnershipError,
    DuplicateConnectionError,
    InvalidConnectionError,
    RouterStats,
    RouterUnavailableError,
    UnknownConnectionError,
)

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS_PER_USER",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SEND_TIMEOUT",
    "InProcessEventRouter",
    "RemovalListener",
    "raised_at",
]

log = structlog.get_logger(__name__)

DEFAULT_MAX_CONNECTIONS_PER_USER = 5
DEFAULT_QUEUE_SIZE = 256
DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_CLOSE_TIMEOUT = 5.0

#: Called with the snapshot of every connection that leaves the registry, for any reason.
RemovalListener = Callable[[ConnectionInfo], None]


def raised_at(error: BaseException) -> str:
    """``file:line`` where ``error`` was raised.

    Logged instead of a traceback where a rendered traceback's local variables could
    carry event payloads.
    """
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    return f"{frames[-1].filename}:{frames[-1].lineno}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _checked(value: object, field_name: str) -> str:
    try:
        return check_context_id(value, field_name)
    except InvalidContextError:
        raise InvalidConnectionError(f"the connection's {field_name} is not a valid ID") from None


@dataclass(eq=False)
class _Live:
    """A registered connection and its delivery machinery."""

    connection: Connection
    connection_id: str
    user_id: str
    queue: asyncio.Queue[str]
    connected_at: datetime
    last_activity_at: datetime
    last_activity: float
    sender: asyncio.Task[None] | None = None
    sent: int = 0
    removed: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            connection_id=self.connection_id,
            user_id=self.user_id,
            connected_at=self.connected_at,
            last_activity=self.last_activity_at,
            queued=self.queue.qsize(),
            events_sent=self.sent,
        )


class InProcessEventRouter:
    """The default :class:`~websocket.router.api.WebSocketEventRouter` (see module doc).

    ``queue_size`` bounds each connection's pending events; ``send_timeout`` (seconds,
    ``None`` for none) bounds one send; ``close_timeout`` bounds closing a socket;
    ``clock`` (monotonic seconds) measures idleness.
    """

    def __init__(
        self,
        *,
        max_connections_per_user: int = DEFAULT_MAX_CONNECTIONS_PER_USER,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections_per_user < 1:
            raise ValueError("max_connections_per_user must be at least 1")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError("send_timeout must be positive (or None)")
        self._max_per_user = max_connections_per_user
        self._queue_size = queue_size
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._clock = clock
        self._by_id: dict[str, _Live] = {}
        self._by_user: dict[str, dict[str, _Live]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._removal_listeners: list[RemovalListener] = []
        self._closed = False
        self._deliveries = 0
        self._enqueued = 0
        self._refusals = 0
        self._slow_closes = 0
        self._send_failures = 0
        self._stale_closes = 0
        self._sent = 0

    @property
    def max_connections_per_user(self) -> int:
        return self._max_per_user

    @property
    def closed(self) -> bool:
        return self._closed

    def add_removal_listener(self, listener: RemovalListener) -> None:
        """Call ``listener`` whenever a connection leaves the registry (unregister, slow
        consumer, send failure, stale clean-up, shutdown)."""
        self._removal_listeners.append(listener)

    # -- registry ------------------------------------------------------------------------

    async def register(self, connection: Connection) -> ConnectionInfo:
        if self._closed:
            raise RouterUnavailableError("the router is closed")
        connection_id = _checked(connection.connection_id, "connection_id")
        user_id = _checked(connection.user_id, "user_id")
        if connection_id in self._by_id:
            raise DuplicateConnectionError("a connection with this ID is already registered")
        own = self._by_user.get(user_id, {})
        if len(own) >= self._max_per_user:
            log.warning(
                "router.connection_limit",
                user_id=user_id,
                connection_id=connection_id,
                limit=self._max_per_user,
            )
            raise ConnectionLimitError(
                f"at most {self._max_per_user} live connections per user; close one first"
            )
        now = _utc_now()
        live = _Live(
            connection=connection,
            connection_id=connection_id,
            user_id=user_id,
            queue=asyncio.Queue(maxsize=self._queue_size),
            connected_at=now,
            last_activity_at=now,
            last_activity=self._clock(),
        )
        live.sender = asyncio.create_task(
            self._send_loop(live), name=f"ws-router-sender:{connection_id}"
        )
        self._by_id[connection_id] = live
        self._by_user.setdefault(user_id, {})[connection_id] = live
        log.info("router.connection_registered", user_id=user_id, connection_id=connection_id)
        return live.info()

    async def unregister(self, connection_id: str) -> bool:
        live = self._by_id.get(connection_id)
        if live is None:
            return False
        self._remove(live)
        log.info(
            "router.connection_unregistered", user_id=live.user_id, connection_id=connection_id
        )
        return True

    async def touch(self, connection_id: str) -> bool:
        live = self._by_id.get(connection_id)
        if live is None:
            return False
        live.last_activity = self._clock()
        live.last_activity_at = _utc_now()
        return True

    def owner_of(self, connection_id: str) -> str | None:
        """The user owning a live connection of this node, or None."""
        live = self._by_id.get(connection_id)
        return None if live is None else live.user_id

    def has_connections(self, user_id: str) -> bool:
        return bool(self._by_user.get(user_id))

    def connections_of(self, user_id: str) -> list[ConnectionInfo]:
        own = self._by_user.get(user_id, {})
        return sorted((live.info() for live in own.values()), key=lambda info: info.connected_at)

    def users(self) -> list[str]:
        """Users with at least one live connection on this node."""
        return list(self._by_user)

    # -- routing -------------------------------------------------------------------------

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        if self._closed:
            raise RouterUnavailableError("the router is closed")
        self._deliveries += 1
        own = self._by_user.get(user_id)
        if not own:
            return 0
        text = envelope.to_json()
        reached = 0
        for live in list(own.values()):
            if not self._owned_by(live, user_id, envelope):
                continue
            if self._enqueue(live, text):
                reached += 1
        return reached

    async def route_event(self, user_id: str, connection_id: str, envelope: EventEnvelope) -> bool:
        if self._closed:
            raise RouterUnavailableError("the router is closed")
        live = self._by_id.get(connection_id)
        if live is None:
            raise UnknownConnectionError("no live connection with that ID")
        if not self._owned_by(live, user_id, envelope):
            raise ConnectionOwnershipError("the connection does not belong to the event's user")
        return await self._enqueue_waiting(live, envelope.to_json())

    def _owned_by(self, live: _Live, user_id: str, envelope: EventEnvelope) -> bool:
        reported = live.connection.user_id
        if live.user_id == user_id and reported == user_id:
            return True
        self._refusals += 1
        # Never the payload: identifiers and the event's position only.
        log.error(
            "router.ownership_refused",
            security_event=True,
            event_user_id=user_id,
            connection_id=live.connection_id,
            connection_user_id=live.user_id,
            connection_reports_user_id=reported,
            event_type=envelope.type.value,
            run_id=envelope.run_id,
            seq=envelope.seq,
        )
        return False

    def _enqueue(self, live: _Live, text: str) -> bool:
        if live.removed:
            return False
        try:
            live.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._slow_closes += 1
            log.warning(
                "router.slow_consumer",
                user_id=live.user_id,
                connection_id=live.connection_id,
                queued=live.queue.qsize(),
                reason="queue_full",
            )
            self._drop(live, CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume")
            return False
        self._enqueued += 1
        return True

    async def _enqueue_waiting(self, live: _Live, text: str) -> bool:
        """Enqueue, waiting up to ``send_timeout`` for room; a connection that makes no
        room in that time is a slow consumer. Returns False if the connection went away."""
        if live.removed:
            return False
        if not live.queue.full():
            live.queue.put_nowait(text)
            self._enqueued += 1
            return True
        put = asyncio.ensure_future(live.queue.put(text))
        gone = asyncio.ensure_future(live.gone.wait())
        try:
            done, _ = await asyncio.wait(
                {put, gone}, timeout=self._send_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (put, gone):
                waiter.cancel()
        if put in done and not live.removed:
            self._enqueued += 1
            return True
        if not done:
            self._slow_closes += 1
            log.warning(
                "router.slow_consumer",
                user_id=live.user_id,
                connection_id=live.connection_id,
                queued=live.queue.qsize(),
                reason="no_room_in_time",
            )
            self._drop(live, CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume")
        return False

    async def _send_loop(self, live: _Live) -> None:
        while True:
            text = await live.queue.get()
            try:
                async with asyncio.timeout(self._send_timeout):
                    await live.connection.send(text)
            except TimeoutError:
                self._slow_closes += 1
                log.warning(
                    "router.slow_consumer",
                    user_id=live.user_id,
                    connection_id=live.connection_id,
                    reason="send_timeout",
                )
                self._drop(live, CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume")
                return
            except Exception as error:
                self._send_failures += 1
                log.warning(
                    "router.send_failed",
                    user_id=live.user_id,
                    connection_id=live.connection_id,
                    error_type=type(error).__name__,
                )
                self._drop(live, CLOSE_INTERNAL_ERROR, "send failed")
                return
            live.sent += 1
            self._sent += 1

    # -- removal -------------------------------------------------------------------------

    def _remove(self, live: _Live) -> None:
        """Take ``live`` out of the registry and stop its sender (idempotent)."""
        if live.removed:
            return
        live.removed = True
        live.gone.set()
        self._by_id.pop(live.connection_id, None)
        own = self._by_user.get(live.user_id)
        if own is not None:
            own.pop(live.connection_id, None)
            if not own:
                del self._by_user[live.user_id]
        sender = live.sender
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
            self._track(sender)
        info = live.info()
        for listener in self._removal_listeners:
            try:
                listener(info)
            except Exception as error:
                log.error(
                    "router.removal_listener_failed",
                    connection_id=live.connection_id,
                    error_type=type(error).__name__,
                    raised_at=raised_at(error),
                )

    def _drop(self, live: _Live, code: int, reason: str) -> None:
        """Unregister now; close the socket in the background (bounded by close_timeout)."""
        if live.removed:
            return
        self._remove(live)
        self._track(asyncio.create_task(self._close_socket(live, code, reason)))

    async def _close_socket(self, live: _Live, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self._close_timeout):
                await live.connection.close(code, reason)
        except Exception as error:
            log.info(
                "router.close_failed",
                connection_id=live.connection_id,
                code=code,
                error_type=type(error).__name__,
            )
        else:
            log.info("router.connection_closed", connection_id=live.connection_id, code=code)

    def _track(self, task: asyncio.Task[None]) -> None:
        if task.done():
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cleanup_stale(self, max_idle: float) -> int:
        if max_idle < 0:
            raise ValueError("max_idle must not be negative")
        deadline = self._clock() - max_idle
        stale = [live for live in self._by_id.values() if live.last_activity < deadline]
        for live in stale:
            self._stale_closes += 1
            log.info(
                "router.stale_connection", user_id=live.user_id, connection_id=live.connection_id
            )
            self._drop(live, CLOSE_GOING_AWAY, "idle timeout")
        return len(stale)

    async def wait_idle(self) -> None:
        """Wait until background work (closing sockets, stopping senders) has finished."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for live in list(self._by_id.values()):
            self._drop(live, CLOSE_GOING_AWAY, "server shutting down")
        await self.wait_idle()
        log.info("router.closed")

    def stats(self) -> RouterStats:
        return RouterStats(
            users=len(self._by_user),
            connections=len(self._by_id),
            deliveries=self._deliveries,
            events_enqueued=self._enqueued,
            events_sent=self._sent,
            ownership_refusals=self._refusals,
            slow_consumer_closes=self._slow_closes,
            send_failures=self._send_failures,
            stale_closes=self._stale_closes,
        )
