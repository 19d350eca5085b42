"""The gateway's errors: what a client can be told when one of its messages fails.

Each :class:`GatewayError` has a stable ``error_code`` and a client-safe ``message``; the
server answers it with ``{"type":"error","error_code","message"}`` and keeps the
connection open. Only abuse ends a connection (rate limit: 1013, oversized frame: 1009),
and authentication failures, which are :class:`websocket.auth.api.WebSocketAuthError`.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "GatewayError",
    "GatewayErrorCode",
    "InternalGatewayError",
    "InvalidMessageError",
    "MalformedJSONError",
    "RateLimitedError",
    "ReplayIncompleteError",
    "RunNotFoundError",
    "RunRejectedError",
    "ServiceUnavailableError",
    "ShuttingDownError",
    "UnknownMessageTypeError",
]

#: RFC 6455 close codes the gateway uses besides the authentication ones.
CLOSE_GOING_AWAY = 1001
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class GatewayErrorCode(enum.StrEnum):
    """Stable, machine-readable reasons in ``error`` frames. Never renamed."""

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    RUN_REJECTED = "RUN_REJECTED"
    REPLAY_INCOMPLETE = "REPLAY_INCOMPLETE"
    RATE_LIMITED = "RATE_LIMITED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class GatewayError(Exception):
    """Base of the gateway's client-facing errors; ``message`` is safe to send."""

    error_code: ClassVar[GatewayErrorCode] = GatewayErrorCode.INTERNAL_ERROR
    default_message: ClassVar[str] = "The request failed."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, error_code={self.error_code.value})"


class MalformedJSONError(GatewayError):
    error_code = GatewayErrorCode.INVALID_JSON
    default_message = "The message is not a valid JSON text frame."


class UnknownMessageTypeError(GatewayError):
    error_code = GatewayErrorCode.UNKNOWN_MESSAGE_TYPE
    default_message = (
        "Unknown message type; expected one of start_agent, cancel_run, resume, ping, "
        "refresh_token."
    )


class InvalidMessageError(GatewayError):
    error_code = GatewayErrorCode.INVALID_MESSAGE
    default_message = "The message has missing or invalid fields."


class RunNotFoundError(GatewayError):
    """No run of this user has that ID: it never existed, expired, or is someone else's
    (the answer is the same, so it reveals nothing about other users' runs)."""

    error_code = GatewayErrorCode.RUN_NOT_FOUND
    default_message = "No run with that ID was found."


class RunRejectedError(GatewayError):
    """The agent service refused to start a run (unknown agent, a per-user limit ...);
    the implementation supplies a client-safe message."""

    error_code = GatewayErrorCode.RUN_REJECTED
    default_message = "The run could not be started."


class ReplayIncompleteError(GatewayError):
    """The oldest requested events are no longer retained; the rest was replayed."""

    error_code = GatewayErrorCode.REPLAY_INCOMPLETE
    default_message = "Some of the requested events are no longer available."


class RateLimitedError(GatewayError):
    error_code = GatewayErrorCode.RATE_LIMITED
    default_message = "Too many messages; the connection is closed. Slow down and reconnect."


class ShuttingDownError(GatewayError):
    error_code = GatewayErrorCode.SHUTTING_DOWN
    default_message = "The server is shutting down; no new runs are accepted."


class ServiceUnavailableError(GatewayError):
    error_code = GatewayErrorCode.SERVICE_UNAVAILABLE
    default_message = "A service the request needs is unavailable; try again later."


class InternalGatewayError(GatewayError):
    error_code = GatewayErrorCode.INTERNAL_ERROR
    default_message = "The request failed because of a server error."
