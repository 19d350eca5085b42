"""Mapping typed errors to gRPC statuses and back.

A server aborts with the status an :class:`auth.api.AuthError` names and puts its stable
``error_code`` in the trailing metadata entry :data:`ERROR_CODE_METADATA_KEY`; a client
turns the status back into the same typed error. Other packages reuse this for their own
error hierarchies through :func:`abort_with_code`.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio

from auth.api import (
    AuthError,
    AuthErrorCode,
    InternalAuthError,
    ServiceUnavailableError,
    error_from_code,
)

__all__ = [
    "ERROR_CODE_METADATA_KEY",
    "abort_with_code",
    "abort_with_error",
    "error_code_of",
    "error_from_rpc_error",
    "peer_address",
]

ERROR_CODE_METADATA_KEY = "x-ssot-error-code"

_TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


async def abort_with_code(
    context: grpc.aio.ServicerContext[Any, Any],
    status: grpc.StatusCode,
    error_code: str,
    message: str,
) -> NoReturn:
    await context.abort(status, message, trailing_metadata=((ERROR_CODE_METADATA_KEY, error_code),))
    raise AssertionError("ServicerContext.abort returned")  # pragma: no cover - abort raises


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any], error: AuthError
) -> NoReturn:
    await abort_with_code(
        context, grpc.StatusCode[error.status.value], error.error_code.value, error.message
    )


def error_code_of(exc: grpc.aio.AioRpcError) -> str | None:
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_METADATA_KEY and isinstance(value, str):
            return value
    return None


def error_from_rpc_error(exc: grpc.aio.AioRpcError) -> AuthError:
    """The typed error a failed call stands for."""
    message = exc.details() or exc.code().name
    code = error_code_of(exc)
    if code is not None:
        return error_from_code(code, message)
    if exc.code() in _TRANSPORT_CODES:
        return ServiceUnavailableError(f"auth service unavailable ({exc.code().name})")
    if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
        return error_from_code(AuthErrorCode.INVALID_FORMAT.value, message)
    return InternalAuthError(message)


def peer_address(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address without its port (``ipv4:127.0.0.1``), for per-client limits."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.rpartition(":")
        if port.isdigit():
            return host
    return peer
