"""The ``openai`` provider against a chat-completions server started in the test.

The server (:mod:`dispatch.llm.stub_server`) speaks HTTP/1.1 and SSE on loopback; waits
are asserted through the injected clock's recorded sleeps, never wall time.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr

from context import UserExecutionContext, new_user_id
from dispatch.llm.api import (
    ChatMessage,
    CompletionRequest,
    InvalidLLMRequestError,
    LLMConfig,
    ProviderRateLimitedError,
    ProviderState,
    StreamChunk,
    StreamInterruptedError,
    ToolCall,
    ToolSpec,
)
from dispatch.llm.clock import ManualClock
from dispatch.llm.manager import LLMManagerFactory
from dispatch.llm.providers.base import (
    Provider,
    ProviderCall,
    ProviderMisconfiguredError,
    ProviderRejectedRequestError,
    ProviderResult,
    ProviderThrottledError,
    ProviderTransientError,
)
from dispatch.llm.providers.local import LocalProvider
from dispatch.llm.providers.openai import (
    OpenAIProvider,
    SSEDecoder,
    ToolNameCodec,
    parse_retry_after,
)
from dispatch.llm.resilience import CooldownPolicy, RetryPolicy
from dispatch.llm.stub_server import ChatCompletionsStub, StubResponse, StubToolCall

API_KEY = "sk-test-very-secret-key-0123456789"
NOTES_ADD = ToolSpec(
    name="notes.add",
    description="Add a note",
    parameters={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


@pytest.fixture
async def stub() -> AsyncIterator[ChatCompletionsStub]:
    async with ChatCompletionsStub() as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _provider(
    stub: ChatCompletionsStub, clock: ManualClock, name: str = "openai"
) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=stub.base_url,
        api_key=SecretStr(API_KEY),
        name=name,
        default_model="gpt-test",
        clock=clock,
    )


def _call(text: str = "hello", **kw: Any) -> ProviderCall:
    return ProviderCall(messages=(ChatMessage.user(text),), **kw)


def _factory(
    clock: ManualClock,
    *providers: Provider,
    chain: tuple[str, ...],
    max_attempts: int = 3,
    failure_threshold: int = 5,
) -> LLMManagerFactory:
    return LLMManagerFactory(
        providers=providers,
        configs=[LLMConfig(name="default", providers=chain, max_tokens=256, timeout_seconds=10)],
        retry=RetryPolicy(max_attempts=max_attempts, base_delay_seconds=0.5, max_delay_seconds=4),
        cooldown=CooldownPolicy(failure_threshold=failure_threshold, cooldown_seconds=30),
        clock=clock,
        sleep=clock.sleep,
    )


def _ctx() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


# --------------------------------------------------------------------------------------
# Plain completion
# --------------------------------------------------------------------------------------


async def test_plain_completion_speaks_the_wire_format(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.completion("Hi there!", usage=(12, 3), model="gpt-test-0613"))
    provider = _provider(stub, clock)
    try:
        result = await provider.complete(
            ProviderCall(
                messages=(ChatMessage.system("be nice"), ChatMessage.user("hello")),
                temperature=0.25,
                max_tokens=99,
                model="gpt-x",
            )
        )
    finally:
        await provider.aclose()
    assert result.content == "Hi there!"
    assert result.finish_reason == "stop"
    assert (
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
        result.usage.total_tokens,
    ) == (12, 3, 15)
    assert result.model == "gpt-test-0613"
    [request] = stub.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hello"},
        ],
        "temperature": 0.25,
        "max_tokens": 99,
    }


async def test_json_mode_and_missing_usage(stub: ChatCompletionsStub, clock: ManualClock) -> None:
    stub.enqueue(StubResponse.completion('{"a": 1}', usage=None))
    provider = _provider(stub, clock)
    try:
        result = await provider.complete(_call("give json", response_format="json"))
    finally:
        await provider.aclose()
    assert stub.requests[0].json()["response_format"] == {"type": "json_object"}
    assert stub.requests[0].json()["model"] == "gpt-test"
    assert result.usage.total_tokens > 0  # the package's approximation stands in


# --------------------------------------------------------------------------------------
# Tool calls
# --------------------------------------------------------------------------------------


async def test_tool_calls_are_sent_and_parsed(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(
        StubResponse.completion(
            None,
            tool_calls=[
                StubToolCall("call_abc", "notes_add", json.dumps({"text": "buy milk", "n": 2}))
            ],
        )
    )
    previous = ToolCall(id="call_0", name="notes.add", arguments={"text": "earlier"})
    messages = (
        ChatMessage.user("remember to buy milk"),
        ChatMessage.assistant(None, (previous,)),
        ChatMessage.tool("call_0", '{"ok": true}'),
        ChatMessage.user("and again"),
    )
    provider = _provider(stub, clock)
    try:
        result = await provider.complete(ProviderCall(messages=messages, tools=(NOTES_ADD,)))
    finally:
        await provider.aclose()
    assert result.finish_reason == "tool_calls"
    assert result.content == ""
    assert result.tool_calls == (
        ToolCall(id="call_abc", name="notes.add", arguments={"text": "buy milk", "n": 2}),
    )
    body = stub.requests[0].json()
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "notes_add",
                "description": "Add a note",
                "parameters": NOTES_ADD.parameters,
            },
        }
    ]
    assert body["tool_choice"] == "auto"
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "notes_add", "arguments": '{"text": "earlier"}'},
            }
        ],
    }
    assert body["messages"][2] == {
        "role": "tool",
        "content": '{"ok": true}',
        "tool_call_id": "call_0",
    }


async def test_malformed_tool_arguments_are_a_transient_failure(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(
        StubResponse.completion(None, tool_calls=[StubToolCall("c1", "notes_add", "{not json")])
    )
    provider = _provider(stub, clock)
    try:
        with pytest.raises(ProviderTransientError, match="not valid JSON"):
            await provider.complete(
                ProviderCall(messages=(ChatMessage.user("x"),), tools=(NOTES_ADD,))
            )
    finally:
        await provider.aclose()


def test_tool_name_codec_round_trips_and_avoids_collisions() -> None:
    codec = ToolNameCodec(["notes.add", "notes_add", "a.b-c"])
    encoded = [codec.encode(name) for name in ("notes.add", "notes_add", "a.b-c")]
    assert encoded == ["notes_add", "notes_add_2", "a_b-c"]
    assert [codec.decode(name) for name in encoded] == ["notes.add", "notes_add", "a.b-c"]


# --------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------


async def test_streaming_text_and_tool_call_deltas(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(
        StubResponse.stream(
            ["Let me ", "note that."],
            tool_calls=[
                StubToolCall("call_1", "notes_add", '{"text": "milk"}'),
                StubToolCall("call_2", "notes_add", '{"text": "eggs"}'),
            ],
            usage=(20, 9),
        )
    )
    provider = _provider(stub, clock)
    try:
        items = [
            item
            async for item in provider.stream(
                ProviderCall(messages=(ChatMessage.user("x"),), tools=(NOTES_ADD,))
            )
        ]
    finally:
        await provider.aclose()
    body = stub.requests[0].json()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    chunks = [item for item in items if isinstance(item, StreamChunk)]
    result = items[-1]
    assert isinstance(result, ProviderResult)
    assert "".join(chunk.delta for chunk in chunks) == "Let me note that."
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls]
    assert [d.index for d in deltas] == [0, 0, 0, 1, 1, 1]
    assert deltas[0].id == "call_1" and deltas[0].name == "notes.add"
    assert "".join(d.arguments_delta for d in deltas if d.index == 1) == '{"text": "eggs"}'
    assert result.content == "Let me note that."
    assert result.tool_calls == (
        ToolCall(id="call_1", name="notes.add", arguments={"text": "milk"}),
        ToolCall(id="call_2", name="notes.add", arguments={"text": "eggs"}),
    )
    assert result.finish_reason == "tool_calls"
    assert result.usage.total_tokens == 29


def test_sse_decoder_joins_multi_line_data_and_skips_comments() -> None:
    decoder = SSEDecoder()
    events: list[str] = []
    for line in [
        ": keep-alive",
        "event: message",
        'data: {"a":',
        "data:1}",
        "",
        "data: [DONE]",
        "",
    ]:
        events += decoder.feed(line)
    assert events == ['{"a":\n1}', "[DONE]"]


async def test_manager_streams_through_openai_and_caches_the_result(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.stream(["Hello", ", ", "world"], usage=(7, 3)))
    factory = _factory(clock, _provider(stub, clock), chain=("openai",))
    manager = factory.create_for_context(_ctx())
    request = CompletionRequest(messages=(ChatMessage.user("greet me"),))
    try:
        chunks = [chunk async for chunk in manager.stream(request)]
        again = await manager.complete(request)
    finally:
        await factory.aclose()
    final = chunks[-1].completion
    assert final is not None and not final.cached
    assert final.provider == "openai" and final.content == "Hello, world"
    assert final.usage.total_tokens == 10
    assert again.cached and again.content == "Hello, world"
    assert len(stub.requests) == 1
    assert (await manager.usage()).budget.used == 10


async def test_stream_broken_after_first_chunk_is_interrupted_not_switched(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.stream(["partial ", "answer"], drop_after=2))
    factory = _factory(clock, _provider(stub, clock), LocalProvider(), chain=("openai", "local"))
    manager = factory.create_for_context(_ctx())
    received: list[StreamChunk] = []
    try:
        with pytest.raises(StreamInterruptedError):
            async for chunk in manager.stream(
                CompletionRequest(messages=(ChatMessage.user("go"),))
            ):
                received.append(chunk)
    finally:
        await factory.aclose()
    assert "".join(chunk.delta for chunk in received) == "partial "
    assert all(chunk.completion is None for chunk in received)
    usage = await manager.usage()
    assert usage.totals.failures == 1


async def test_stream_that_fails_before_its_first_chunk_falls_back(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.error(503, "overloaded"))
    factory = _factory(
        clock, _provider(stub, clock), LocalProvider(), chain=("openai", "local"), max_attempts=1
    )
    manager = factory.create_for_context(_ctx())
    try:
        chunks = [
            c
            async for c in manager.stream(CompletionRequest(messages=(ChatMessage.user("hello"),)))
        ]
    finally:
        await factory.aclose()
    final = chunks[-1].completion
    assert final is not None and final.provider == "local"
    assert "hello" in final.content


# --------------------------------------------------------------------------------------
# Rate limits, server errors, fallback
# --------------------------------------------------------------------------------------


async def test_429_with_retry_after_seconds_is_waited_then_succeeds(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(
        StubResponse.error(429, "slow down", headers=[("Retry-After", "2")]),
        StubResponse.completion("after the wait"),
    )
    factory = _factory(clock, _provider(stub, clock), chain=("openai",))
    try:
        completion = await factory.create_for_context(_ctx()).complete(
            CompletionRequest(messages=(ChatMessage.user("hi"),))
        )
    finally:
        await factory.aclose()
    assert completion.content == "after the wait"
    assert completion.provider == "openai"
    assert clock.sleeps == [2.0]
    assert len(stub.requests) == 2


async def test_429_with_retry_after_http_date_is_waited(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    when = format_datetime(clock.now() + timedelta(seconds=7), usegmt=True)
    stub.enqueue(
        StubResponse.error(429, headers=[("Retry-After", when)]),
        StubResponse.completion("ok"),
    )
    factory = _factory(clock, _provider(stub, clock), chain=("openai",))
    try:
        completion = await factory.create_for_context(_ctx()).complete(
            CompletionRequest(messages=(ChatMessage.user("hi"),))
        )
    finally:
        await factory.aclose()
    assert completion.content == "ok"
    assert clock.sleeps == [7.0]


async def test_429_longer_than_the_bound_cools_down_and_falls_back(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.error(429, headers=[("Retry-After", "120")]))
    factory = _factory(clock, _provider(stub, clock), LocalProvider(), chain=("openai", "local"))
    manager = factory.create_for_context(_ctx())
    try:
        first = await manager.complete(CompletionRequest(messages=(ChatMessage.user("one"),)))
        second = await manager.complete(CompletionRequest(messages=(ChatMessage.user("two"),)))
    finally:
        await factory.aclose()
    assert (first.provider, second.provider) == ("local", "local")
    assert clock.sleeps == []  # 120 s is not waited out inside a call
    assert len(stub.requests) == 1  # the second call skipped the cooling provider
    status = {item.name: item for item in (await manager.health()).providers}["openai"]
    assert status.state is ProviderState.OPEN
    assert status.cooldown_remaining_seconds == pytest.approx(120.0)


async def test_429_everywhere_is_rate_limited_error(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.error(429, headers=[("Retry-After", "90")]))
    factory = _factory(clock, _provider(stub, clock), chain=("openai",))
    try:
        with pytest.raises(ProviderRateLimitedError) as caught:
            await factory.create_for_context(_ctx()).complete(
                CompletionRequest(messages=(ChatMessage.user("x"),))
            )
    finally:
        await factory.aclose()
    assert caught.value.retry_after == 90.0
    assert caught.value.grpc_status_name == "RESOURCE_EXHAUSTED"


async def test_500_then_fallback_to_the_next_provider_and_cooldown(
    clock: ManualClock,
) -> None:
    async with ChatCompletionsStub() as primary, ChatCompletionsStub() as secondary:
        primary.enqueue(StubResponse.error(500, "boom"), StubResponse.error(502, "bad gateway"))
        secondary.enqueue(
            StubResponse.completion("from the backup"),
            StubResponse.completion("backup again"),
            StubResponse.completion("backup third"),
        )
        factory = _factory(
            clock,
            _provider(primary, clock, "openai"),
            _provider(secondary, clock, "backup"),
            chain=("openai", "backup"),
            max_attempts=2,
            failure_threshold=2,
        )
        manager = factory.create_for_context(_ctx())
        try:
            first = await manager.complete(CompletionRequest(messages=(ChatMessage.user("a"),)))
            assert first.provider == "backup" and first.content == "from the backup"
            assert len(primary.requests) == 2  # one attempt plus one retry
            assert len(clock.sleeps) == 1 and 0.25 <= clock.sleeps[0] <= 0.5  # jittered backoff
            # The primary is cooling down: the next call goes straight to the backup.
            second = await manager.complete(CompletionRequest(messages=(ChatMessage.user("b"),)))
            assert second.provider == "backup"
            assert len(primary.requests) == 2
            # After the cooldown the primary is probed again and, recovered, used.
            clock.advance(31)
            primary.enqueue(StubResponse.completion("primary is back"))
            third = await manager.complete(CompletionRequest(messages=(ChatMessage.user("c"),)))
            assert third.provider == "openai" and third.content == "primary is back"
            assert len(secondary.requests) == 2
        finally:
            await factory.aclose()


async def test_400_is_invalid_request_without_retry_or_fallback(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    stub.enqueue(StubResponse.error(400, "context length exceeded"))
    local = LocalProvider()
    factory = _factory(clock, _provider(stub, clock), local, chain=("openai", "local"))
    try:
        with pytest.raises(InvalidLLMRequestError, match="context length exceeded"):
            await factory.create_for_context(_ctx()).complete(
                CompletionRequest(messages=(ChatMessage.user("x"),))
            )
    finally:
        await factory.aclose()
    assert len(stub.requests) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, ProviderMisconfiguredError),
        (403, ProviderMisconfiguredError),
        (404, ProviderMisconfiguredError),
        (422, ProviderRejectedRequestError),
        (408, ProviderTransientError),
        (500, ProviderTransientError),
        (503, ProviderTransientError),
        (429, ProviderThrottledError),
    ],
)
async def test_status_classification(
    stub: ChatCompletionsStub, clock: ManualClock, status: int, error: type[Exception]
) -> None:
    stub.enqueue(StubResponse.error(status, "nope"))
    provider = _provider(stub, clock)
    try:
        with pytest.raises(error):
            await provider.complete(_call())
    finally:
        await provider.aclose()


async def test_connection_refused_is_retried_then_falls_back(clock: ManualClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = OpenAIProvider(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=SecretStr(API_KEY), clock=clock
    )
    factory = _factory(clock, dead, LocalProvider(), chain=("openai", "local"), max_attempts=3)
    try:
        completion = await factory.create_for_context(_ctx()).complete(
            CompletionRequest(messages=(ChatMessage.user("anyone there?"),))
        )
    finally:
        await factory.aclose()
    assert completion.provider == "local"
    assert len(clock.sleeps) == 2  # three attempts, two backoffs
    assert 0.25 <= clock.sleeps[0] <= 0.5 and 0.5 <= clock.sleeps[1] <= 1.0


def test_parse_retry_after_forms(clock: ManualClock) -> None:
    now = clock.now()
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"}), now) == 3.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1.5"}), now) == 1.5
    assert (
        parse_retry_after(httpx.Headers({"retry-after-ms": "250", "Retry-After": "9"}), now) == 0.25
    )
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now) == 30.0
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now) == 0.0
    for bad in ("-1", "soon", "nan", "inf", ""):
        assert parse_retry_after(httpx.Headers({"Retry-After": bad}), now) is None
    assert parse_retry_after(httpx.Headers(), now) is None


# --------------------------------------------------------------------------------------
# Secrets and prompts stay out of logs
# --------------------------------------------------------------------------------------


async def test_api_key_and_prompt_never_reach_the_logs(
    stub: ChatCompletionsStub, clock: ManualClock
) -> None:
    secret_prompt = "my bank PIN is 8812"
    stub.enqueue(StubResponse.error(500, "kaput"), StubResponse.completion("fine"))
    with structlog.testing.capture_logs() as logs:
        provider = _provider(stub, clock)
        factory = _factory(clock, provider, chain=("openai",))
        try:
            await factory.create_for_context(_ctx()).complete(
                CompletionRequest(messages=(ChatMessage.user(secret_prompt),))
            )
        finally:
            await factory.aclose()
    text = repr(logs)
    assert any(entry["event"] == "llm.provider.attempt_failed" for entry in logs)
    assert any(entry["event"] == "llm.completion" for entry in logs)
    assert API_KEY not in text
    assert "8812" not in text
    assert API_KEY not in repr(provider)
