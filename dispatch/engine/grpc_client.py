"""``GrpcToolEngineClient``: the :class:`ToolExecutionEngine` Protocol over ``grpc.aio``.

The server decides who the caller is from the verified token, so the client sends no
identity fields: the channel's :func:`auth.interceptors.auth_client_interceptors` add the
bearer token, and this client adds the ``caller``'s context as ``x-ssot-context`` so the
server acts for exactly that request (and refuses a context of another user than the
token's). The plan, roles and permissions of ``caller`` are not sent: the server reads them
from the token.

Tool failures come back as results, like in-process. A call whose deadline passes becomes a
``timeout`` result; other RPC failures raise the :class:`EngineError` they stand for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import grpc
import grpc.aio

from context.api import IDKind, new_id
from context.proto_codec import CONTEXT_METADATA_KEY, encode_context_metadata
from dispatch.engine import engine_pb2, engine_pb2_grpc
from dispatch.engine.api import (
    ERROR_CODE_METADATA_KEY,
    CallerMismatchError,
    EngineError,
    EngineUnavailableError,
    InvalidCallerError,
    MalformedRequestError,
    ResultCode,
    ToolCaller,
    ToolDefinition,
    ToolExecutionResult,
    ToolStatus,
    error_from_code,
)
from dispatch.engine.proto_convert import definition_from_proto, dumps_json, result_from_proto

__all__ = ["GrpcToolEngineClient", "error_from_rpc_error"]

# The RPC deadline leaves the server this long to answer after the tool's own time is up.
_DEADLINE_MARGIN_SECONDS: Final = 5.0

_ERROR_BY_STATUS: Final[Mapping[grpc.StatusCode, type[EngineError]]] = {
    grpc.StatusCode.UNAUTHENTICATED: InvalidCallerError,
    grpc.StatusCode.PERMISSION_DENIED: CallerMismatchError,
    grpc.StatusCode.INVALID_ARGUMENT: MalformedRequestError,
    grpc.StatusCode.UNAVAILABLE: EngineUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: EngineUnavailableError,
}


def _trailing_error_code(exc: grpc.aio.AioRpcError) -> str | None:
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_METADATA_KEY and isinstance(value, str):
            return value
    return None


def error_from_rpc_error(exc: grpc.aio.AioRpcError) -> EngineError:
    """The typed error a failed call stands for.

    An engine error code in the trailers gives back the same class; a rejection by the auth
    interceptor (its own codes) maps by status: UNAUTHENTICATED -> InvalidCallerError,
    PERMISSION_DENIED -> CallerMismatchError, and so on.
    """
    message = exc.details() or exc.code().name
    code = _trailing_error_code(exc)
    if code is not None:
        error = error_from_code(code, message)
        if type(error) is not EngineError or code == EngineError.error_code:
            return error
        message = f"{message} ({code})"
    return _ERROR_BY_STATUS.get(exc.code(), EngineError)(message)


class GrpcToolEngineClient:
    """Implements :class:`~dispatch.engine.api.ToolExecutionEngine` against a remote server.

    ``channel`` should carry ``auth_client_interceptors`` with the user's access token.
    ``rpc_timeout_seconds`` bounds calls that do not pass ``timeout_seconds`` (``None``:
    no deadline beyond the tool's own timeout on the server).
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, rpc_timeout_seconds: float | None = None
    ) -> None:
        self._stub = engine_pb2_grpc.ToolServiceStub(channel)
        self._rpc_timeout = rpc_timeout_seconds

    @staticmethod
    def _metadata(caller: ToolCaller) -> tuple[tuple[str, str], ...]:
        return ((CONTEXT_METADATA_KEY, encode_context_metadata(caller.context)),)

    async def list_tools(
        self, caller: ToolCaller, *, include_unavailable: bool = False
    ) -> Sequence[ToolDefinition]:
        try:
            response = await self._stub.ListTools(
                engine_pb2.ListToolsRequest(include_unavailable=include_unavailable),
                metadata=self._metadata(caller),
                timeout=self._rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from None
        return [definition_from_proto(message) for message in response.tools]

    async def execute_tool(
        self,
        caller: ToolCaller,
        tool_name: str,
        arguments: Mapping[str, object] | None = None,
        *,
        tool_call_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> ToolExecutionResult:
        call_id = tool_call_id if tool_call_id is not None else new_id(IDKind.TOOL)
        try:
            arguments_json = dumps_json({} if arguments is None else arguments)
        except (TypeError, ValueError, RecursionError):
            return ToolExecutionResult(
                status=ToolStatus.INVALID_INPUT,
                tool_name=tool_name,
                tool_call_id=call_id,
                error_code=ResultCode.INVALID_INPUT,
                error_message="arguments must contain JSON values only",
                execution_time_ms=0.0,
            )
        request = engine_pb2.ExecuteToolRequest(
            tool_name=tool_name, arguments_json=arguments_json, tool_call_id=call_id
        )
        deadline = self._rpc_timeout
        if timeout_seconds is not None:
            request.timeout_seconds = timeout_seconds
            if math.isfinite(timeout_seconds) and timeout_seconds > 0:
                deadline = timeout_seconds + _DEADLINE_MARGIN_SECONDS
        try:
            response = await self._stub.ExecuteTool(
                request, metadata=self._metadata(caller), timeout=deadline
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return ToolExecutionResult(
                    status=ToolStatus.TIMEOUT,
                    tool_name=tool_name,
                    tool_call_id=call_id,
                    error_code=ResultCode.TIMEOUT,
                    error_message="the call did not complete before its deadline",
                    execution_time_ms=(deadline or 0.0) * 1000.0,
                )
            raise error_from_rpc_error(exc) from None
        return result_from_proto(response)
