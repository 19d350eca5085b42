"""The ``ssot.agents.v1.AgentService`` servicer: proto <-> api, errors -> gRPC statuses.

A thin adapter over an in-process :class:`~dispatch.agents.service.AgentRunner`. The caller
is never read from a request: :func:`current_caller` combines the context and the verified
identity that :class:`auth.interceptors.AuthServerInterceptor` binds for the handler (the
same pattern as ``dispatch.engine.grpc_server``). The ``caller_provider`` seam lets a
composition root bind the caller some other way; whatever it returns must come from a
verified credential.

StartRun gives the run an extra sink of its own (the runner's ``observer``): a
:class:`~dispatch.tools.sinks.BufferingEventSink` that numbers the run's events gaplessly
and from which the handler streams them as they happen. The run's IDs go out first, as
initial metadata (``x-ssot-run-id``, ``x-ssot-thread-id``). The stream ends when the run
has ended (the runner closes the sink after the terminal event). If the client cancels
the call or goes away first, the handler cancels the run: a run started over this stream
never continues without a listener.

An :class:`~dispatch.agents.api.AgentError` aborts the call with its gRPC status and the
``x-ssot-error-code`` trailing entry; anything unexpected aborts with INTERNAL and a message
that reveals nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
import structlog

from auth.api import AuthError
from auth.grpc_status import abort_with_code
from auth.identity import current_identity
from context.api import NoCurrentContextError, UserExecutionContext, current_context
from dispatch.agents import agents_pb2, agents_pb2_grpc
from dispatch.agents.api import (
    AgentError,
    AgentPermissionDeniedError,
    InvalidAgentCallerError,
    RunHandle,
)
from dispatch.agents.proto_convert import (
    RUN_ID_METADATA_KEY,
    THREAD_ID_METADATA_KEY,
    event_to_proto,
    run_to_proto,
)
from dispatch.agents.service import AgentRunner
from dispatch.engine.api import CallerMismatchError, EngineError, ToolCaller
from dispatch.tools.sinks import BufferingEventSink

__all__ = [
    "AGENT_SERVICE_NAME",
    "AgentServicer",
    "CallerProvider",
    "add_agent_service",
    "current_caller",
]

log = structlog.get_logger(__name__)

AGENT_SERVICE_NAME: str = agents_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name

#: Returns the verified caller of the RPC being served; raises AgentError when there is none.
CallerProvider = Callable[[], ToolCaller]

_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]


def current_caller() -> ToolCaller:
    """The caller bound by the auth server interceptor: its context and verified identity.

    Raises :class:`InvalidAgentCallerError` when no verified user identity or context is
    bound (a service token is refused too: runs act for a user, with the user's token).
    """
    try:
        identity = current_identity()
        ctx = current_context()
        return ToolCaller.from_auth_result(ctx, identity)
    except CallerMismatchError:
        raise AgentPermissionDeniedError(
            "the request context belongs to another user than the token"
        ) from None
    except (AuthError, NoCurrentContextError, EngineError):
        raise InvalidAgentCallerError("the call carries no verified user") from None


async def _abort_for(context: _Context, method: str, error: BaseException) -> NoReturn:
    if isinstance(error, AgentError):
        log.info("agent_rpc_refused", method=method, error_code=error.error_code)
        await abort_with_code(
            context, grpc.StatusCode[error.grpc_status_name], error.error_code, error.message
        )
    log.error("agent_rpc_failed", method=method, exc_type=type(error).__name__, exc_info=error)
    await abort_with_code(
        context, grpc.StatusCode.INTERNAL, AgentError.error_code, "internal error"
    )


async def _answer(context: _Context, method: str, call: Callable[[], Awaitable[_T]]) -> _T:
    """Run one unary call; agent errors become their status, anything else INTERNAL."""
    try:
        return await call()
    except Exception as error:
        await _abort_for(context, method, error)


class AgentServicer(agents_pb2_grpc.AgentServiceServicer):
    def __init__(
        self, runner: AgentRunner, *, caller_provider: CallerProvider = current_caller
    ) -> None:
        self._runner = runner
        self._caller_provider = caller_provider

    async def StartRun(  # noqa: N802  (the generated servicer's name)
        self, request: agents_pb2.StartRunRequest, context: _Context
    ) -> AsyncIterator[agents_pb2.RunEvent]:
        streams: list[BufferingEventSink] = []

        def observer(ctx: UserExecutionContext, agent_name: str) -> BufferingEventSink:
            sink = BufferingEventSink(ctx)
            streams.append(sink)
            return sink

        try:
            caller = self._caller_provider()
            handle: RunHandle = await self._runner.start_run(
                caller,
                request.agent_name,
                request.message,
                thread_id=request.thread_id if request.HasField("thread_id") else None,
                observer=observer,
            )
        except Exception as error:
            await _abort_for(context, "StartRun", error)
        finished = False
        try:
            await context.send_initial_metadata(
                ((RUN_ID_METADATA_KEY, handle.run_id), (THREAD_ID_METADATA_KEY, handle.thread_id))
            )
            async for event in streams[0].stream():
                yield event_to_proto(event)
            finished = True
        finally:
            if not finished and self._runner.cancel_run_nowait(caller, handle.run_id):
                log.info("agent_run_stream_abandoned", run_id=handle.run_id)

    async def CancelRun(  # noqa: N802  (the generated servicer's name)
        self, request: agents_pb2.CancelRunRequest, context: _Context
    ) -> agents_pb2.Run:
        async def call() -> agents_pb2.Run:
            caller = self._caller_provider()
            return run_to_proto(await self._runner.cancel_run(caller, request.run_id))

        return await _answer(context, "CancelRun", call)

    async def GetRun(  # noqa: N802  (the generated servicer's name)
        self, request: agents_pb2.GetRunRequest, context: _Context
    ) -> agents_pb2.Run:
        async def call() -> agents_pb2.Run:
            caller = self._caller_provider()
            return run_to_proto(await self._runner.get_run(caller, request.run_id))

        return await _answer(context, "GetRun", call)


def add_agent_service(
    server: grpc.aio.Server,
    runner: AgentRunner,
    *,
    caller_provider: CallerProvider = current_caller,
) -> AgentServicer:
    """Register an :class:`AgentServicer` for ``runner`` on ``server`` and return it.

    The server must run :class:`auth.interceptors.AuthServerInterceptor` (or bind the caller
    otherwise and pass ``caller_provider``).
    """
    servicer = AgentServicer(runner, caller_provider=caller_provider)
    agents_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    return servicer
