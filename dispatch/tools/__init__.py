"""``dispatch.tools``: the UnifiedToolDispatcher, request-scoped front door for tool calls.

:class:`ToolDispatcherFactory` builds one :class:`UnifiedToolDispatcher` per request for one
verified caller (at most 10 live per user); every tool call it makes through the
:class:`~dispatch.engine.api.ToolExecutionEngine` emits exactly one ``tool_executing`` and
one ``tool_completed`` event through the request's :class:`RunEventSink`, with or without a
live WebSocket. :class:`BufferingEventSink` keeps a run's events in memory, numbered
gaplessly. The interface is in :mod:`dispatch.tools.api`.
"""

from __future__ import annotations

from dispatch.tools.api import (
    DEFAULT_DISPATCHER_AGENT_NAME,
    MAX_DISPATCHERS_PER_USER,
    PAYLOAD_MODELS,
    AgentCompletedPayload,
    AgentErrorPayload,
    AgentStartedPayload,
    AgentThinkingPayload,
    ClosableEventSink,
    DispatcherClosedError,
    DispatcherConstructionError,
    DispatcherFactoryClosedError,
    DispatcherFactoryStats,
    DispatcherLimitExceededError,
    DispatcherMetrics,
    EventPayload,
    EventSinkFactory,
    EventType,
    InvalidDispatcherRequestError,
    ProgressUpdatePayload,
    RunEventEnvelope,
    RunEventSink,
    ToolCompletedPayload,
    ToolDispatcher,
    ToolDispatcherProvider,
    ToolDispatchError,
    ToolExecutingPayload,
    format_timestamp,
    is_valid_agent_name,
)
from dispatch.tools.emit import emit_payload, emit_to_completion
from dispatch.tools.sanitize import sanitize_tool_input, summarize_result
from dispatch.tools.service import ToolDispatcherFactory, UnifiedToolDispatcher
from dispatch.tools.sinks import (
    BufferingEventSink,
    BufferingSinkFactory,
    FanOutEventSink,
    close_sink,
)

__all__ = [
    "DEFAULT_DISPATCHER_AGENT_NAME",
    "MAX_DISPATCHERS_PER_USER",
    "PAYLOAD_MODELS",
    "AgentCompletedPayload",
    "AgentErrorPayload",
    "AgentStartedPayload",
    "AgentThinkingPayload",
    "BufferingEventSink",
    "BufferingSinkFactory",
    "ClosableEventSink",
    "DispatcherClosedError",
    "DispatcherConstructionError",
    "DispatcherFactoryClosedError",
    "DispatcherFactoryStats",
    "DispatcherLimitExceededError",
    "DispatcherMetrics",
    "EventPayload",
    "EventSinkFactory",
    "EventType",
    "FanOutEventSink",
    "InvalidDispatcherRequestError",
    "ProgressUpdatePayload",
    "RunEventEnvelope",
    "RunEventSink",
    "ToolCompletedPayload",
    "ToolDispatchError",
    "ToolDispatcher",
    "ToolDispatcherFactory",
    "ToolDispatcherProvider",
    "ToolExecutingPayload",
    "UnifiedToolDispatcher",
    "close_sink",
    "emit_payload",
    "emit_to_completion",
    "format_timestamp",
    "is_valid_agent_name",
    "sanitize_tool_input",
    "summarize_result",
]
