"""``websocket.router``: the ``WebSocketEventRouter``.

Each user's live connections, and delivery of each event only to the connections of the
event's user: :class:`InProcessEventRouter` within one process (the default) and
:class:`RedisFanoutRouter` across gateway processes over Redis pub/sub. The interface,
close codes and errors are in :mod:`websocket.router.api`.
"""

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
    RouterError,
    RouterStats,
    RouterUnavailableError,
    UnknownConnectionError,
    WebSocketEventRouter,
)
from websocket.router.redis_fanout import RedisFanoutRouter
from websocket.router.router import InProcessEventRouter

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_SLOW_CONSUMER",
    "Connection",
    "ConnectionInfo",
    "ConnectionLimitError",
    "ConnectionOwnershipError",
    "DuplicateConnectionError",
    "InProcessEventRouter",
    "InvalidConnectionError",
    "RedisFanoutRouter",
    "RouterError",
    "RouterStats",
    "RouterUnavailableError",
    "UnknownConnectionError",
    "WebSocketEventRouter",
]
