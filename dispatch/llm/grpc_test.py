"""gRPC round trips through an in-process ``grpc.aio`` server on 127.0.0.1, port 0.

The server interceptor here stands in for the auth interceptor: it binds the context sent
in ``x-ssot-context`` (the real one also verifies the bearer token first). What is tested
is the LLM adapters: proto conversion, streaming, error mapping and per-caller identity.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import pytest
from pydantic import BaseModel

from context import (
    CONTEXT_METADATA_KEY,
    UserExecutionContext,
    context_scope,
    decode_context_metadata,
    encode_context_metadata,
    new_user_id,
)
from dispatch.llm import llm_pb2 as pb
from dispatch.llm import llm_pb2_grpc
from dispatch.llm.api import (
    ChatMessage,
    CompletionRequest,
    InvalidLLMRequestError,
    LLMConfig,
    LLMError,
    LLMManager,
    ProviderRateLimitedError,
    StructuredOutputError,
    TokenBudgetExceededError,
    ToolCall,
    ToolSpec,
    UnknownConfigError,
)
from dispatch.llm.clock import ManualClock
from dispatch.llm.grpc_client import GrpcLLMClient
from dispatch.llm.grpc_server import add_llm_servicer
from dispatch.llm.manager import LLMManagerFactory
from dispatch.llm.providers.base import ProviderThrottledError
from dispatch.llm.resilience import RetryPolicy
from dispatch.llm.testing import ScriptedProvider, text_result

TOOLS = (
    ToolSpec(
        name="calculator",
        parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
    ),
    ToolSpec(
        name="notes.add", parameters={"type": "object", "properties": {"text": {"type": "string"}}}
    ),
)


Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ContextFromMetadata(grpc.aio.ServerInterceptor):
    """Binds the context from ``x-ssot-context`` around the handler (test stand-in)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        raw = metadata.get(CONTEXT_METADATA_KEY)
        if handler is None or raw is None:
            return handler
        ctx = decode_context_metadata(raw)
        if handler.unary_unary is not None:
            # grpc.aio unary handlers are coroutine functions; the stubs type them as sync.
            unary = cast(Callable[[Req, Any], Awaitable[Resp]], handler.unary_unary)

            async def bound_unary(request: Req, context: Any) -> Resp:
                with context_scope(ctx):
                    return await unary(request, context)

            return cast(
                "grpc.RpcMethodHandler[Req, Resp]",
                grpc.unary_unary_rpc_method_handler(
                    bound_unary,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
            )
        if handler.unary_stream is not None:
            # grpc.aio stream handlers are async generators; the stubs type them as sync.
            streaming = cast(Callable[[Req, Any], AsyncIterator[Resp]], handler.unary_stream)

            async def bound_stream(request: Req, context: Any) -> AsyncIterator[Resp]:
                with context_scope(ctx):
                    async for item in streaming(request, context):
                        yield item

            return cast(
                "grpc.RpcMethodHandler[Req, Resp]",
                grpc.unary_stream_rpc_method_handler(
                    bound_stream,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
            )
        return handler


@dataclass
class Service:
    factory: LLMManagerFactory
    address: str
    channels: list[grpc.aio.Channel]

    def client(self, ctx: UserExecutionContext | None) -> GrpcLLMClient:
        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        if ctx is None:
            return GrpcLLMClient(channel)
        header = encode_context_metadata(ctx)
        return GrpcLLMClient(channel, metadata=lambda: [(CONTEXT_METADATA_KEY, header)])


async def _serve(factory: LLMManagerFactory) -> AsyncIterator[Service]:
    server = grpc.aio.server(interceptors=[ContextFromMetadata()])
    add_llm_servicer(server, factory)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service = Service(factory, f"127.0.0.1:{port}", [])
    try:
        yield service
    finally:
        for channel in service.channels:
            await channel.close()
        await server.stop(grace=None)
        await factory.aclose()


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    factory = LLMManagerFactory(
        configs=[
            LLMConfig(name="default", providers=("local",), max_tokens=64),
            LLMConfig(name="analysis", providers=("local",), temperature=0.5, max_tokens=64),
        ],
        daily_token_budget=400,
    )
    async for item in _serve(factory):
        yield item


def _ctx() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


async def test_complete_round_trip_matches_in_process(service: Service) -> None:
    ctx = _ctx()
    client = service.client(ctx)
    assert isinstance(client, LLMManager)
    request = CompletionRequest(
        messages=(ChatMessage.user("what is 12*(3+4); remember the code is 77"),),
        tools=TOOLS,
        config="analysis",
        temperature=0.1,
    )
    remote = await client.complete(request)
    local = (
        await LLMManagerFactory()
        .create_for_context(_ctx())
        .complete(request.model_copy(update={"config": "default"}))
    )
    assert remote.provider == "local"
    assert remote.config == "analysis"
    assert remote.tool_calls == local.tool_calls
    assert [call.name for call in remote.tool_calls] == ["calculator", "notes.add"]
    assert remote.tool_calls[0].arguments == {"expression": "12*(3+4)"}
    assert remote.reasoning == local.reasoning
    assert remote.usage == local.usage
    again = await client.complete(request)
    assert again.cached and again.tool_calls == remote.tool_calls


async def test_tool_results_and_summaries_cross_the_wire(service: Service) -> None:
    client = service.client(_ctx())
    call = ToolCall(
        id="call_1", name="calculator", arguments={"expression": "6*7", "nested": {"n": [1, 2]}}
    )
    request = CompletionRequest(
        messages=(
            ChatMessage.system("be brief"),
            ChatMessage.user("what is 6*7"),
            ChatMessage.assistant(None, (call,)),
            ChatMessage.tool("call_1", json.dumps({"result": 42}), name="calculator"),
        ),
        tools=TOOLS,
    )
    completion = await client.complete(request)
    assert completion.tool_calls == ()
    assert "42" in completion.content


async def test_complete_stream_round_trip(service: Service) -> None:
    client = service.client(_ctx())
    request = CompletionRequest(messages=(ChatMessage.user("say something about streams"),))
    chunks = [chunk async for chunk in client.stream(request)]
    final = chunks[-1].completion
    assert final is not None
    assert all(chunk.completion is None for chunk in chunks[:-1])
    assert "".join(chunk.delta for chunk in chunks) == final.content
    assert "".join(chunk.thinking for chunk in chunks).strip() == final.reasoning
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens

    tool_request = CompletionRequest(
        messages=(ChatMessage.user("list runs"),), tools=(ToolSpec(name="runs.list"),)
    )
    tool_chunks = [chunk async for chunk in client.stream(tool_request)]
    done = tool_chunks[-1].completion
    assert done is not None and [c.name for c in done.tool_calls] == ["runs.list"]
    deltas = [d for chunk in tool_chunks for d in chunk.tool_calls]
    assert deltas[0].id == done.tool_calls[0].id and deltas[0].name == "runs.list"


async def test_each_caller_gets_only_its_own_usage_and_cache(service: Service) -> None:
    alice, bob = _ctx(), _ctx()
    alice_client, bob_client = service.client(alice), service.client(bob)
    request = CompletionRequest(messages=(ChatMessage.user("identical prompt"),))
    assert not (await alice_client.complete(request)).cached
    assert not (await bob_client.complete(request)).cached
    assert (await alice_client.complete(request)).cached
    alice_usage, bob_usage = await alice_client.usage(), await bob_client.usage()
    assert alice_usage.user_id == alice.user_id and bob_usage.user_id == bob.user_id
    assert (alice_usage.totals.requests, alice_usage.totals.cache_hits) == (2, 1)
    assert (bob_usage.totals.requests, bob_usage.totals.cache_hits) == (1, 0)
    assert alice_usage.budget.limit == 400
    health = await alice_client.health()
    assert health.status == "ok" and set(health.configs) == {"default", "analysis"}


async def test_errors_arrive_as_the_same_typed_errors(service: Service) -> None:
    client = service.client(_ctx())
    with pytest.raises(UnknownConfigError):
        await client.complete(CompletionRequest(messages=(ChatMessage.user("x"),), config="nope"))
    with pytest.raises(InvalidLLMRequestError):
        await client.complete(
            CompletionRequest(messages=(ChatMessage.user("x"),), max_tokens=10_000)
        )
    with pytest.raises(UnknownConfigError):
        async for _ in client.stream(
            CompletionRequest(messages=(ChatMessage.user("x"),), config="nope")
        ):
            pass
    long_prompt = "word " * 400
    with pytest.raises(TokenBudgetExceededError) as caught:
        await client.complete(CompletionRequest(messages=(ChatMessage.user(long_prompt),)))
    assert caught.value.resets_at is not None


async def test_hostile_requests_are_invalid_argument(service: Service) -> None:
    ctx = _ctx()
    channel = grpc.aio.insecure_channel(service.address)
    service.channels.append(channel)
    stub = llm_pb2_grpc.LLMServiceStub(channel)
    metadata = ((CONTEXT_METADATA_KEY, encode_context_metadata(ctx)),)
    hostile = [
        pb.CompleteRequest(),  # no messages
        pb.CompleteRequest(messages=[pb.ChatMessage(role="root", content="x")]),
        pb.CompleteRequest(messages=[pb.ChatMessage(role="tool", content="x")]),  # no tool_call_id
        pb.CompleteRequest(
            messages=[pb.ChatMessage(role="user", content="x")],
            tools=[pb.ToolSpec(name="a", parameters_json="{not json")],
        ),
        pb.CompleteRequest(
            messages=[pb.ChatMessage(role="user", content="x")],
            tools=[pb.ToolSpec(name="bad name!", parameters_json='{"type": "object"}')],
        ),
        pb.CompleteRequest(
            messages=[pb.ChatMessage(role="user", content="x")],
            tools=[pb.ToolSpec(name="a", parameters_json='{"type": "object", "properties": 5}')],
        ),
        pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="x")], temperature=9.0),
        pb.CompleteRequest(
            messages=[pb.ChatMessage(role="user", content="x")], response_format="xml"
        ),
    ]
    for request in hostile:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Complete(request, metadata=metadata)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert ("x-ssot-error-code", "INVALID_LLM_REQUEST") in tuple(
            caught.value.trailing_metadata() or ()
        )
    assert (await service.factory.create_for_context(ctx).usage()).totals.requests == 0


async def test_a_call_without_a_bound_context_is_unauthenticated(service: Service) -> None:
    client = service.client(None)
    channel = service.channels[-1]
    stub = llm_pb2_grpc.LLMServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="x")]))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(LLMError):
        await client.usage()


class Shape(BaseModel):
    value: int


async def test_rate_limit_and_structured_errors_over_grpc() -> None:
    throttled = ScriptedProvider(
        "throttled", default=ProviderThrottledError("429", provider="throttled", retry_after=300.0)
    )
    babbling = ScriptedProvider("babbling", default=text_result("not json"))
    factory = LLMManagerFactory(
        providers=[throttled, babbling],
        configs=[
            LLMConfig(name="default", providers=("babbling",)),
            LLMConfig(name="limited", providers=("throttled",)),
        ],
        retry=RetryPolicy(max_attempts=1),
        clock=ManualClock(),
    )
    async for service in _serve(factory):
        client = service.client(_ctx())
        with pytest.raises(ProviderRateLimitedError) as caught:
            await client.complete(
                CompletionRequest(messages=(ChatMessage.user("x"),), config="limited")
            )
        assert caught.value.retry_after == 300.0
        with pytest.raises(StructuredOutputError):
            await client.complete_structured(
                CompletionRequest(messages=(ChatMessage.user("y"),)), Shape
            )
        assert len(babbling.calls) == 2  # the first answer and one repair
