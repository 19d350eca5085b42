"""The ``ssot.data.v1.DataAccess`` servicer: proto <-> api, errors -> gRPC statuses.

A thin adapter over any :class:`~data.api.UserDataAccessProvider` (normally the
:class:`~data.factory.SqlDataAccessFactory`). The caller's identity is never read from a
request: every method takes the ``UserExecutionContext`` bound by the server interceptor
(``context.current_context()``), which verified the caller's token first (design section
3); without one the call is refused with UNAUTHENTICATED. Each call runs in its own data
scope of that user, so it is its own unit of work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
import structlog

from context import get_current_context
from context.proto_codec import GRPC_SERVER_METADATA_OPTIONS
from data import data_pb2, data_pb2_grpc
from data.api import (
    DataError,
    NotAuthenticatedError,
    UserDataAccess,
    UserDataAccessProvider,
)
from data.grpc_codec import (
    ERROR_CODE_METADATA_KEY,
    json_from_wire,
    message_to_proto,
    note_to_proto,
    role_from_proto,
    run_to_proto,
    status_from_proto,
    thread_to_proto,
)

__all__ = ["DATA_SERVICE_NAME", "DataAccessServicer", "add_data_access_servicer", "start_server"]

log = structlog.get_logger(__name__)

DATA_SERVICE_NAME: str = data_pb2.DESCRIPTOR.services_by_name["DataAccess"].full_name

_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: _Context, error: DataError) -> NoReturn:
    await context.abort(
        grpc.StatusCode[error.grpc_status_name],
        error.message,
        trailing_metadata=((ERROR_CODE_METADATA_KEY, error.error_code),),
    )
    raise AssertionError("ServicerContext.abort returned")  # pragma: no cover - abort raises


def _limit(value: int) -> dict[str, int]:
    """Keyword arguments for a list call: 0 on the wire means "the default"."""
    return {"limit": value} if value else {}


class DataAccessServicer(data_pb2_grpc.DataAccessServicer):
    """Implements every ``DataAccess`` method over a provider of user data scopes."""

    def __init__(self, provider: UserDataAccessProvider) -> None:
        self._provider = provider

    async def _in_scope(
        self, context: _Context, work: Callable[[UserDataAccess], Awaitable[_T]]
    ) -> _T:
        ctx = get_current_context()
        if ctx is None:
            await _abort(context, NotAuthenticatedError("the call has no verified caller identity"))
        try:
            async with self._provider.create_user_context(ctx) as scope:
                return await work(scope)
        except DataError as error:
            await _abort(context, error)
        except Exception:
            log.exception("data.grpc_call_failed")
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "internal error",
                trailing_metadata=((ERROR_CODE_METADATA_KEY, DataError.error_code),),
            )
            raise  # pragma: no cover - abort raises

    # -- threads ------------------------------------------------------------------------

    async def CreateThread(  # noqa: N802 -- names from the proto service
        self, request: data_pb2.CreateThreadRequest, context: _Context
    ) -> data_pb2.Thread:
        async def work(scope: UserDataAccess) -> data_pb2.Thread:
            thread = await scope.threads.create(
                title=request.title,
                metadata=json_from_wire(request.metadata_json, "metadata_json"),
                thread_id=request.thread_id if request.HasField("thread_id") else None,
            )
            return thread_to_proto(thread)

        return await self._in_scope(context, work)

    async def GetThread(  # noqa: N802
        self, request: data_pb2.GetThreadRequest, context: _Context
    ) -> data_pb2.Thread:
        async def work(scope: UserDataAccess) -> data_pb2.Thread:
            return thread_to_proto(await scope.threads.get(request.thread_id))

        return await self._in_scope(context, work)

    async def ListThreads(  # noqa: N802
        self, request: data_pb2.ListThreadsRequest, context: _Context
    ) -> data_pb2.ListThreadsResponse:
        async def work(scope: UserDataAccess) -> data_pb2.ListThreadsResponse:
            threads = await scope.threads.list(**_limit(request.limit))
            return data_pb2.ListThreadsResponse(threads=[thread_to_proto(t) for t in threads])

        return await self._in_scope(context, work)

    async def RenameThread(  # noqa: N802
        self, request: data_pb2.RenameThreadRequest, context: _Context
    ) -> data_pb2.Thread:
        async def work(scope: UserDataAccess) -> data_pb2.Thread:
            return thread_to_proto(await scope.threads.rename(request.thread_id, request.title))

        return await self._in_scope(context, work)

    async def DeleteThread(  # noqa: N802
        self, request: data_pb2.DeleteThreadRequest, context: _Context
    ) -> data_pb2.DeleteThreadResponse:
        async def work(scope: UserDataAccess) -> data_pb2.DeleteThreadResponse:
            await scope.threads.delete(request.thread_id)
            return data_pb2.DeleteThreadResponse()

        return await self._in_scope(context, work)

    # -- messages -----------------------------------------------------------------------

    async def AppendMessage(  # noqa: N802
        self, request: data_pb2.AppendMessageRequest, context: _Context
    ) -> data_pb2.Message:
        async def work(scope: UserDataAccess) -> data_pb2.Message:
            message = await scope.messages.append(
                request.thread_id,
                role=role_from_proto(request.role),
                content=request.content,
                run_id=request.run_id if request.HasField("run_id") else None,
                metadata=json_from_wire(request.metadata_json, "metadata_json"),
            )
            return message_to_proto(message)

        return await self._in_scope(context, work)

    async def GetMessage(  # noqa: N802
        self, request: data_pb2.GetMessageRequest, context: _Context
    ) -> data_pb2.Message:
        async def work(scope: UserDataAccess) -> data_pb2.Message:
            return message_to_proto(await scope.messages.get(request.message_id))

        return await self._in_scope(context, work)

    async def ListMessages(  # noqa: N802
        self, request: data_pb2.ListMessagesRequest, context: _Context
    ) -> data_pb2.ListMessagesResponse:
        async def work(scope: UserDataAccess) -> data_pb2.ListMessagesResponse:
            messages = await scope.messages.list(request.thread_id, **_limit(request.limit))
            return data_pb2.ListMessagesResponse(messages=[message_to_proto(m) for m in messages])

        return await self._in_scope(context, work)

    # -- notes --------------------------------------------------------------------------

    async def AddNote(  # noqa: N802
        self, request: data_pb2.AddNoteRequest, context: _Context
    ) -> data_pb2.Note:
        async def work(scope: UserDataAccess) -> data_pb2.Note:
            note = await scope.notes.add(
                request.content, title=request.title, tags=list(request.tags)
            )
            return note_to_proto(note)

        return await self._in_scope(context, work)

    async def GetNote(  # noqa: N802
        self, request: data_pb2.GetNoteRequest, context: _Context
    ) -> data_pb2.Note:
        async def work(scope: UserDataAccess) -> data_pb2.Note:
            return note_to_proto(await scope.notes.get(request.note_id))

        return await self._in_scope(context, work)

    async def SearchNotes(  # noqa: N802
        self, request: data_pb2.SearchNotesRequest, context: _Context
    ) -> data_pb2.ListNotesResponse:
        async def work(scope: UserDataAccess) -> data_pb2.ListNotesResponse:
            notes = await scope.notes.search(request.query, **_limit(request.limit))
            return data_pb2.ListNotesResponse(notes=[note_to_proto(n) for n in notes])

        return await self._in_scope(context, work)

    async def ListNotes(  # noqa: N802
        self, request: data_pb2.ListNotesRequest, context: _Context
    ) -> data_pb2.ListNotesResponse:
        async def work(scope: UserDataAccess) -> data_pb2.ListNotesResponse:
            notes = await scope.notes.list(**_limit(request.limit))
            return data_pb2.ListNotesResponse(notes=[note_to_proto(n) for n in notes])

        return await self._in_scope(context, work)

    async def DeleteNote(  # noqa: N802
        self, request: data_pb2.DeleteNoteRequest, context: _Context
    ) -> data_pb2.DeleteNoteResponse:
        async def work(scope: UserDataAccess) -> data_pb2.DeleteNoteResponse:
            await scope.notes.delete(request.note_id)
            return data_pb2.DeleteNoteResponse()

        return await self._in_scope(context, work)

    # -- runs ---------------------------------------------------------------------------

    async def CreateRun(  # noqa: N802
        self, request: data_pb2.CreateRunRequest, context: _Context
    ) -> data_pb2.Run:
        async def work(scope: UserDataAccess) -> data_pb2.Run:
            run = await scope.runs.create(
                thread_id=request.thread_id,
                agent_name=request.agent_name,
                run_id=request.run_id if request.HasField("run_id") else None,
            )
            return run_to_proto(run)

        return await self._in_scope(context, work)

    async def GetRun(  # noqa: N802
        self, request: data_pb2.GetRunRequest, context: _Context
    ) -> data_pb2.Run:
        async def work(scope: UserDataAccess) -> data_pb2.Run:
            return run_to_proto(await scope.runs.get(request.run_id))

        return await self._in_scope(context, work)

    async def ListRuns(  # noqa: N802
        self, request: data_pb2.ListRunsRequest, context: _Context
    ) -> data_pb2.ListRunsResponse:
        async def work(scope: UserDataAccess) -> data_pb2.ListRunsResponse:
            runs = await scope.runs.list(
                thread_id=request.thread_id if request.HasField("thread_id") else None,
                **_limit(request.limit),
            )
            return data_pb2.ListRunsResponse(runs=[run_to_proto(r) for r in runs])

        return await self._in_scope(context, work)

    async def StartRun(  # noqa: N802
        self, request: data_pb2.StartRunRequest, context: _Context
    ) -> data_pb2.Run:
        async def work(scope: UserDataAccess) -> data_pb2.Run:
            return run_to_proto(await scope.runs.start(request.run_id))

        return await self._in_scope(context, work)

    async def FinishRun(  # noqa: N802
        self, request: data_pb2.FinishRunRequest, context: _Context
    ) -> data_pb2.Run:
        async def work(scope: UserDataAccess) -> data_pb2.Run:
            run = await scope.runs.finish(
                request.run_id,
                status_from_proto(request.status),
                result=request.result if request.HasField("result") else None,
                error=request.error if request.HasField("error") else None,
            )
            return run_to_proto(run)

        return await self._in_scope(context, work)


def add_data_access_servicer(server: grpc.aio.Server, provider: UserDataAccessProvider) -> None:
    """Register the ``DataAccess`` service on ``server``."""
    data_pb2_grpc.add_DataAccessServicer_to_server(DataAccessServicer(provider), server)


async def start_server(
    provider: UserDataAccessProvider,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    host: str = "127.0.0.1",
    port: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """A started server with this service only (port 0: a free port); returns the port.

    The interceptors are where identity comes from: in production the auth server
    interceptor, which verifies the caller's token and binds its context.
    """
    server = grpc.aio.server(interceptors=list(interceptors), options=GRPC_SERVER_METADATA_OPTIONS)
    add_data_access_servicer(server, provider)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("data.grpc_started", address=f"{host}:{bound}")
    return server, bound
