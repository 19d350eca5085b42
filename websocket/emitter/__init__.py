"""``websocket.emitter``: the per-request ``UserWebSocketEmitter``.

:class:`RequestEmitter` (one per request, from :class:`RequestEmitterFactory`) validates,
sanitises, numbers and buffers each event of its request's run and hands it to live
delivery (the router). :class:`MemoryReplayBuffer` and :class:`RedisReplayBuffer` number
events gaplessly per run and serve ``resume`` after a reconnect. The wire envelope is
:class:`EventEnvelope`; the interface and errors are in :mod:`websocket.emitter.api`.
"""

from websocket.emitter.api import (
    PAYLOAD_MODELS,
    WIRE_FIELDS,
    AgentCompletedPayload,
    AgentErrorPayload,
    AgentStartedPayload,
    AgentThinkingPayload,
    DeliveryFailedError,
    EmitterClosedError,
    EmitterError,
    EmitterFactory,
    EmitterStats,
    EventDelivery,
    EventDraft,
    EventEnvelope,
    EventOwnershipError,
    EventPayload,
    EventType,
    InvalidEventError,
    InvalidReplayRequestError,
    ProgressUpdatePayload,
    ReplayBuffer,
    ReplayNotFoundError,
    ReplayUnavailableError,
    RoutedEvent,
    ToolCompletedPayload,
    ToolExecutingPayload,
    UserWebSocketEmitter,
)
from websocket.emitter.emitter import RequestEmitter, RequestEmitterFactory
from websocket.emitter.replay import MemoryReplayBuffer, RedisReplayBuffer
from websocket.emitter.sanitize import PayloadSanitizer, SanitizerPolicy

__all__ = [
    "PAYLOAD_MODELS",
    "WIRE_FIELDS",
    "AgentCompletedPayload",
    "AgentErrorPayload",
    "AgentStartedPayload",
    "AgentThinkingPayload",
    "DeliveryFailedError",
    "EmitterClosedError",
    "EmitterError",
    "EmitterFactory",
    "EmitterStats",
    "EventDelivery",
    "EventDraft",
    "EventEnvelope",
    "EventOwnershipError",
    "EventPayload",
    "EventType",
    "InvalidEventError",
    "InvalidReplayRequestError",
    "MemoryReplayBuffer",
    "PayloadSanitizer",
    "ProgressUpdatePayload",
    "RedisReplayBuffer",
    "ReplayBuffer",
    "ReplayNotFoundError",
    "ReplayUnavailableError",
    "RequestEmitter",
    "RequestEmitterFactory",
    "RoutedEvent",
    "SanitizerPolicy",
    "ToolCompletedPayload",
    "ToolExecutingPayload",
    "UserWebSocketEmitter",
]
