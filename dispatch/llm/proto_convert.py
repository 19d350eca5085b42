"""Conversion between the API models and the ``ssot.llm.v1`` protobuf messages.

Shared by both gRPC adapters so the wire form is defined once. Incoming messages are
re-validated through the pydantic models: a malformed request becomes
:class:`~dispatch.llm.api.InvalidLLMRequestError` (``INVALID_ARGUMENT``), never a crash.

Errors travel as a gRPC status (the error's ``grpc_status_name``) plus trailing metadata:
``x-ssot-error-code`` (the stable code), and ``x-ssot-retry-after`` /
``x-ssot-resets-at`` when the error carries them; :func:`error_from_status` rebuilds the
same :class:`~dispatch.llm.api.LLMError` subclass on the client side.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from dispatch.llm import llm_pb2 as pb
from dispatch.llm.api import (
    BudgetStatus,
    Completion,
    CompletionRequest,
    ConfigUsage,
    InvalidLLMRequestError,
    InvalidServiceResponseError,
    LLMError,
    LLMHealth,
    ProviderRateLimitedError,
    ProviderStatus,
    StreamChunk,
    TokenBudgetExceededError,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    UsageReport,
    UsageTotals,
    error_class_for_code,
)

__all__ = [
    "ERROR_CODE_KEY",
    "RESETS_AT_KEY",
    "RETRY_AFTER_KEY",
    "chunk_from_proto",
    "chunk_to_proto",
    "completion_from_proto",
    "completion_to_proto",
    "error_from_status",
    "error_trailers",
    "health_from_proto",
    "health_to_proto",
    "request_from_proto",
    "request_to_proto",
    "usage_from_proto",
    "usage_to_proto",
]

ERROR_CODE_KEY = "x-ssot-error-code"
RETRY_AFTER_KEY = "x-ssot-retry-after"
RESETS_AT_KEY = "x-ssot-resets-at"


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def error_trailers(error: LLMError) -> tuple[tuple[str, str], ...]:
    trailers = [(ERROR_CODE_KEY, error.error_code)]
    if isinstance(error, ProviderRateLimitedError) and error.retry_after is not None:
        trailers.append((RETRY_AFTER_KEY, repr(float(error.retry_after))))
    if isinstance(error, TokenBudgetExceededError) and error.resets_at is not None:
        trailers.append((RESETS_AT_KEY, error.resets_at.isoformat()))
    return tuple(trailers)


def error_from_status(details: str, trailers: Mapping[str, str]) -> LLMError:
    """The client-side error for a failed call, by its trailing ``x-ssot-error-code``."""
    cls = error_class_for_code(trailers.get(ERROR_CODE_KEY, ""))
    if cls is ProviderRateLimitedError:
        retry_after: float | None = None
        try:
            retry_after = float(trailers[RETRY_AFTER_KEY])
        except (KeyError, ValueError):
            retry_after = None
        return ProviderRateLimitedError(details, retry_after=retry_after)
    if cls is TokenBudgetExceededError:
        resets_at: datetime | None = None
        try:
            resets_at = datetime.fromisoformat(trailers[RESETS_AT_KEY])
        except (KeyError, ValueError):
            resets_at = None
        return TokenBudgetExceededError(details, resets_at=resets_at)
    return cls(details)


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


def _tool_call_to_proto(call: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(
        id=call.id, name=call.name, arguments_json=json.dumps(call.arguments, ensure_ascii=False)
    )


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        raise ValueError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


def _tool_call_fields(call: pb.ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "name": call.name,
        "arguments": _json_object(call.arguments_json, "tool-call arguments"),
    }


def request_to_proto(request: CompletionRequest) -> pb.CompleteRequest:
    message = pb.CompleteRequest(
        messages=[
            pb.ChatMessage(
                role=item.role.value,
                content=item.content,
                tool_calls=[_tool_call_to_proto(call) for call in item.tool_calls],
                tool_call_id=item.tool_call_id,
                name=item.name,
            )
            for item in request.messages
        ],
        tools=[
            pb.ToolSpec(
                name=tool.name,
                description=tool.description,
                parameters_json=json.dumps(tool.parameters, ensure_ascii=False),
            )
            for tool in request.tools
        ],
        tool_choice=request.tool_choice,
        config=request.config,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        response_format=request.response_format,
        bypass_cache=not request.use_cache,
    )
    if request.response_schema is not None:
        message.response_schema_json = json.dumps(request.response_schema, ensure_ascii=False)
    return message


def _message_fields(item: pb.ChatMessage) -> dict[str, Any]:
    return {
        "role": item.role,
        "content": item.content if item.HasField("content") else None,
        "tool_calls": [_tool_call_fields(call) for call in item.tool_calls],
        "tool_call_id": item.tool_call_id if item.HasField("tool_call_id") else None,
        "name": item.name if item.HasField("name") else None,
    }


def request_from_proto(message: pb.CompleteRequest) -> CompletionRequest:
    """The validated request, or InvalidLLMRequestError saying what is wrong."""
    try:
        fields: dict[str, Any] = {
            "messages": [_message_fields(item) for item in message.messages],
            "tools": [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": _json_object(tool.parameters_json, "tool parameters"),
                }
                for tool in message.tools
            ],
            "tool_choice": message.tool_choice or "auto",
            "config": message.config or "default",
            "temperature": message.temperature if message.HasField("temperature") else None,
            "max_tokens": message.max_tokens if message.HasField("max_tokens") else None,
            "response_format": message.response_format or "text",
            "response_schema": (
                _json_object(message.response_schema_json, "response_schema")
                if message.HasField("response_schema_json")
                else None
            ),
            "use_cache": not message.bypass_cache,
        }
        return CompletionRequest.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(request)'}: {item['msg']}"
            for item in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise InvalidLLMRequestError(f"invalid completion request: {problems}") from None
    except ValueError as exc:
        raise InvalidLLMRequestError(f"invalid completion request: {exc}") from None


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def _usage_to_proto(usage: TokenUsage) -> pb.TokenUsage:
    return pb.TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def completion_to_proto(completion: Completion) -> pb.Completion:
    return pb.Completion(
        content=completion.content,
        tool_calls=[_tool_call_to_proto(call) for call in completion.tool_calls],
        finish_reason=completion.finish_reason,
        usage=_usage_to_proto(completion.usage),
        provider=completion.provider,
        model=completion.model,
        config=completion.config,
        cached=completion.cached,
        latency_ms=completion.latency_ms,
        reasoning=completion.reasoning,
    )


def _completion_fields(message: pb.Completion) -> dict[str, Any]:
    return {
        "content": message.content,
        "tool_calls": [_tool_call_fields(call) for call in message.tool_calls],
        "finish_reason": message.finish_reason,
        "usage": {
            "prompt_tokens": message.usage.prompt_tokens,
            "completion_tokens": message.usage.completion_tokens,
            "total_tokens": message.usage.total_tokens,
        },
        "provider": message.provider,
        "model": message.model,
        "config": message.config,
        "cached": message.cached,
        "latency_ms": message.latency_ms,
        "reasoning": message.reasoning if message.HasField("reasoning") else None,
    }


def completion_from_proto(message: pb.Completion) -> Completion:
    try:
        return Completion.model_validate(_completion_fields(message))
    except (ValidationError, ValueError):
        raise InvalidServiceResponseError("the LLM service sent an invalid completion") from None


def chunk_to_proto(chunk: StreamChunk) -> pb.StreamChunk:
    message = pb.StreamChunk(
        delta=chunk.delta,
        thinking=chunk.thinking,
        tool_calls=[
            pb.ToolCallDelta(
                index=delta.index,
                id=delta.id,
                name=delta.name,
                arguments_delta=delta.arguments_delta,
            )
            for delta in chunk.tool_calls
        ],
    )
    if chunk.completion is not None:
        message.completion.CopyFrom(completion_to_proto(chunk.completion))
    return message


def chunk_from_proto(message: pb.StreamChunk) -> StreamChunk:
    try:
        return StreamChunk(
            delta=message.delta,
            thinking=message.thinking,
            tool_calls=tuple(
                ToolCallDelta(
                    index=delta.index,
                    id=delta.id if delta.HasField("id") else None,
                    name=delta.name if delta.HasField("name") else None,
                    arguments_delta=delta.arguments_delta,
                )
                for delta in message.tool_calls
            ),
            completion=(
                Completion.model_validate(_completion_fields(message.completion))
                if message.HasField("completion")
                else None
            ),
        )
    except (ValidationError, ValueError):
        raise InvalidServiceResponseError("the LLM service sent an invalid stream chunk") from None


# --------------------------------------------------------------------------------------
# Usage and health
# --------------------------------------------------------------------------------------


def _totals_to_proto(totals: UsageTotals) -> pb.UsageTotals:
    return pb.UsageTotals(**totals.model_dump())


def usage_to_proto(report: UsageReport) -> pb.UsageReport:
    budget = report.budget
    return pb.UsageReport(
        user_id=report.user_id,
        totals=_totals_to_proto(report.totals),
        per_config=[
            pb.ConfigUsage(config=item.config, totals=_totals_to_proto(item.totals))
            for item in report.per_config
        ],
        budget=pb.BudgetStatus(
            day=budget.day.isoformat(),
            limit=budget.limit,
            used=budget.used,
            remaining=budget.remaining,
            resets_at=budget.resets_at.isoformat(),
        ),
    )


def _totals_fields(totals: pb.UsageTotals) -> dict[str, int]:
    return {
        name: getattr(totals, name)
        for name in (
            "requests",
            "cache_hits",
            "cache_misses",
            "failures",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        )
    }


def usage_from_proto(message: pb.UsageReport) -> UsageReport:
    try:
        budget = message.budget
        return UsageReport(
            user_id=message.user_id,
            totals=UsageTotals(**_totals_fields(message.totals)),
            per_config=tuple(
                ConfigUsage(config=item.config, totals=UsageTotals(**_totals_fields(item.totals)))
                for item in message.per_config
            ),
            budget=BudgetStatus(
                day=date.fromisoformat(budget.day),
                limit=budget.limit,
                used=budget.used,
                remaining=budget.remaining,
                resets_at=datetime.fromisoformat(budget.resets_at),
            ),
        )
    except (ValidationError, ValueError):
        raise InvalidServiceResponseError("the LLM service sent an invalid usage report") from None


def health_to_proto(health: LLMHealth) -> pb.HealthReport:
    return pb.HealthReport(
        status=health.status,
        providers=[
            pb.ProviderStatus(
                name=item.name,
                state=item.state.value,
                consecutive_failures=item.consecutive_failures,
                cooldown_remaining_seconds=item.cooldown_remaining_seconds,
            )
            for item in health.providers
        ],
        configs=list(health.configs),
    )


def _provider_statuses(items: Iterable[pb.ProviderStatus]) -> tuple[ProviderStatus, ...]:
    return tuple(
        ProviderStatus.model_validate(
            {
                "name": item.name,
                "state": item.state,
                "consecutive_failures": item.consecutive_failures,
                "cooldown_remaining_seconds": item.cooldown_remaining_seconds,
            }
        )
        for item in items
    )


def health_from_proto(message: pb.HealthReport) -> LLMHealth:
    try:
        return LLMHealth.model_validate(
            {
                "status": message.status,
                "providers": _provider_statuses(message.providers),
                "configs": tuple(message.configs),
            }
        )
    except (ValidationError, ValueError):
        raise InvalidServiceResponseError("the LLM service sent an invalid health report") from None
