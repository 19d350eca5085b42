"""The ``ssot.engine.v1.ToolService`` servicer: proto <-> api, errors -> gRPC statuses.

A thin adapter over any :class:`~dispatch.engine.api.ToolExecutionEngine`. The caller is
never read from the request: :func:`current_caller` combines the context and the verified
identity that :class:`auth.interceptors.AuthServerInterceptor` binds for the handler. The
``caller_provider`` seam lets a composition root bind the caller some other way; whatever
it returns must come from a verified credential.

Tool failures are OK responses with a status. An :class:`EngineError` aborts the call with
its gRPC status and ``x-ssot-error-code`` trailing metadata; anything unexpected aborts with
INTERNAL and a message that reveals nothing.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import structlog

from auth.api import AuthError
from auth.grpc_status import abort_with_code
from auth.identity import current_identity
from context.api import NoCurrentContextError, current_context
from dispatch.engine import engine_pb2, engine_pb2_grpc
from dispatch.engine.api import (
    EngineError,
    InvalidCallerError,
    ToolCaller,
    ToolExecutionEngine,
)
from dispatch.engine.proto_convert import definition_to_proto, loads_json, result_to_proto

__all__ = [
    "TOOL_SERVICE_NAME",
    "CallerProvider",
    "ToolServicer",
    "add_tool_service",
    "current_caller",
]

log = structlog.get_logger(__name__)

TOOL_SERVICE_NAME: str = engine_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name

#: Returns the verified caller of the RPC being served; raises EngineError when there is none.
CallerProvider = Callable[[], ToolCaller]

_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]
# Keeps a little of the RPC deadline for answering once the tool's time is up.
_DEADLINE_MARGIN_SECONDS = 0.05
_MIN_TOOL_SECONDS = 0.001


def current_caller() -> ToolCaller:
    """The caller bound by the auth server interceptor: its context and verified identity.

    Raises :class:`InvalidCallerError` when no verified user identity or context is bound
    (or the identity is a service token: tools act for a user, with the user's own token).
    """
    try:
        identity = current_identity()
        ctx = current_context()
    except (AuthError, NoCurrentContextError):
        raise InvalidCallerError("the call carries no verified caller") from None
    return ToolCaller.from_auth_result(ctx, identity)


async def _answer(context: _Context, method: str, call: Callable[[], Awaitable[_T]]) -> _T:
    """Run one call; engine errors become their status, anything else INTERNAL."""
    try:
        return await call()
    except EngineError as error:
        log.info("tool_rpc_refused", method=method, error_code=error.error_code)
        await abort_with_code(
            context, grpc.StatusCode[error.grpc_status_name], error.error_code, error.message
        )
    except Exception:
        log.exception("tool_rpc_failed", method=method)
        await abort_with_code(
            context, grpc.StatusCode.INTERNAL, EngineError.error_code, "internal error"
        )


class ToolServicer(engine_pb2_grpc.ToolServiceServicer):
    def __init__(
        self, engine: ToolExecutionEngine, *, caller_provider: CallerProvider = current_caller
    ) -> None:
        self._engine = engine
        self._caller_provider = caller_provider

    async def ListTools(  # noqa: N802  (the generated servicer's name)
        self, request: engine_pb2.ListToolsRequest, context: _Context
    ) -> engine_pb2.ListToolsResponse:
        async def call() -> engine_pb2.ListToolsResponse:
            caller = self._caller_provider()
            definitions = await self._engine.list_tools(
                caller, include_unavailable=request.include_unavailable
            )
            return engine_pb2.ListToolsResponse(tools=[definition_to_proto(d) for d in definitions])

        return await _answer(context, "ListTools", call)

    async def ExecuteTool(  # noqa: N802  (the generated servicer's name)
        self, request: engine_pb2.ExecuteToolRequest, context: _Context
    ) -> engine_pb2.ExecuteToolResponse:
        async def call() -> engine_pb2.ExecuteToolResponse:
            caller = self._caller_provider()
            arguments: object = loads_json(request.arguments_json or "{}", what="arguments_json")
            result = await self._engine.execute_tool(
                caller,
                request.tool_name,
                # The engine checks the type itself and answers invalid_input for non-objects.
                cast("Mapping[str, object]", arguments),
                tool_call_id=request.tool_call_id if request.HasField("tool_call_id") else None,
                timeout_seconds=self._time_limit(request, context),
            )
            return result_to_proto(result)

        return await _answer(context, "ExecuteTool", call)

    @staticmethod
    def _time_limit(request: engine_pb2.ExecuteToolRequest, context: _Context) -> float | None:
        requested = request.timeout_seconds if request.HasField("timeout_seconds") else None
        remaining = context.time_remaining()
        if remaining is None or not math.isfinite(remaining):
            return requested
        budget = max(_MIN_TOOL_SECONDS, remaining - _DEADLINE_MARGIN_SECONDS)
        # A requested value that is not positive stays as it is: the engine refuses it.
        if requested is None or (math.isfinite(requested) and requested > budget):
            return budget
        return requested


def add_tool_service(
    server: grpc.aio.Server,
    engine: ToolExecutionEngine,
    *,
    caller_provider: CallerProvider = current_caller,
) -> ToolServicer:
    """Register a :class:`ToolServicer` for ``engine`` on ``server`` and return it.

    The server must run :class:`auth.interceptors.AuthServerInterceptor` (or bind the caller
    otherwise and pass ``caller_provider``).
    """
    servicer = ToolServicer(engine, caller_provider=caller_provider)
    engine_pb2_grpc.add_ToolServiceServicer_to_server(servicer, server)
    return servicer
