"""``GrpcAgentClient``: the :class:`~dispatch.agents.api.AgentService` Protocol over ``grpc.aio``.

The server decides who the caller is from the verified token, so the client sends no
identity fields: the bearer token comes from ``token_provider`` (or from the channel's
:func:`auth.interceptors.auth_client_interceptors`), and this
client adds the ``caller``'s context as ``x-ssot-context`` so the server acts for exactly
that request (and refuses a context of another user than the token's). The plan and roles
of ``caller`` are not sent: the server reads them from the token.

:meth:`GrpcAgentClient.start_run` returns a :class:`StreamingRunHandle`: the run's IDs (from
the call's initial metadata) plus :meth:`StreamingRunHandle.events`, an async iterator of
the run's event envelopes as they happen, ending after the terminal event. Closing the
handle before the run has ended cancels the call, and with it the run.

Failed calls raise the :class:`~dispatch.agents.api.AgentError` they stand for: the
trailing ``x-ssot-error-code`` gives back the same class; a rejection by the auth
interceptor maps by status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import grpc
import grpc.aio
from pydantic import PrivateAttr

from auth.interceptors import AUTHORIZATION_METADATA_KEY, TokenProvider
from context.proto_codec import CONTEXT_METADATA_KEY, encode_context_metadata
from dispatch.agents import agents_pb2, agents_pb2_grpc
from dispatch.agents.api import (
    AgentError,
    AgentPermissionDeniedError,
    AgentUnavailableError,
    InvalidAgentCallerError,
    InvalidRunRequestError,
    RunHandle,
    RunInfo,
    RunLimitExceededError,
    RunNotFoundError,
    error_from_code,
)
from dispatch.agents.proto_convert import (
    RUN_ID_METADATA_KEY,
    THREAD_ID_METADATA_KEY,
    event_from_proto,
    run_from_proto,
)
from dispatch.engine.api import ERROR_CODE_METADATA_KEY, ToolCaller
from dispatch.tools.api import RunEventEnvelope

__all__ = ["GrpcAgentClient", "StreamingRunHandle", "error_from_rpc_error"]

_ERROR_BY_STATUS: Final[Mapping[grpc.StatusCode, type[AgentError]]] = {
    grpc.StatusCode.UNAUTHENTICATED: InvalidAgentCallerError,
    grpc.StatusCode.PERMISSION_DENIED: AgentPermissionDeniedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRunRequestError,
    grpc.StatusCode.NOT_FOUND: RunNotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RunLimitExceededError,
    grpc.StatusCode.UNAVAILABLE: AgentUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: AgentUnavailableError,
}

_StreamCall = grpc.aio.UnaryStreamCall[agents_pb2.StartRunRequest, agents_pb2.RunEvent]


def _code_and_details(code: grpc.StatusCode, details: str | None, trailing: Any) -> AgentError:
    message = details or code.name
    for key, value in trailing or ():
        if key == ERROR_CODE_METADATA_KEY and isinstance(value, str):
            error = error_from_code(value, message)
            if type(error) is not AgentError or value == AgentError.error_code:
                return error
            message = f"{message} ({value})"
    return _ERROR_BY_STATUS.get(code, AgentError)(message)


def error_from_rpc_error(exc: grpc.aio.AioRpcError) -> AgentError:
    """The typed error a failed call stands for (see the module docstring)."""
    return _code_and_details(exc.code(), exc.details(), exc.trailing_metadata())


class StreamingRunHandle(RunHandle):
    """A run started over gRPC: its IDs and its live event stream."""

    _call: Any = PrivateAttr(default=None)

    async def events(self) -> AsyncIterator[RunEventEnvelope]:
        """The run's events as they happen, ending after its terminal event."""
        call: _StreamCall = self._call
        try:
            async for message in call:
                yield event_from_proto(message)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from None

    def close(self) -> bool:
        """Stop listening; a run still in progress is cancelled by the server."""
        call: _StreamCall = self._call
        return call.cancel()


class GrpcAgentClient:
    """Implements :class:`~dispatch.agents.api.AgentService` against a remote server.

    ``token_provider`` returns the user's access token for every call (see the module
    docstring). ``rpc_timeout_seconds`` bounds CancelRun and GetRun; StartRun's stream
    lasts as long as the run (the server's run timeout bounds it) unless
    ``stream_timeout_seconds`` is set.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token_provider: TokenProvider | None = None,
        rpc_timeout_seconds: float | None = 30.0,
        stream_timeout_seconds: float | None = None,
    ) -> None:
        self._stub = agents_pb2_grpc.AgentServiceStub(channel)
        self._token_provider = token_provider
        self._rpc_timeout = rpc_timeout_seconds
        self._stream_timeout = stream_timeout_seconds

    async def _metadata(self, caller: ToolCaller) -> tuple[tuple[str, str], ...]:
        entries = [(CONTEXT_METADATA_KEY, encode_context_metadata(caller.context))]
        if self._token_provider is not None:
            token = await self._token_provider()
            if token:
                entries.append((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"))
        return tuple(entries)

    async def start_run(
        self,
        caller: ToolCaller,
        agent_name: str,
        message: str,
        *,
        thread_id: str | None = None,
    ) -> StreamingRunHandle:
        request = agents_pb2.StartRunRequest(
            agent_name=agent_name, message=message, thread_id=thread_id
        )
        call: _StreamCall = self._stub.StartRun(
            request, metadata=await self._metadata(caller), timeout=self._stream_timeout
        )
        try:
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from None
        values = {key: value for key, value in initial or () if isinstance(value, str)}
        run_id = values.get(RUN_ID_METADATA_KEY)
        run_thread = values.get(THREAD_ID_METADATA_KEY)
        if run_id is None or run_thread is None:
            # Refused before the run existed: the status says why.
            code = await call.code()
            details = await call.details()
            trailing = await call.trailing_metadata()
            if code is grpc.StatusCode.OK:
                raise AgentError("the service started no run and gave no reason")
            raise _code_and_details(code, details, trailing)
        handle = StreamingRunHandle(run_id=run_id, thread_id=run_thread, agent_name=agent_name)
        handle._call = call
        return handle

    async def cancel_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        try:
            response = await self._stub.CancelRun(
                agents_pb2.CancelRunRequest(run_id=run_id),
                metadata=await self._metadata(caller),
                timeout=self._rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from None
        return run_from_proto(response)

    async def get_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        try:
            response = await self._stub.GetRun(
                agents_pb2.GetRunRequest(run_id=run_id),
                metadata=await self._metadata(caller),
                timeout=self._rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc_error(exc) from None
        return run_from_proto(response)
