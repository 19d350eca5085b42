"""The one exception hierarchy of the ``context`` package.

Every error raised on purpose by this package is a :class:`ContextError`. Each class carries
a stable ``error_code`` (for logs, API error bodies and tests) and ``grpc_status_name``, the
name of the ``grpc.StatusCode`` member a gRPC adapter maps it to. The status is given by name
so this module needs no gRPC import.

Messages never echo large or hostile input verbatim: offending values are shortened with
:func:`describe_value` before they are quoted.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ContextCodecError",
    "ContextDepthExceededError",
    "ContextError",
    "InvalidContextError",
    "InvalidIDError",
    "NoCurrentContextError",
    "describe_value",
]

_MAX_QUOTED_CHARS = 40


class ContextError(Exception):
    """Base class of every error raised by the ``context`` package."""

    error_code: ClassVar[str] = "CONTEXT_ERROR"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidContextError(ContextError):
    """A UserExecutionContext could not be built: a field is missing, malformed or unsafe."""

    error_code: ClassVar[str] = "INVALID_CONTEXT"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class ContextDepthExceededError(InvalidContextError):
    """A child context would be (or a received context is) nested deeper than allowed."""

    error_code: ClassVar[str] = "CONTEXT_DEPTH_EXCEEDED"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class InvalidIDError(ContextError):
    """A value is not a well-formed ID (of the expected kind)."""

    error_code: ClassVar[str] = "INVALID_ID"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class ContextCodecError(ContextError):
    """A serialized context (proto or ``x-ssot-context`` metadata) could not be decoded."""

    error_code: ClassVar[str] = "INVALID_CONTEXT_ENCODING"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class NoCurrentContextError(ContextError):
    """Code that needs the current context ran outside any ``context_scope``.

    This is a server-side wiring fault, not bad client input, hence FAILED_PRECONDITION.
    """

    error_code: ClassVar[str] = "NO_CONTEXT"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


def describe_value(value: object) -> str:
    """Return a short, safe description of ``value`` for an error message.

    Strings are quoted with ``repr`` and cut to a few dozen characters; other values are
    named by type only, so a message can never carry a large or nested payload.
    """
    if isinstance(value, str):
        if len(value) <= _MAX_QUOTED_CHARS:
            return repr(value)
        return f"{value[:_MAX_QUOTED_CHARS]!r}... ({len(value)} chars)"
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
        if len(text) <= _MAX_QUOTED_CHARS:
            return text
        return f"<{type(value).__name__} of {len(text)} digits>"
    return f"<{type(value).__name__}>"
