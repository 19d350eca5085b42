"""The LLM manager: one per request context, built by :class:`LLMManagerFactory`.

The factory owns what is shared by every request of the process: the providers, their
circuits (cooldown), the response-cache store, the token-budget store and the usage
ledger. :meth:`LLMManagerFactory.create_for_context` binds them to one
``UserExecutionContext``; the resulting :class:`ContextLLMManager` reads and writes only
that context's user's cache entries, budget and counters, because every key it builds
starts with its own ``user_id`` and it offers no way to name another user.

One call goes: resolve the named configuration → look in the user's cache (unless
``use_cache=False``) → reserve the estimated tokens from the user's daily budget → walk
the configuration's provider chain (:mod:`dispatch.llm.failover`) → settle the budget to
the reported usage → record usage → store the answer in the user's cache. Every failure is
raised as an :class:`~dispatch.llm.api.LLMError`; nothing is turned into apology text.

Logs are bound with the context's ``user_id``, ``run_id`` and ``request_id`` and carry
counts, names and timings only: never prompt or answer text, never credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import structlog
from pydantic import BaseModel

from context import UserExecutionContext
from dispatch.llm.api import (
    Completion,
    CompletionRequest,
    InvalidLLMRequestError,
    LLMConfig,
    LLMHealth,
    ProviderState,
    StreamChunk,
    ToolCallDelta,
    UnknownConfigError,
    UsageReport,
)
from dispatch.llm.budget import InMemoryTokenBudgetStore, Reservation, TokenBudget, TokenBudgetStore
from dispatch.llm.cache import CacheKey, InMemoryResponseCache, ResponseCacheStore, request_digest
from dispatch.llm.clock import Clock, Sleep, SystemClock
from dispatch.llm.failover import ChainRun
from dispatch.llm.providers.base import Provider, ProviderCall, ProviderResult
from dispatch.llm.providers.local import LocalProvider
from dispatch.llm.providers.openai import OpenAIProvider
from dispatch.llm.resilience import CooldownPolicy, ProviderCircuits, RetryPolicy
from dispatch.llm.settings import LLMSettings, builtin_configs
from dispatch.llm.structured import complete_structured
from dispatch.llm.tokens import count_prompt_tokens, count_text_tokens
from dispatch.llm.usage import UsageLedger

__all__ = ["ContextLLMManager", "LLMManagerFactory"]

ModelT = TypeVar("ModelT", bound=BaseModel)

_log = structlog.get_logger(__name__)
_FACTORY_TOKEN = object()


class LLMManagerFactory:
    """Shared LLM infrastructure; hands out one :class:`ContextLLMManager` per context.

    ``providers`` are registered under their ``name``; every configuration's chain must
    name registered providers and a ``default`` configuration must exist. ``clock``,
    ``sleep`` and ``rng`` are injectable so tests control time and jitter.
    """

    def __init__(
        self,
        *,
        providers: Iterable[Provider] | None = None,
        configs: Iterable[LLMConfig] | None = None,
        cache: ResponseCacheStore | None = None,
        budget_store: TokenBudgetStore | None = None,
        daily_token_budget: int = 1_000_000,
        user_token_budgets: Mapping[str, int] | None = None,
        retry: RetryPolicy | None = None,
        cooldown: CooldownPolicy | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        provider_list = list(providers) if providers is not None else [LocalProvider()]
        self._providers: dict[str, Provider] = {}
        for provider in provider_list:
            if provider.name in self._providers:
                raise ValueError(f"two providers are registered as {provider.name!r}")
            self._providers[provider.name] = provider
        config_list = list(configs) if configs is not None else list(builtin_configs().values())
        self._configs: dict[str, LLMConfig] = {}
        for config in config_list:
            if config.name in self._configs:
                raise ValueError(f"two configurations are named {config.name!r}")
            missing = [name for name in config.providers if name not in self._providers]
            if missing:
                raise ValueError(
                    f"configuration {config.name!r} names unregistered providers: {missing}"
                )
            self._configs[config.name] = config
        if "default" not in self._configs:
            raise ValueError("a 'default' configuration is required")
        self._cache: ResponseCacheStore = cache or InMemoryResponseCache(clock=self._clock)
        self._budget = TokenBudget(
            budget_store or InMemoryTokenBudgetStore(),
            daily_limit=daily_token_budget,
            user_limits=user_token_budgets,
            clock=self._clock,
        )
        self._ledger = UsageLedger()
        self._retry = retry or RetryPolicy()
        self._circuits = ProviderCircuits(cooldown, self._clock)
        self._sleep: Sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()  # noqa: S311 - retry jitter, not cryptography

    @classmethod
    def from_settings(
        cls,
        settings: LLMSettings | None = None,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> LLMManagerFactory:
        """The factory a deployment runs: providers, configurations, stores and policies
        from :class:`~dispatch.llm.settings.LLMSettings` (environment ``SSOT_LLM_*``)."""
        settings = settings or LLMSettings()
        clock = clock or SystemClock()
        providers: list[Provider] = [LocalProvider()]
        if settings.openai_base_url:
            providers.append(
                OpenAIProvider(
                    base_url=settings.openai_base_url,
                    api_key=settings.openai_api_key,
                    default_model=settings.openai_model,
                    transport=transport,
                    clock=clock,
                )
            )
        configs = builtin_configs(
            settings.providers, model=settings.model, timeout_seconds=settings.timeout_seconds
        )
        return cls(
            providers=providers,
            configs=configs.values(),
            cache=InMemoryResponseCache(
                ttl_seconds=settings.cache_ttl_seconds,
                max_entries=settings.cache_max_entries,
                max_entries_per_user=settings.cache_max_entries_per_user,
                clock=clock,
            ),
            daily_token_budget=settings.daily_token_budget,
            retry=RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                base_delay_seconds=settings.retry_base_delay_seconds,
                max_delay_seconds=settings.retry_max_delay_seconds,
                max_retry_after_seconds=settings.retry_max_retry_after_seconds,
            ),
            cooldown=CooldownPolicy(
                failure_threshold=settings.cooldown_failure_threshold,
                cooldown_seconds=settings.cooldown_seconds,
            ),
            clock=clock,
            sleep=sleep,
        )

    def create_for_context(self, ctx: UserExecutionContext) -> ContextLLMManager:
        """The manager for one request of one user."""
        if not isinstance(ctx, UserExecutionContext):
            raise TypeError(
                f"create_for_context needs a UserExecutionContext, got {type(ctx).__name__}"
            )
        return ContextLLMManager(self, ctx, _token=_FACTORY_TOKEN)

    @property
    def config_names(self) -> tuple[str, ...]:
        return tuple(self._configs)

    def config(self, name: str) -> LLMConfig:
        config = self._configs.get(name)
        if config is None:
            known = ", ".join(sorted(self._configs))
            raise UnknownConfigError(f"unknown LLM configuration {name[:64]!r} (known: {known})")
        return config

    def health(self) -> LLMHealth:
        statuses = tuple(self._circuits.status(name) for name in self._providers)
        if all(status.state is ProviderState.CLOSED for status in statuses):
            overall = "ok"
        elif all(
            any(self._circuits.usable(name) for name in config.providers)
            for config in self._configs.values()
        ):
            overall = "degraded"
        else:
            overall = "unavailable"
        return LLMHealth(status=overall, providers=statuses, configs=tuple(self._configs))

    async def aclose(self) -> None:
        """Close every provider (HTTP connection pools)."""
        for provider in self._providers.values():
            await provider.aclose()

    def _chain(self, config: LLMConfig, log: Any) -> ChainRun:
        return ChainRun(
            config_name=config.name,
            providers=[self._providers[name] for name in config.providers],
            circuits=self._circuits,
            retry=self._retry,
            sleep=self._sleep,
            rng=self._rng,
            log=log,
        )


@dataclass(frozen=True, slots=True)
class _Prepared:
    config: LLMConfig
    key: CacheKey
    estimate: int
    prompt_tokens: int
    call_for: Callable[[Provider], ProviderCall]


def _replay(completion: Completion) -> list[StreamChunk]:
    """A cached completion as a stream."""
    chunks: list[StreamChunk] = []
    if completion.reasoning:
        chunks.append(StreamChunk(thinking=completion.reasoning))
    if completion.content:
        chunks.append(StreamChunk(delta=completion.content))
    if completion.tool_calls:
        chunks.append(
            StreamChunk(
                tool_calls=tuple(
                    ToolCallDelta(
                        index=index,
                        id=call.id,
                        name=call.name,
                        arguments_delta=json.dumps(call.arguments, ensure_ascii=False),
                    )
                    for index, call in enumerate(completion.tool_calls)
                )
            )
        )
    chunks.append(StreamChunk(completion=completion))
    return chunks


class ContextLLMManager:
    """:class:`~dispatch.llm.api.LLMManager` for one context. Built only by
    :meth:`LLMManagerFactory.create_for_context`; direct construction raises TypeError."""

    __slots__ = ("_context", "_factory", "_log")

    def __init__(
        self, factory: LLMManagerFactory, ctx: UserExecutionContext, *, _token: object = None
    ) -> None:
        if _token is not _FACTORY_TOKEN:
            raise TypeError("build an LLM manager with LLMManagerFactory.create_for_context(ctx)")
        self._factory = factory
        self._context = ctx
        self._log = _log.bind(user_id=ctx.user_id, run_id=ctx.run_id, request_id=ctx.request_id)

    def __repr__(self) -> str:
        return (
            f"ContextLLMManager(user_id={self._context.user_id!r}, run_id={self._context.run_id!r})"
        )

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    # -- preparation ---------------------------------------------------------------------

    def _prepare(self, request: CompletionRequest) -> _Prepared:
        config = self._factory.config(request.config)
        if request.max_tokens is not None and request.max_tokens > config.max_tokens:
            raise InvalidLLMRequestError(
                f"max_tokens {request.max_tokens} exceeds the {config.max_tokens} allowed by "
                f"configuration '{config.name}'"
            )
        max_tokens = request.max_tokens or config.max_tokens
        temperature = config.temperature if request.temperature is None else request.temperature

        def call_for(provider: Provider) -> ProviderCall:
            return ProviderCall(
                messages=request.messages,
                tools=request.tools,
                tool_choice=request.tool_choice,
                model=config.model_for(provider.name),
                temperature=temperature,
                max_tokens=max_tokens,
                timeout_seconds=config.timeout_seconds,
                response_format=request.response_format,
                response_schema=request.response_schema,
            )

        digest = request_digest(
            {
                "messages": [message.model_dump(mode="json") for message in request.messages],
                "tools": [tool.model_dump(mode="json") for tool in request.tools],
                "tool_choice": request.tool_choice,
                "response_format": request.response_format,
                "response_schema": request.response_schema,
                "temperature": temperature,
                "max_tokens": max_tokens,
                "chain": [[name, config.model_for(name)] for name in config.providers],
            }
        )
        prompt_tokens = count_prompt_tokens(request.messages, request.tools)
        return _Prepared(
            config=config,
            key=CacheKey(self._context.user_id, config.name, digest),
            estimate=prompt_tokens + max_tokens,
            prompt_tokens=prompt_tokens,
            call_for=call_for,
        )

    def _elapsed_ms(self, started: float) -> float:
        return max(0.0, (self._factory._clock.monotonic() - started) * 1000.0)

    async def _cached(self, prepared: _Prepared, request: CompletionRequest) -> Completion | None:
        if not request.use_cache:
            return None
        return await self._factory._cache.get(prepared.key)

    def _finish(
        self,
        prepared: _Prepared,
        provider: Provider,
        result: ProviderResult,
        started: float,
    ) -> Completion:
        return Completion(
            content=result.content,
            tool_calls=result.tool_calls,
            finish_reason=result.finish_reason,
            usage=result.usage,
            provider=provider.name,
            model=result.model,
            config=prepared.config.name,
            cached=False,
            latency_ms=self._elapsed_ms(started),
            reasoning=result.reasoning,
        )

    async def _record_success(
        self, prepared: _Prepared, request: CompletionRequest, completion: Completion
    ) -> None:
        self._factory._ledger.record(
            self._context.user_id,
            prepared.config.name,
            cache_hit=False if request.use_cache else None,
            usage=completion.usage,
        )
        if request.use_cache:
            await self._factory._cache.put(prepared.key, completion)
        self._log.info(
            "llm.completion",
            config=prepared.config.name,
            provider=completion.provider,
            model=completion.model,
            cached=False,
            finish_reason=completion.finish_reason,
            tool_calls=len(completion.tool_calls),
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            latency_ms=round(completion.latency_ms, 1),
        )

    def _record_hit(self, prepared: _Prepared, completion: Completion) -> None:
        self._factory._ledger.record(self._context.user_id, prepared.config.name, cache_hit=True)
        self._log.info(
            "llm.completion",
            config=prepared.config.name,
            provider=completion.provider,
            model=completion.model,
            cached=True,
        )

    def _record_failure(
        self, prepared: _Prepared, request: CompletionRequest, error: BaseException
    ) -> None:
        self._factory._ledger.record(
            self._context.user_id,
            prepared.config.name,
            cache_hit=False if request.use_cache else None,
            failed=True,
        )
        self._log.warning(
            "llm.completion_failed",
            config=prepared.config.name,
            error_type=type(error).__name__,
            error_code=getattr(error, "error_code", None),
        )

    async def _reserve(self, prepared: _Prepared, request: CompletionRequest) -> Reservation:
        try:
            return await self._factory._budget.reserve(self._context.user_id, prepared.estimate)
        except BaseException as exc:
            self._record_failure(prepared, request, exc)
            raise

    # -- the interface -------------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        prepared = self._prepare(request)
        started = self._factory._clock.monotonic()
        hit = await self._cached(prepared, request)
        if hit is not None:
            self._record_hit(prepared, hit)
            return hit.model_copy(update={"cached": True, "latency_ms": self._elapsed_ms(started)})
        reservation = await self._reserve(prepared, request)
        try:
            chain = self._factory._chain(prepared.config, self._log)
            provider, result = await chain.complete(prepared.call_for)
        except BaseException as exc:
            await self._factory._budget.settle(reservation, 0)
            self._record_failure(prepared, request, exc)
            raise
        completion = self._finish(prepared, provider, result, started)
        await self._factory._budget.settle(reservation, completion.usage.total_tokens)
        await self._record_success(prepared, request, completion)
        return completion

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        prepared = self._prepare(request)
        started = self._factory._clock.monotonic()
        hit = await self._cached(prepared, request)
        if hit is not None:
            self._record_hit(prepared, hit)
            replayed = hit.model_copy(
                update={"cached": True, "latency_ms": self._elapsed_ms(started)}
            )
            for chunk in _replay(replayed):
                yield chunk
            return
        reservation = await self._reserve(prepared, request)
        produced: list[str] = []
        settled = False
        try:
            chain = self._factory._chain(prepared.config, self._log)
            async with contextlib.aclosing(chain.stream(prepared.call_for)) as items:
                async for provider, item in items:
                    if isinstance(item, ProviderResult):
                        completion = self._finish(prepared, provider, item, started)
                        await self._factory._budget.settle(
                            reservation, completion.usage.total_tokens
                        )
                        settled = True
                        await self._record_success(prepared, request, completion)
                        yield StreamChunk(completion=completion)
                    else:
                        produced.append(item.delta)
                        produced.extend(delta.arguments_delta for delta in item.tool_calls)
                        yield item
        except GeneratorExit:
            raise
        except BaseException as exc:
            if not settled:
                self._record_failure(prepared, request, exc)
            raise
        finally:
            if not settled:
                # Charge what was visibly produced; nothing if the stream never started.
                charge = 0
                if produced:
                    charge = prepared.prompt_tokens + count_text_tokens("".join(produced))
                await self._factory._budget.settle(reservation, charge)

    async def complete_structured(self, request: CompletionRequest, model: type[ModelT]) -> ModelT:
        async def discard(rejected: CompletionRequest) -> None:
            await self._factory._cache.delete(self._prepare(rejected).key)

        return await complete_structured(self.complete, request, model, discard=discard)

    async def usage(self) -> UsageReport:
        user_id = self._context.user_id
        return UsageReport(
            user_id=user_id,
            totals=self._factory._ledger.totals(user_id),
            per_config=self._factory._ledger.per_config(user_id),
            budget=await self._factory._budget.status(user_id),
        )

    async def health(self) -> LLMHealth:
        return self._factory.health()

    async def clear_cache(self) -> int:
        """Forget this user's cached completions (nobody else's); return how many."""
        return await self._factory._cache.clear_user(self._context.user_id)

    async def cached_entries(self) -> int:
        """How many live cache entries this user has."""
        return await self._factory._cache.count_user(self._context.user_id)
