"""The ``DataAccess`` gRPC service, end to end over a loopback channel.

The server side binds the caller's context the way the auth interceptor does after it
verified the token (here: from the ``x-ssot-context`` metadata the client interceptor
sends, with no token check, which is auth's job and tested there). Everything else is
real: servicer, codec, client, factory, database (the selected backend).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import pytest

from context import (
    CONTEXT_METADATA_KEY,
    UserExecutionContext,
    context_scope,
    decode_context_metadata,
    encode_context_metadata,
    get_current_context,
    new_user_id,
)
from data import (
    AlreadyExistsError,
    DataUnavailableError,
    InvalidInputError,
    InvalidTransitionError,
    MessageRole,
    NotAuthenticatedError,
    NotFoundError,
    RunStatus,
    ScopeClosedError,
    SqlDataAccessFactory,
    UserDataAccessProvider,
    data_pb2,
    data_pb2_grpc,
)
from data.engine import create_data_engine
from data.grpc_client import GrpcDataAccessClient
from data.grpc_codec import ERROR_CODE_METADATA_KEY, error_code_of
from data.grpc_server import start_server

_Context = grpc.aio.ServicerContext[Any, Any]


class BindContextInterceptor(grpc.aio.ServerInterceptor):
    """Binds the caller's context around the handler, as the auth interceptor does."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        encoded = dict(handler_call_details.invocation_metadata or ()).get(CONTEXT_METADATA_KEY)
        if encoded is None or handler is None or handler.unary_unary is None:
            return handler
        ctx = decode_context_metadata(encoded)
        inner = cast(Callable[[Any, _Context], Awaitable[Any]], handler.unary_unary)

        async def bound(request: Any, context: _Context) -> Any:
            with context_scope(ctx):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            bound,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class SendContextInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current context as metadata, as the auth client interceptor does."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata()
        for key, value in client_call_details.metadata or ():
            metadata.add(key, value)
        ctx = get_current_context()
        if ctx is not None:
            metadata.add(CONTEXT_METADATA_KEY, encode_context_metadata(ctx))
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout,
            metadata=metadata,
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


async def _serve(provider: UserDataAccessProvider) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    server, port = await start_server(provider, interceptors=[BindContextInterceptor()])
    try:
        yield server, port
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def port(factory: SqlDataAccessFactory) -> AsyncIterator[int]:
    async for _, bound in _serve(factory):
        yield bound


@pytest.fixture
async def client(port: int) -> AsyncIterator[GrpcDataAccessClient]:
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=[SendContextInterceptor()]
    )
    try:
        yield GrpcDataAccessClient(channel)
    finally:
        await channel.close()


def user() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


async def test_every_operation_round_trips(client: GrpcDataAccessClient) -> None:
    alice = user()
    async with client.create_user_context(alice) as data:
        assert data.context is alice
        thread = await data.threads.create(
            title="over the wire", metadata={"n": 1, "x": [1.5, "s"]}, thread_id=alice.thread_id
        )
        assert thread.id == alice.thread_id
        assert thread.metadata == {"n": 1, "x": [1.5, "s"]}  # integers stay integers
        assert await data.threads.get(thread.id) == thread
        renamed = await data.threads.rename(thread.id, "renamed")
        assert [t.id for t in await data.threads.list()] == [thread.id]

        run = await data.runs.create(thread_id=thread.id, agent_name="triage", run_id=alice.run_id)
        assert run.status is RunStatus.PENDING
        started = await data.runs.start(run.id)
        assert started.started_at is not None
        message = await data.messages.append(
            thread.id, role=MessageRole.ASSISTANT, content="hello", run_id=run.id, metadata={"k": 2}
        )
        assert await data.messages.get(message.id) == message
        assert await data.messages.list(thread.id, limit=10) == [message]
        finished = await data.runs.finish(run.id, RunStatus.FAILED, error="boom", result="partial")
        assert (finished.status, finished.error, finished.result) == (
            RunStatus.FAILED,
            "boom",
            "partial",
        )
        assert await data.runs.get(run.id) == finished
        assert await data.runs.list(thread_id=thread.id) == [finished]

        note = await data.notes.add("Remember the milk", title="shopping", tags=["home"])
        assert await data.notes.get(note.id) == note
        assert await data.notes.search("MILK") == [note]
        assert await data.notes.list() == [note]
        await data.notes.delete(note.id)
        assert await data.notes.list() == []

        await data.threads.delete(thread.id)
        with pytest.raises(NotFoundError):
            await data.threads.get(renamed.id)


async def test_same_results_in_process_and_over_grpc(
    client: GrpcDataAccessClient, factory: SqlDataAccessFactory
) -> None:
    alice = user()
    async with client.create_user_context(alice) as remote:
        thread = await remote.threads.create(title="shared")
        await remote.messages.append(thread.id, role=MessageRole.USER, content="one")
    async with factory.create_user_context(alice) as local:
        assert (await local.threads.get(thread.id)).title == thread.title
        await local.messages.append(thread.id, role=MessageRole.USER, content="two")
        local_view = await local.messages.list(thread.id)
    async with client.create_user_context(alice) as remote:
        assert await remote.messages.list(thread.id) == local_view


async def test_users_are_isolated_over_grpc(client: GrpcDataAccessClient) -> None:
    alice, bob = user(), user()
    async with client.create_user_context(alice) as data:
        thread = await data.threads.create(title="alice's")
        message = await data.messages.append(thread.id, role=MessageRole.USER, content="private")
        note = await data.notes.add("alice's secret")
        run = await data.runs.create(thread_id=thread.id, agent_name="a")
    async with client.create_user_context(bob) as data:
        for call in (
            data.threads.get(thread.id),
            data.threads.rename(thread.id, "mine now"),
            data.threads.delete(thread.id),
            data.messages.get(message.id),
            data.messages.list(thread.id),
            data.messages.append(thread.id, role=MessageRole.USER, content="spam"),
            data.notes.get(note.id),
            data.notes.delete(note.id),
            data.runs.get(run.id),
            data.runs.start(run.id),
            data.runs.create(thread_id=thread.id, agent_name="a"),
        ):
            with pytest.raises(NotFoundError):
                await call
        assert await data.threads.list() == []
        assert await data.notes.search("secret") == []
    async with client.create_user_context(alice) as data:
        assert (await data.threads.get(thread.id)).title == "alice's"
        assert await data.notes.get(note.id) == note


async def test_typed_errors_survive_the_wire(client: GrpcDataAccessClient) -> None:
    alice = user()
    async with client.create_user_context(alice) as data:
        thread = await data.threads.create(title="t")
        with pytest.raises(AlreadyExistsError):
            await data.threads.create(thread_id=thread.id)
        with pytest.raises(InvalidInputError):
            await data.threads.list(limit=10_000)
        with pytest.raises(InvalidInputError):
            await data.notes.add("")
        run = await data.runs.create(thread_id=thread.id, agent_name="a")
        await data.runs.finish(run.id, RunStatus.CANCELLED)
        with pytest.raises(InvalidTransitionError):
            await data.runs.start(run.id)
        with pytest.raises(InvalidInputError):
            await data.runs.finish(run.id, RunStatus.RUNNING)


async def test_status_and_error_code_on_the_wire(port: int) -> None:
    alice = user()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = data_pb2_grpc.DataAccessStub(channel)
        metadata = ((CONTEXT_METADATA_KEY, encode_context_metadata(alice)),)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetThread(data_pb2.GetThreadRequest(thread_id="thr_x"), metadata=metadata)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert error_code_of(raised.value) == "NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.CreateThread(
                data_pb2.CreateThreadRequest(metadata_json="[1, 2]"), metadata=metadata
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.AppendMessage(
                data_pb2.AppendMessageRequest(thread_id="thr_x", content="x"), metadata=metadata
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # role unspecified


async def test_call_without_a_verified_identity_is_unauthenticated(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = data_pb2_grpc.DataAccessStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListThreads(data_pb2.ListThreadsRequest())
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert (ERROR_CODE_METADATA_KEY, "NOT_AUTHENTICATED") in tuple(
            raised.value.trailing_metadata() or ()
        )
    # The client maps it back to the typed error.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    async with channel, GrpcDataAccessClient(channel).create_user_context(user()) as data:
        with pytest.raises(NotAuthenticatedError):
            await data.threads.list()


def test_no_request_can_name_a_user() -> None:
    for message in data_pb2.DESCRIPTOR.message_types_by_name.values():
        assert not any("user" in field.name for field in message.fields), message.name


async def test_unavailable_database_is_unavailable_for_the_client(tmp_path: Path) -> None:
    broken = SqlDataAccessFactory(
        create_data_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'data.db'}")
    )
    try:
        async for _, bound in _serve(broken):
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{bound}", interceptors=[SendContextInterceptor()]
            )
            async with (
                channel,
                GrpcDataAccessClient(channel).create_user_context(user()) as data,
            ):
                with pytest.raises(DataUnavailableError):
                    await data.notes.list()
    finally:
        await broken.shutdown()


async def test_unreachable_server_is_unavailable(port: int) -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    async with channel:
        client = GrpcDataAccessClient(channel, timeout=2)
        async with client.create_user_context(user()) as data:
            with pytest.raises(DataUnavailableError):
                await data.threads.list()


async def test_closed_client_scope_refuses_calls(client: GrpcDataAccessClient) -> None:
    async with client.create_user_context(user()) as data:
        await data.threads.list()
    with pytest.raises(ScopeClosedError):
        await data.threads.list()
