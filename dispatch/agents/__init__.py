"""``dispatch.agents``: the AgentInstanceFactory and the agent loop.

:class:`AgentInstanceFactory` (configured once with the LLM, tool dispatcher, data and
event-sink factories) builds a fresh agent instance for every run; :class:`AgentRunner`
runs them with per-user and global concurrency limits, a run timeout, owner-checked
cancellation, persistence through //data and complete clean-up. Agent types: ``assistant``
(an LLM ↔ tools loop with a step limit) and ``notes`` (works on the user's notes by fixed
rules). The interface is in :mod:`dispatch.agents.api`; the gRPC adapters are
:mod:`dispatch.agents.grpc_server` and :mod:`dispatch.agents.grpc_client`.
"""

from __future__ import annotations

from dispatch.agents.api import (
    Agent,
    AgentConfigurationError,
    AgentError,
    AgentFactoryStats,
    AgentPermissionDeniedError,
    AgentResult,
    AgentRunnerStats,
    AgentService,
    AgentSettings,
    AgentUnavailableError,
    ErrorType,
    FactoryAlreadyConfiguredError,
    FactoryNotConfiguredError,
    InstanceListener,
    InvalidAgentCallerError,
    InvalidRunRequestError,
    LLMManagerProvider,
    MissingDependencyError,
    RunHandle,
    RunInfo,
    RunLimitExceededError,
    RunnerClosedError,
    RunNotFoundError,
    RunState,
    StepLimitExceededError,
    ThreadNotFoundError,
    UnknownAgentError,
)
from dispatch.agents.assistant import ASSISTANT_AGENT, AssistantAgent
from dispatch.agents.base import AgentDependencies, AgentType, BaseAgent
from dispatch.agents.events import AgentEvents, TerminalEvent
from dispatch.agents.factory import BUILTIN_AGENT_TYPES, AgentInstanceFactory
from dispatch.agents.notes import NOTES_AGENT, NotesAgent, parse_note_commands
from dispatch.agents.service import AgentRunner

__all__ = [
    "ASSISTANT_AGENT",
    "BUILTIN_AGENT_TYPES",
    "NOTES_AGENT",
    "Agent",
    "AgentConfigurationError",
    "AgentDependencies",
    "AgentError",
    "AgentEvents",
    "AgentFactoryStats",
    "AgentInstanceFactory",
    "AgentPermissionDeniedError",
    "AgentResult",
    "AgentRunner",
    "AgentRunnerStats",
    "AgentService",
    "AgentSettings",
    "AgentType",
    "AgentUnavailableError",
    "AssistantAgent",
    "BaseAgent",
    "ErrorType",
    "FactoryAlreadyConfiguredError",
    "FactoryNotConfiguredError",
    "InstanceListener",
    "InvalidAgentCallerError",
    "InvalidRunRequestError",
    "LLMManagerProvider",
    "MissingDependencyError",
    "NotesAgent",
    "RunHandle",
    "RunInfo",
    "RunLimitExceededError",
    "RunNotFoundError",
    "RunState",
    "RunnerClosedError",
    "StepLimitExceededError",
    "TerminalEvent",
    "ThreadNotFoundError",
    "UnknownAgentError",
    "parse_note_commands",
]
