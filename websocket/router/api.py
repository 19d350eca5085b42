"""The typed interface of the router package: Protocols, models, close codes, errors.

The router keeps each user's live WebSocket connections and delivers an event only to
connections owned by the event's user. The gateway hands it one :class:`Connection` per
authenticated socket; emitters hand it events through ``deliver`` (the router satisfies
the emitter's :class:`~websocket.emitter.api.EventDelivery`).

Every failure is a :class:`RouterError` subclass with a stable ``error_code`` and the name
of the gRPC status it maps to (``grpc_status_name``). Messages never name another user.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from websocket.emitter.api import EventEnvelope

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_SLOW_CONSUMER",
    "Connection",
    "ConnectionInfo",
    "ConnectionLimitError",
    "ConnectionOwnershipError",
    "DuplicateConnectionError",
    "InvalidConnectionError",
    "RouterError",
    "RouterStats",
    "RouterUnavailableError",
    "UnknownConnectionError",
    "WebSocketEventRouter",
]

#: Close code for a connection that cannot keep up (its queue overflowed or a send timed
#: out): 1013 "Try Again Later". The client should reconnect and ``resume`` from its last
#: ``seq``; nothing is lost, the events are in the replay buffer.
CLOSE_SLOW_CONSUMER = 1013
#: Close code when sending on the socket failed: 1011 "Internal Error".
CLOSE_INTERNAL_ERROR = 1011
#: Close code for idle (stale) connections and router shutdown: 1001 "Going Away".
CLOSE_GOING_AWAY = 1001


# -- errors --------------------------------------------------------------------------------


class RouterError(Exception):
    """Base class of every error raised on purpose by the router package."""

    error_code: ClassVar[str] = "ROUTER_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidConnectionError(RouterError):
    """A connection's ID or user ID is malformed."""

    error_code: ClassVar[str] = "INVALID_CONNECTION"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class DuplicateConnectionError(RouterError):
    """A connection with this ID is already registered."""

    error_code: ClassVar[str] = "CONNECTION_EXISTS"
    grpc_status_name: ClassVar[str] = "ALREADY_EXISTS"


class ConnectionOwnershipError(RouterError):
    """An event was aimed at a connection that its user does not own; nothing was sent."""

    error_code: ClassVar[str] = "CONNECTION_NOT_OWNED"
    grpc_status_name: ClassVar[str] = "PERMISSION_DENIED"


class UnknownConnectionError(RouterError):
    """No live connection has this ID (never registered, or already gone)."""

    error_code: ClassVar[str] = "UNKNOWN_CONNECTION"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class ConnectionLimitError(RouterError):
    """The user already has the maximum number of live connections."""

    error_code: ClassVar[str] = "CONNECTION_LIMIT"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"


class RouterUnavailableError(RouterError):
    """The router is closed, or its fan-out backend (Redis) failed."""

    error_code: ClassVar[str] = "ROUTER_UNAVAILABLE"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


# -- models --------------------------------------------------------------------------------


class ConnectionInfo(BaseModel):
    """A snapshot of one live connection."""

    model_config = ConfigDict(frozen=True)

    connection_id: str
    user_id: str
    connected_at: datetime
    last_activity: datetime
    queued: int
    events_sent: int


class RouterStats(BaseModel):
    """Counters of one router (one node)."""

    model_config = ConfigDict(frozen=True)

    users: int
    connections: int
    deliveries: int
    events_enqueued: int
    events_sent: int
    ownership_refusals: int
    slow_consumer_closes: int
    send_failures: int
    stale_closes: int


# -- Protocols -----------------------------------------------------------------------------


class Connection(Protocol):
    """One live, authenticated WebSocket as the gateway gives it to the router.

    ``user_id`` is the verified user the socket was authenticated as. ``send`` writes one
    text frame; ``close`` closes the socket with a WebSocket close code and reason.
    """

    @property
    def connection_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class WebSocketEventRouter(Protocol):
    """Each user's live connections, and delivery of events to exactly those connections.

    ``deliver`` only enqueues: each connection has a bounded queue and its own sender, so
    a slow or stuck socket never delays anyone else. A connection whose queue overflows is
    closed with :data:`CLOSE_SLOW_CONSUMER` and unregistered.
    """

    async def register(self, connection: Connection) -> ConnectionInfo:
        """Start routing to ``connection``; raises :class:`ConnectionLimitError`,
        :class:`DuplicateConnectionError`, :class:`InvalidConnectionError`."""
        ...

    async def unregister(self, connection_id: str) -> bool:
        """Stop routing to a connection (its unsent events are dropped; they remain
        replayable). False if it was not registered. Does not close the socket."""
        ...

    async def touch(self, connection_id: str) -> bool:
        """Record activity (an inbound message) on a connection; False if unknown."""
        ...

    async def route_event(self, user_id: str, connection_id: str, envelope: EventEnvelope) -> bool:
        """Send an event of ``user_id`` to one of that user's connections (for replay).

        Waits for room in that connection's queue (bounded by the router's send timeout),
        so a long replay applies back-pressure to its caller only. Raises
        :class:`UnknownConnectionError`, and :class:`ConnectionOwnershipError` (logged as
        a security event; nothing sent) when the connection is another user's. False when
        the connection went away or was closed as a slow consumer meanwhile.
        """
        ...

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        """Send an event to every live connection of ``user_id``; how many got it."""
        ...

    def connections_of(self, user_id: str) -> list[ConnectionInfo]:
        """The user's live connections on this node, oldest first."""
        ...

    async def cleanup_stale(self, max_idle: float) -> int:
        """Close (:data:`CLOSE_GOING_AWAY`) and unregister connections idle for more than
        ``max_idle`` seconds; how many."""
        ...

    def stats(self) -> RouterStats: ...

    async def close(self) -> None:
        """Close every connection (:data:`CLOSE_GOING_AWAY`) and stop routing."""
        ...
