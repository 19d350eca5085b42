"""The user-facing data Protocol over gRPC: ``GrpcDataAccessClient``.

It implements :class:`~data.api.UserDataAccessProvider`: ``create_user_context(ctx)``
yields an object with the same ``threads``, ``messages``, ``notes`` and ``runs``
repositories as an in-process scope, so callers cannot tell the two apart, except that
over gRPC every call is its own unit of work (nothing to roll back at the end).

Identity travels the way design section 3 says: each call runs with ``ctx`` bound as the
current context (``context.context_scope``), and the channel's client interceptor (the
auth one in production) adds the caller's token and the encoded context as metadata. The
server trusts only what it verified; this client never sends a user id of its own.
Failed calls raise the same typed :class:`~data.api.DataError` the server raised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message as ProtoMessage
from pydantic import JsonValue

from context import UserExecutionContext, context_scope
from data import data_pb2, data_pb2_grpc
from data.api import (
    Message,
    MessageRole,
    NotAUserContextError,
    Note,
    Run,
    RunStatus,
    ScopeClosedError,
    Thread,
    UserDataAccess,
)
from data.grpc_codec import (
    error_from_rpc_error,
    json_to_wire,
    message_from_proto,
    note_from_proto,
    role_to_proto,
    run_from_proto,
    status_to_proto,
    thread_from_proto,
)

__all__ = ["GrpcDataAccessClient", "GrpcUserDataAccess"]

_Request = TypeVar("_Request", bound=ProtoMessage)
_Response = TypeVar("_Response", bound=ProtoMessage)


class _Calls:
    """Makes the calls of one user-facing scope, with its context bound."""

    def __init__(
        self, stub: data_pb2_grpc.DataAccessAsyncStub, ctx: UserExecutionContext, timeout: float
    ) -> None:
        self.stub = stub
        self.ctx = ctx
        self.timeout = timeout
        self.closed = False

    async def __call__(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
    ) -> _Response:
        if self.closed:
            raise ScopeClosedError("this data scope is closed")
        with context_scope(self.ctx):
            try:
                return await method(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as error:
                raise error_from_rpc_error(error) from None


class _Threads:
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def create(
        self,
        *,
        title: str = "",
        metadata: Mapping[str, JsonValue] | None = None,
        thread_id: str | None = None,
    ) -> Thread:
        request = data_pb2.CreateThreadRequest(title=title, metadata_json=json_to_wire(metadata))
        if thread_id is not None:
            request.thread_id = thread_id
        return thread_from_proto(await self._calls(self._calls.stub.CreateThread, request))

    async def get(self, thread_id: str) -> Thread:
        request = data_pb2.GetThreadRequest(thread_id=thread_id)
        return thread_from_proto(await self._calls(self._calls.stub.GetThread, request))

    async def list(self, *, limit: int = 50) -> Sequence[Thread]:
        request = data_pb2.ListThreadsRequest(limit=limit)
        response = await self._calls(self._calls.stub.ListThreads, request)
        return [thread_from_proto(t) for t in response.threads]

    async def rename(self, thread_id: str, title: str) -> Thread:
        request = data_pb2.RenameThreadRequest(thread_id=thread_id, title=title)
        return thread_from_proto(await self._calls(self._calls.stub.RenameThread, request))

    async def delete(self, thread_id: str) -> None:
        request = data_pb2.DeleteThreadRequest(thread_id=thread_id)
        await self._calls(self._calls.stub.DeleteThread, request)


class _Messages:
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def append(
        self,
        thread_id: str,
        *,
        role: MessageRole,
        content: str,
        run_id: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
    ) -> Message:
        request = data_pb2.AppendMessageRequest(
            thread_id=thread_id,
            role=role_to_proto(role),
            content=content,
            metadata_json=json_to_wire(metadata),
        )
        if run_id is not None:
            request.run_id = run_id
        return message_from_proto(await self._calls(self._calls.stub.AppendMessage, request))

    async def get(self, message_id: str) -> Message:
        request = data_pb2.GetMessageRequest(message_id=message_id)
        return message_from_proto(await self._calls(self._calls.stub.GetMessage, request))

    async def list(self, thread_id: str, *, limit: int = 100) -> Sequence[Message]:
        request = data_pb2.ListMessagesRequest(thread_id=thread_id, limit=limit)
        response = await self._calls(self._calls.stub.ListMessages, request)
        return [message_from_proto(m) for m in response.messages]


class _Notes:
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def add(self, content: str, *, title: str = "", tags: Sequence[str] = ()) -> Note:
        request = data_pb2.AddNoteRequest(content=content, title=title, tags=list(tags))
        return note_from_proto(await self._calls(self._calls.stub.AddNote, request))

    async def get(self, note_id: str) -> Note:
        request = data_pb2.GetNoteRequest(note_id=note_id)
        return note_from_proto(await self._calls(self._calls.stub.GetNote, request))

    async def search(self, query: str, *, limit: int = 20) -> Sequence[Note]:
        request = data_pb2.SearchNotesRequest(query=query, limit=limit)
        response = await self._calls(self._calls.stub.SearchNotes, request)
        return [note_from_proto(n) for n in response.notes]

    async def list(self, *, limit: int = 50) -> Sequence[Note]:
        request = data_pb2.ListNotesRequest(limit=limit)
        response = await self._calls(self._calls.stub.ListNotes, request)
        return [note_from_proto(n) for n in response.notes]

    async def delete(self, note_id: str) -> None:
        request = data_pb2.DeleteNoteRequest(note_id=note_id)
        await self._calls(self._calls.stub.DeleteNote, request)


class _Runs:
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def create(self, *, thread_id: str, agent_name: str, run_id: str | None = None) -> Run:
        request = data_pb2.CreateRunRequest(thread_id=thread_id, agent_name=agent_name)
        if run_id is not None:
            request.run_id = run_id
        return run_from_proto(await self._calls(self._calls.stub.CreateRun, request))

    async def get(self, run_id: str) -> Run:
        request = data_pb2.GetRunRequest(run_id=run_id)
        return run_from_proto(await self._calls(self._calls.stub.GetRun, request))

    async def list(self, *, thread_id: str | None = None, limit: int = 50) -> Sequence[Run]:
        request = data_pb2.ListRunsRequest(limit=limit)
        if thread_id is not None:
            request.thread_id = thread_id
        response = await self._calls(self._calls.stub.ListRuns, request)
        return [run_from_proto(r) for r in response.runs]

    async def start(self, run_id: str) -> Run:
        request = data_pb2.StartRunRequest(run_id=run_id)
        return run_from_proto(await self._calls(self._calls.stub.StartRun, request))

    async def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> Run:
        request = data_pb2.FinishRunRequest(run_id=run_id, status=status_to_proto(status))
        if result is not None:
            request.result = result
        if error is not None:
            request.error = error
        return run_from_proto(await self._calls(self._calls.stub.FinishRun, request))


class GrpcUserDataAccess:
    """One user's data over gRPC (implements :class:`~data.api.UserDataAccess`)."""

    def __init__(self, calls: _Calls) -> None:
        self._calls = calls
        self._threads = _Threads(calls)
        self._messages = _Messages(calls)
        self._notes = _Notes(calls)
        self._runs = _Runs(calls)

    @property
    def context(self) -> UserExecutionContext:
        return self._calls.ctx

    @property
    def threads(self) -> _Threads:
        return self._threads

    @property
    def messages(self) -> _Messages:
        return self._messages

    @property
    def notes(self) -> _Notes:
        return self._notes

    @property
    def runs(self) -> _Runs:
        return self._runs


class GrpcDataAccessClient:
    """Implements :class:`~data.api.UserDataAccessProvider` over a ``grpc.aio`` channel."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = data_pb2_grpc.DataAccessStub(channel)
        self._timeout = timeout

    def create_user_context(
        self, ctx: UserExecutionContext
    ) -> AbstractAsyncContextManager[UserDataAccess]:
        if not isinstance(cast(object, ctx), UserExecutionContext):
            raise NotAUserContextError(
                f"a data scope needs a UserExecutionContext, got {type(ctx).__name__}"
            )
        return self._scope(ctx)

    @asynccontextmanager
    async def _scope(self, ctx: UserExecutionContext) -> AsyncIterator[UserDataAccess]:
        calls = _Calls(self._stub, ctx, self._timeout)
        try:
            yield GrpcUserDataAccess(calls)
        finally:
            calls.closed = True
