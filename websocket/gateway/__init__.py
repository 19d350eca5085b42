"""``websocket.gateway``: the WebSocket server of the platform (design section 5).

:class:`WebSocketGateway` serves ``ws://host:port/ws`` on the ``websockets`` library:
handshake authentication through :mod:`websocket.auth`, the client messages of
:mod:`websocket.gateway.messages`, live events from the router merged with ``resume``
replays (:mod:`websocket.gateway.event_stream`), limits, keep-alive and graceful
shutdown. Agent runs are reached through the :class:`AgentRuns` Protocol.
"""

from websocket.gateway.api import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    GatewayError,
    GatewayErrorCode,
    InternalGatewayError,
    InvalidMessageError,
    MalformedJSONError,
    RateLimitedError,
    ReplayIncompleteError,
    RunNotFoundError,
    RunRejectedError,
    ServiceUnavailableError,
    ShuttingDownError,
    UnknownMessageTypeError,
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
    parse_client_message,
)
from websocket.gateway.metrics import GatewayMetrics
from websocket.gateway.runs import AgentRuns, RunAccepted
from websocket.gateway.server import WebSocketGateway
from websocket.gateway.session import ClientSession
from websocket.gateway.settings import GatewaySettings

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "AgentRuns",
    "CancelRun",
    "ClientMessage",
    "ClientSession",
    "ErrorMessage",
    "EventStream",
    "GatewayError",
    "GatewayErrorCode",
    "GatewayMetrics",
    "GatewaySettings",
    "InternalGatewayError",
    "InvalidMessageError",
    "MalformedJSONError",
    "Ping",
    "PongMessage",
    "RateLimitedError",
    "RefreshToken",
    "ReplayIncompleteError",
    "Resume",
    "RunAccepted",
    "RunAcceptedMessage",
    "RunNotFoundError",
    "RunRejectedError",
    "ServiceUnavailableError",
    "ShuttingDownError",
    "StartAgent",
    "UnknownMessageTypeError",
    "WebSocketGateway",
    "parse_client_message",
]
