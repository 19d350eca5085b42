"""The manager: per-user cache and budget isolation, usage, structured output, failover."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import structlog
from pydantic import BaseModel, Field

from context import UserExecutionContext, new_user_id
from dispatch.llm.api import (
    ChatMessage,
    Completion,
    CompletionRequest,
    InvalidLLMRequestError,
    LLMConfig,
    LLMManager,
    ProviderState,
    ProviderUnavailableError,
    StructuredOutputError,
    TokenBudgetExceededError,
    ToolSpec,
    UnknownConfigError,
)
from dispatch.llm.clock import ManualClock
from dispatch.llm.manager import ContextLLMManager, LLMManagerFactory
from dispatch.llm.providers.base import ProviderCall, ProviderResult, ProviderTransientError
from dispatch.llm.providers.local import LocalProvider
from dispatch.llm.resilience import CooldownPolicy, RetryPolicy
from dispatch.llm.settings import LLMSettings
from dispatch.llm.testing import ScriptedProvider, text_result
from dispatch.llm.tokens import count_prompt_tokens


def _ctx() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


def _request(text: str, **kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage.user(text),), **kw)


def _local_factory(clock: ManualClock | None = None, **kw: Any) -> LLMManagerFactory:
    clock = clock or ManualClock()
    return LLMManagerFactory(clock=clock, sleep=clock.sleep, **kw)


# --------------------------------------------------------------------------------------
# Construction and configuration
# --------------------------------------------------------------------------------------


def test_a_manager_is_only_built_by_the_factory_for_one_context() -> None:
    factory = _local_factory()
    ctx = _ctx()
    manager = factory.create_for_context(ctx)
    assert isinstance(manager, LLMManager)
    assert manager.context is ctx
    assert factory.create_for_context(ctx) is not manager
    with pytest.raises(TypeError, match="create_for_context"):
        ContextLLMManager(factory, ctx)
    with pytest.raises(TypeError):
        factory.create_for_context(cast(UserExecutionContext, "usr_not_a_context"))


def test_factory_validates_its_configuration() -> None:
    with pytest.raises(ValueError, match="unregistered providers"):
        LLMManagerFactory(configs=[LLMConfig(name="default", providers=("openai",))])
    with pytest.raises(ValueError, match="'default' configuration"):
        LLMManagerFactory(configs=[LLMConfig(name="analysis")])
    with pytest.raises(ValueError, match="two providers"):
        LLMManagerFactory(providers=[LocalProvider(), LocalProvider()])


async def test_named_configurations_and_unknown_config() -> None:
    factory = _local_factory()
    assert {"default", "analysis", "triage", "reporting"} <= set(factory.config_names)
    assert factory.config("analysis").temperature == 0.5
    manager = factory.create_for_context(_ctx())
    completion = await manager.complete(_request("hi", config="triage"))
    assert completion.config == "triage"
    with pytest.raises(UnknownConfigError) as caught:
        await manager.complete(_request("hi", config="nonexistent"))
    assert caught.value.grpc_status_name == "NOT_FOUND"


async def test_max_tokens_may_only_lower_the_configuration_ceiling() -> None:
    manager = _local_factory().create_for_context(_ctx())
    with pytest.raises(InvalidLLMRequestError, match="max_tokens"):
        await manager.complete(_request("hi", max_tokens=10**6))
    short = await manager.complete(_request("tell me a long story please", max_tokens=2))
    assert short.finish_reason == "length"


async def test_settings_build_a_working_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSOT_LLM_DAILY_TOKEN_BUDGET", "1234")
    settings = LLMSettings()
    assert settings.providers == ("local",)
    factory = LLMManagerFactory.from_settings(settings)
    assert factory.config("default").providers == ("local",)
    assert (await factory.create_for_context(_ctx()).usage()).budget.limit == 1234
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        LLMSettings(providers=("openai", "local"))
    with_openai = LLMManagerFactory.from_settings(
        LLMSettings(providers=("openai", "local"), openai_base_url="http://127.0.0.1:9/v1")
    )
    assert with_openai.config("analysis").providers == ("openai", "local")
    assert (await with_openai.create_for_context(_ctx()).health()).status == "ok"
    await with_openai.aclose()


# --------------------------------------------------------------------------------------
# Cache isolation
# --------------------------------------------------------------------------------------


async def test_identical_prompts_of_two_users_never_share_a_cache_entry() -> None:
    provider = ScriptedProvider(
        "scripted", [text_result("answer for A"), text_result("answer for B")]
    )
    factory = LLMManagerFactory(
        providers=[provider], configs=[LLMConfig(name="default", providers=("scripted",))]
    )
    alice = factory.create_for_context(_ctx())
    bob = factory.create_for_context(_ctx())
    request = _request("What is the capital of France?")

    a1 = await alice.complete(request)
    b1 = await bob.complete(request)  # same prompt, other user: must reach the provider
    a2 = await alice.complete(request)
    b2 = await bob.complete(request)

    assert (a1.content, a1.cached) == ("answer for A", False)
    assert (b1.content, b1.cached) == ("answer for B", False)
    assert (a2.content, a2.cached) == ("answer for A", True)
    assert (b2.content, b2.cached) == ("answer for B", True)
    assert len(provider.calls) == 2
    alice_usage, bob_usage = await alice.usage(), await bob.usage()
    assert (alice_usage.totals.cache_hits, alice_usage.totals.cache_misses) == (1, 1)
    assert (bob_usage.totals.cache_hits, bob_usage.totals.cache_misses) == (1, 1)
    # Clearing one user's cache leaves the other's alone.
    assert await alice.clear_cache() == 1
    assert await alice.cached_entries() == 0
    assert await bob.cached_entries() == 1


async def test_cache_key_covers_config_and_request_details_and_can_be_bypassed() -> None:
    provider = ScriptedProvider("scripted", default=text_result("x"))
    configs = [
        LLMConfig(name="default", providers=("scripted",)),
        LLMConfig(name="analysis", providers=("scripted",), temperature=0.5),
    ]
    manager = LLMManagerFactory(providers=[provider], configs=configs).create_for_context(_ctx())
    await manager.complete(_request("q"))
    await manager.complete(_request("q", config="analysis"))
    await manager.complete(_request("q", temperature=0.9))
    await manager.complete(_request("q", tools=(ToolSpec(name="time.now"),)))
    assert len(provider.calls) == 4
    assert (await manager.complete(_request("q"))).cached
    fresh = await manager.complete(_request("q", use_cache=False))
    assert not fresh.cached
    assert len(provider.calls) == 5
    totals = (await manager.usage()).totals
    assert (totals.requests, totals.cache_hits, totals.cache_misses) == (6, 1, 4)


async def test_cache_entries_expire() -> None:
    clock = ManualClock()
    provider = ScriptedProvider("scripted", default=text_result("x"))
    factory = LLMManagerFactory(
        providers=[provider],
        configs=[LLMConfig(name="default", providers=("scripted",))],
        clock=clock,
    )
    manager = factory.create_for_context(_ctx())
    await manager.complete(_request("q"))
    clock.advance(599)
    assert (await manager.complete(_request("q"))).cached
    clock.advance(601)
    assert not (await manager.complete(_request("q"))).cached


# --------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------


def _budget_factory(clock: ManualClock, budget: int) -> LLMManagerFactory:
    provider = ScriptedProvider("scripted", default=text_result("ok", usage=(40, 10)))
    return LLMManagerFactory(
        providers=[provider],
        configs=[LLMConfig(name="default", providers=("scripted",), max_tokens=20)],
        daily_token_budget=budget,
        clock=clock,
    )


async def test_one_user_exhausting_the_budget_does_not_affect_another() -> None:
    clock = ManualClock(datetime(2030, 5, 1, 22, 0, tzinfo=UTC))
    factory = _budget_factory(clock, budget=120)
    alice = factory.create_for_context(_ctx())
    bob = factory.create_for_context(_ctx())

    await alice.complete(_request("one", use_cache=False))  # 50 used
    await alice.complete(_request("two", use_cache=False))  # 100 used
    with pytest.raises(TokenBudgetExceededError) as caught:
        await alice.complete(_request("three", use_cache=False))
    assert caught.value.grpc_status_name == "RESOURCE_EXHAUSTED"
    assert caught.value.resets_at == datetime(2030, 5, 2, tzinfo=UTC)
    assert (await alice.usage()).budget.used == 100

    assert (await bob.complete(_request("one", use_cache=False))).content == "ok"
    assert (await bob.usage()).budget.used == 50

    # The next UTC day starts afresh.
    clock.set(datetime(2030, 5, 2, 0, 0, 1, tzinfo=UTC))
    assert (await alice.complete(_request("four", use_cache=False))).content == "ok"
    status = (await alice.usage()).budget
    assert (status.day.isoformat(), status.used, status.remaining) == ("2030-05-02", 50, 70)


async def test_budget_check_uses_the_estimate_before_the_call() -> None:
    clock = ManualClock()
    factory = _budget_factory(clock, budget=30)
    manager = factory.create_for_context(_ctx())
    request = _request("a prompt of a few words")
    estimate = count_prompt_tokens(request.messages) + 20
    assert estimate > 30
    with pytest.raises(TokenBudgetExceededError):
        await manager.complete(request)
    totals = (await manager.usage()).totals
    assert (totals.failures, totals.total_tokens) == (1, 0)


async def test_cache_hits_cost_no_budget_and_failures_release_their_reservation() -> None:
    clock = ManualClock()
    provider = ScriptedProvider(
        "scripted",
        [text_result("ok", usage=(5, 5)), ProviderTransientError("down", provider="scripted")],
    )
    factory = LLMManagerFactory(
        providers=[provider],
        configs=[LLMConfig(name="default", providers=("scripted",), max_tokens=50)],
        retry=RetryPolicy(max_attempts=1),
        clock=clock,
    )
    manager = factory.create_for_context(_ctx())
    await manager.complete(_request("q"))
    await manager.complete(_request("q"))  # hit
    assert (await manager.usage()).budget.used == 10
    with pytest.raises(ProviderUnavailableError):
        await manager.complete(_request("other"))
    assert (await manager.usage()).budget.used == 10


async def test_concurrent_calls_of_one_user_cannot_overspend() -> None:
    gate = asyncio.Event()

    class SlowProvider(ScriptedProvider):
        async def complete(self, call: ProviderCall) -> ProviderResult:
            await gate.wait()
            return await super().complete(call)

    provider = SlowProvider("scripted", default=text_result("ok", usage=(10, 10)))
    factory = LLMManagerFactory(
        providers=[provider],
        configs=[LLMConfig(name="default", providers=("scripted",), max_tokens=40)],
        daily_token_budget=100,
    )
    manager = factory.create_for_context(_ctx())
    # Each call reserves prompt + 40 tokens (> 45); only two fit into 100 at once.
    tasks = [
        asyncio.create_task(manager.complete(_request(f"q{i}", use_cache=False))) for i in range(4)
    ]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    succeeded = [item for item in results if isinstance(item, Completion)]
    refused = [item for item in results if isinstance(item, TokenBudgetExceededError)]
    assert (len(succeeded), len(refused)) == (2, 2)
    assert (await manager.usage()).budget.used == 40


async def test_many_concurrent_users_each_get_their_own_answers_and_counters() -> None:
    factory = _local_factory(daily_token_budget=10_000)
    users = [_ctx() for _ in range(20)]

    async def run(ctx: UserExecutionContext) -> tuple[UserExecutionContext, list[Completion]]:
        manager = factory.create_for_context(ctx)
        shared = await manager.complete(_request("the same question for everyone"))
        own = await manager.complete(_request(f"a question only {ctx.user_id} asks"))
        again = await manager.complete(_request("the same question for everyone"))
        return ctx, [shared, own, again]

    results = await asyncio.gather(*(run(ctx) for ctx in users))
    for ctx, (shared, own, again) in results:
        assert not shared.cached  # never served from another user's identical request
        assert again.cached
        assert ctx.user_id in own.content
        assert all(
            other.user_id not in own.content for other in users if other.user_id != ctx.user_id
        )
        report = await factory.create_for_context(ctx).usage()
        assert report.user_id == ctx.user_id
        assert (report.totals.requests, report.totals.cache_hits) == (3, 1)


# --------------------------------------------------------------------------------------
# Structured output
# --------------------------------------------------------------------------------------


class Verdict(BaseModel):
    label: str
    score: int = Field(ge=0, le=10)


async def test_structured_output_with_the_local_provider() -> None:
    manager = _local_factory().create_for_context(_ctx())

    class Summary(BaseModel):
        summary: str
        word_count: int
        urgent: bool

    result = await manager.complete_structured(
        _request("summarise: the server is on fire"), Summary
    )
    assert isinstance(result, Summary)
    assert "the server is on fire" in result.summary


async def test_structured_output_is_repaired_once() -> None:
    provider = ScriptedProvider(
        "scripted",
        [
            text_result('{"label": "spam", "score": 99}'),
            text_result('```json\n{"label": "spam", "score": 9}\n```'),
        ],
    )
    manager = LLMManagerFactory(
        providers=[provider], configs=[LLMConfig(name="default", providers=("scripted",))]
    ).create_for_context(_ctx())
    verdict = await manager.complete_structured(_request("classify this mail"), Verdict)
    assert verdict == Verdict(label="spam", score=9)
    first, repair = provider.calls
    assert first.response_format == "json"
    assert first.response_schema == Verdict.model_json_schema()
    assert first.messages[0].role.value == "system" and "JSON Schema" in (
        first.messages[0].content or ""
    )
    assert repair.messages[-2].content == '{"label": "spam", "score": 99}'
    assert "score" in (repair.messages[-1].content or "")
    # The invalid first answer was not kept in the cache; asking again starts fresh.
    provider.enqueue(text_result('{"label": "ham", "score": 1}'))
    again = await manager.complete_structured(_request("classify this mail"), Verdict)
    assert again == Verdict(label="ham", score=1)


async def test_structured_output_fails_after_one_repair() -> None:
    provider = ScriptedProvider(
        "scripted", [text_result("not json at all"), text_result('{"label": 3}')]
    )
    manager = LLMManagerFactory(
        providers=[provider], configs=[LLMConfig(name="default", providers=("scripted",))]
    ).create_for_context(_ctx())
    with pytest.raises(StructuredOutputError) as caught:
        await manager.complete_structured(_request("classify"), Verdict)
    assert len(provider.calls) == 2
    assert any("label" in line for line in caught.value.errors)
    assert any("score" in line for line in caught.value.errors)


# --------------------------------------------------------------------------------------
# Fallback, cooldown, health
# --------------------------------------------------------------------------------------


def _chain_factory(
    clock: ManualClock, *providers: ScriptedProvider, threshold: int = 2
) -> LLMManagerFactory:
    return LLMManagerFactory(
        providers=providers,
        configs=[LLMConfig(name="default", providers=tuple(p.name for p in providers))],
        retry=RetryPolicy(max_attempts=1),
        cooldown=CooldownPolicy(failure_threshold=threshold, cooldown_seconds=60),
        clock=clock,
        sleep=clock.sleep,
    )


async def test_fallback_cooldown_and_half_open_probe() -> None:
    clock = ManualClock()
    down = ProviderTransientError("HTTP 500", provider="primary")
    primary = ScriptedProvider("primary", [down, down, down])
    backup = ScriptedProvider("backup", default=text_result("backup answer"))
    factory = _chain_factory(clock, primary, backup)
    manager = factory.create_for_context(_ctx())

    for text in ("a", "b"):
        assert (await manager.complete(_request(text))).provider == "backup"
    assert len(primary.calls) == 2  # threshold reached: the circuit opened
    health = await manager.health()
    assert health.status == "degraded"
    assert {p.name: p.state for p in health.providers}["primary"] is ProviderState.OPEN

    assert (await manager.complete(_request("c"))).provider == "backup"
    assert len(primary.calls) == 2  # skipped while cooling down

    clock.advance(61)  # half-open: one probe, which fails and reopens the circuit
    assert (await manager.complete(_request("d"))).provider == "backup"
    assert len(primary.calls) == 3
    assert {p.name: p.state for p in (await manager.health()).providers}[
        "primary"
    ] is ProviderState.OPEN

    clock.advance(61)  # the next probe succeeds and closes the circuit
    primary.enqueue(text_result("primary answer"))
    assert (await manager.complete(_request("e"))).provider == "primary"
    assert (await manager.health()).status == "ok"


async def test_every_provider_failing_is_unavailable_with_reasons() -> None:
    clock = ManualClock()
    first = ScriptedProvider("first", default=ProviderTransientError("HTTP 503", provider="first"))
    second = ScriptedProvider(
        "second", default=ProviderTransientError("timed out", provider="second")
    )
    manager = _chain_factory(clock, first, second, threshold=1).create_for_context(_ctx())
    with pytest.raises(ProviderUnavailableError, match="first: HTTP 503; second: timed out"):
        await manager.complete(_request("x"))
    assert (await manager.health()).status == "unavailable"
    with pytest.raises(ProviderUnavailableError, match="cooling down"):
        await manager.complete(_request("y"))
    assert (len(first.calls), len(second.calls)) == (1, 1)


async def test_a_hung_provider_attempt_times_out() -> None:
    class HangingProvider(ScriptedProvider):
        async def complete(self, call: ProviderCall) -> ProviderResult:
            self.calls.append(call)
            await asyncio.Event().wait()
            raise AssertionError("never set")

    hanging = HangingProvider("hanging")
    backup = ScriptedProvider("backup", default=text_result("rescued"))
    factory = LLMManagerFactory(
        providers=[hanging, backup],
        configs=[LLMConfig(name="default", providers=("hanging", "backup"), timeout_seconds=0.05)],
        retry=RetryPolicy(max_attempts=1),
    )
    completion = await factory.create_for_context(_ctx()).complete(_request("x"))
    assert completion.provider == "backup"
    assert len(hanging.calls) == 1


# --------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------


async def test_logs_carry_identity_and_no_prompt_text() -> None:
    ctx = _ctx()
    with structlog.testing.capture_logs() as logs:
        manager = _local_factory().create_for_context(ctx)
        await manager.complete(_request("my secret diary entry about Zanzibar"))
    [entry] = [item for item in logs if item["event"] == "llm.completion"]
    assert entry["user_id"] == ctx.user_id
    assert entry["run_id"] == ctx.run_id
    assert entry["provider"] == "local"
    assert "Zanzibar" not in repr(logs)


async def test_day_boundary_is_utc() -> None:
    clock = ManualClock(datetime(2030, 1, 1, 23, 30, tzinfo=UTC))
    factory = _budget_factory(clock, budget=1000)
    manager = factory.create_for_context(_ctx())
    await manager.complete(_request("late", use_cache=False))
    assert (await manager.usage()).budget.day.isoformat() == "2030-01-01"
    clock.advance(timedelta(minutes=31).total_seconds())
    assert (await manager.usage()).budget.used == 0


async def test_a_cached_answer_is_replayed_as_a_stream() -> None:
    manager = _local_factory().create_for_context(_ctx())
    notes_add = ToolSpec(
        name="notes.add", parameters={"type": "object", "properties": {"text": {"type": "string"}}}
    )
    request = _request("remember the milk; remember the eggs", tools=(notes_add,))
    first = await manager.complete(request)
    chunks = [chunk async for chunk in manager.stream(request)]
    final = chunks[-1].completion
    assert final is not None and final.cached
    assert final.tool_calls == first.tool_calls and len(first.tool_calls) == 2
    assert "".join(chunk.thinking for chunk in chunks) == first.reasoning
    arguments = {
        delta.index: delta.arguments_delta for chunk in chunks for delta in chunk.tool_calls
    }
    assert [json.loads(arguments[i]) for i in (0, 1)] == [c.arguments for c in first.tool_calls]
    assert (await manager.usage()).totals.cache_hits == 1


async def test_a_stream_abandoned_by_its_reader_settles_its_reservation() -> None:
    manager = _local_factory(daily_token_budget=10_000).create_for_context(_ctx())
    stream = manager.stream(_request("a reasonably long question to stream", use_cache=False))
    first = await anext(stream)
    assert first.thinking
    await stream.aclose()
    budget = (await manager.usage()).budget
    assert 0 < budget.used < 1024  # what was produced, not the reservation's ceiling
