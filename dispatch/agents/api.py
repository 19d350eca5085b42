"""The typed interface of the agents package: Protocols, models, settings and errors.

Callers depend on :class:`AgentService`: start a run of a named agent for a verified
caller, cancel it, read it back. The in-process implementation is
:class:`dispatch.agents.service.AgentRunner`; :class:`dispatch.agents.grpc_client.GrpcAgentClient`
implements the same Protocol over gRPC and also streams the run's events.

An :class:`Agent` is one fresh instance per run, built by
:class:`dispatch.agents.factory.AgentInstanceFactory` and never shared or cached.

Every error this package raises on purpose is an :class:`AgentError` subclass with a stable
``error_code`` and the name of the ``grpc.StatusCode`` member it maps to
(``grpc_status_name``), so this module needs no gRPC import. What goes wrong *inside* a run
(a model failure, the step limit, a timeout, a cancellation) does not raise to the caller
of :meth:`AgentService.start_run`: it ends the run with exactly one ``agent_error`` event
and is recorded with the run (:class:`RunInfo`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic_settings import BaseSettings, SettingsConfigDict

from context.api import UserExecutionContext
from data.api import MAX_CONTENT_LENGTH
from dispatch.engine.api import ToolCaller
from dispatch.llm.api import LLMManager

if TYPE_CHECKING:
    from dispatch.agents.events import AgentEvents

__all__ = [
    "AGENT_NAME_PATTERN",
    "Agent",
    "AgentConfigurationError",
    "AgentError",
    "AgentFactoryStats",
    "AgentPermissionDeniedError",
    "AgentResult",
    "AgentRunnerStats",
    "AgentService",
    "AgentSettings",
    "AgentUnavailableError",
    "ErrorType",
    "FactoryAlreadyConfiguredError",
    "FactoryNotConfiguredError",
    "InstanceListener",
    "InvalidAgentCallerError",
    "InvalidRunRequestError",
    "LLMManagerProvider",
    "MissingDependencyError",
    "RunHandle",
    "RunInfo",
    "RunLimitExceededError",
    "RunNotFoundError",
    "RunState",
    "RunnerClosedError",
    "StepLimitExceededError",
    "ThreadNotFoundError",
    "UnknownAgentError",
    "error_from_code",
    "is_valid_agent_type_name",
]

#: Agent type names: lowercase words joined by ``_`` (``assistant``, ``notes``).
AGENT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
_AGENT_NAME = re.compile(AGENT_NAME_PATTERN)


def is_valid_agent_type_name(value: object) -> bool:
    """Whether ``value`` is a well-formed agent type name (never raises)."""
    return isinstance(value, str) and _AGENT_NAME.fullmatch(value) is not None


# -- errors --------------------------------------------------------------------------------


class AgentError(Exception):
    """Base of every error this package raises on purpose.

    ``error_code`` is stable and travels over gRPC in the trailing metadata entry
    ``x-ssot-error-code``; messages never name another user or another user's run.
    """

    error_code: ClassVar[str] = "AGENT_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class AgentConfigurationError(AgentError):
    """The agent factory is not set up to build agents."""

    error_code: ClassVar[str] = "AGENT_FACTORY_MISCONFIGURED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class MissingDependencyError(AgentConfigurationError):
    """``configure`` was given no (or an unusable) dependency; ``dependency`` names it."""

    error_code: ClassVar[str] = "AGENT_DEPENDENCY_MISSING"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, dependency: str = "") -> None:
        super().__init__(message)
        self.dependency = dependency


class FactoryNotConfiguredError(AgentConfigurationError):
    """An agent was requested before the factory was configured."""

    error_code: ClassVar[str] = "AGENT_FACTORY_NOT_CONFIGURED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class FactoryAlreadyConfiguredError(AgentConfigurationError):
    """``configure`` was called a second time; a factory is configured exactly once."""

    error_code: ClassVar[str] = "AGENT_FACTORY_ALREADY_CONFIGURED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class UnknownAgentError(AgentError):
    """No agent type has that name."""

    error_code: ClassVar[str] = "AGENT_NOT_FOUND"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class InvalidRunRequestError(AgentError):
    """The run request is malformed (empty or oversized message, malformed thread ID)."""

    error_code: ClassVar[str] = "INVALID_RUN_REQUEST"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class InvalidAgentCallerError(AgentError):
    """The caller is not a verified user (no ToolCaller, or no verified token over gRPC)."""

    error_code: ClassVar[str] = "INVALID_AGENT_CALLER"
    grpc_status_name: ClassVar[str] = "UNAUTHENTICATED"


class AgentPermissionDeniedError(AgentError):
    """The caller is verified but may not do this (a request context of another user)."""

    error_code: ClassVar[str] = "AGENT_PERMISSION_DENIED"
    grpc_status_name: ClassVar[str] = "PERMISSION_DENIED"


class RunNotFoundError(AgentError):
    """The caller has no run with that ID (said alike for another user's run)."""

    error_code: ClassVar[str] = "RUN_NOT_FOUND"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class ThreadNotFoundError(AgentError):
    """The caller has no thread with that ID (said alike for another user's thread)."""

    error_code: ClassVar[str] = "THREAD_NOT_FOUND"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class RunLimitExceededError(AgentError):
    """Too many runs at once: the caller's own (``scope == "user"``) or the whole
    service's (``scope == "global"``). Other users are unaffected by a user's limit."""

    error_code: ClassVar[str] = "RUN_LIMIT_EXCEEDED"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, scope: str = "user") -> None:
        super().__init__(message)
        self.scope = scope


class AgentUnavailableError(AgentError):
    """A dependency (data, LLM, tools) cannot serve the request right now; retry later."""

    error_code: ClassVar[str] = "AGENT_SERVICE_UNAVAILABLE"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class RunnerClosedError(AgentUnavailableError):
    """The runner is shut down; it starts no more runs."""

    error_code: ClassVar[str] = "AGENT_RUNNER_CLOSED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class StepLimitExceededError(AgentError):
    """An agent loop used all its steps without reaching an answer (ends the run)."""

    error_code: ClassVar[str] = "AGENT_STEP_LIMIT"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"


_ERROR_CLASSES: tuple[type[AgentError], ...] = (
    AgentError,
    AgentConfigurationError,
    MissingDependencyError,
    FactoryNotConfiguredError,
    FactoryAlreadyConfiguredError,
    UnknownAgentError,
    InvalidRunRequestError,
    InvalidAgentCallerError,
    AgentPermissionDeniedError,
    RunNotFoundError,
    ThreadNotFoundError,
    RunLimitExceededError,
    AgentUnavailableError,
    RunnerClosedError,
    StepLimitExceededError,
)
_ERROR_BY_CODE = {cls.error_code: cls for cls in _ERROR_CLASSES}


def error_from_code(code: str, message: str) -> AgentError:
    """The typed error for a code received over the wire (the base class if unknown)."""
    return _ERROR_BY_CODE.get(code, AgentError)(message)


# -- settings ------------------------------------------------------------------------------


class AgentSettings(BaseSettings):
    """Limits and defaults of agents and runs (environment ``SSOT_AGENTS_*``)."""

    model_config = SettingsConfigDict(env_prefix="SSOT_AGENTS_", frozen=True)

    #: Concurrent runs one user may have; past it a new run is refused at once.
    max_runs_per_user: int = Field(default=3, ge=1, le=1000)
    #: Concurrent runs of the whole runner.
    max_runs_total: int = Field(default=200, ge=1, le=100_000)
    #: A run still going after this long ends with an ``agent_error`` of type "timeout".
    run_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    #: LLM round trips the assistant may make in one run.
    max_steps: int = Field(default=6, ge=1, le=50)
    #: The longest user message a run accepts (never more than a stored message may hold).
    max_message_chars: int = Field(default=32_000, ge=1, le=MAX_CONTENT_LENGTH)
    #: The LLM configuration agents ask for.
    llm_config: str = Field(default="default", min_length=1, max_length=64)


# -- models --------------------------------------------------------------------------------

_Frozen = ConfigDict(frozen=True, extra="forbid")


class RunState(enum.StrEnum):
    """Where a run is. ``timed_out`` is a failed run whose error type is "timeout"."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self not in (RunState.PENDING, RunState.RUNNING)


class ErrorType(enum.StrEnum):
    """``error_type`` values of ``agent_error`` events and of failed runs."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    STEP_LIMIT = "step_limit"
    LLM_ERROR = "llm_error"
    TOOL_ERROR = "tool_error"
    INTERNAL_ERROR = "internal_error"


class RunHandle(BaseModel):
    """What starting a run gives back: the IDs the run's events will carry."""

    model_config = _Frozen

    run_id: str
    thread_id: str
    agent_name: str


class RunInfo(BaseModel):
    """A run as recorded: state, timings, the answer or the error."""

    model_config = _Frozen

    run_id: str
    thread_id: str
    agent_name: str
    state: RunState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None


class AgentResult(BaseModel):
    """What an agent's run produced."""

    model_config = _Frozen

    answer: str
    steps: int = Field(ge=0)
    tool_calls: int = Field(ge=0)
    details: dict[str, JsonValue] = Field(default_factory=dict)


class AgentFactoryStats(BaseModel):
    """Counters of an agent factory; nothing about any single user."""

    model_config = _Frozen

    configured: bool
    agent_types: tuple[str, ...]
    instances_created: int
    instances_by_type: dict[str, int]
    #: Instances still referenced somewhere (running, or held by a caller).
    live_instances: int


class AgentRunnerStats(BaseModel):
    """A snapshot of a runner's runs and slots."""

    model_config = _Frozen

    active_runs: int
    active_runs_per_user: dict[str, int]
    max_runs_per_user: int
    max_runs_total: int
    started: int
    refused_user_limit: int
    refused_global_limit: int
    finished_by_state: dict[str, int]
    closed: bool


# -- Protocols -----------------------------------------------------------------------------


@runtime_checkable
class Agent(Protocol):
    """One agent instance: one run of one user. Never shared, never reused."""

    @property
    def name(self) -> str: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def context(self) -> UserExecutionContext: ...

    @property
    def events(self) -> AgentEvents: ...

    async def run(self, message: str) -> AgentResult:
        """Answer ``message``: emits ``agent_started`` … ``agent_completed``, or ends with
        ``agent_error`` and raises."""
        ...


#: Called with every agent instance a factory creates (audits, metrics, tests).
InstanceListener = Callable[[Agent], None]


class LLMManagerProvider(Protocol):
    """Builds the LLM manager of one request (``dispatch.llm.LLMManagerFactory`` does)."""

    def create_for_context(self, ctx: UserExecutionContext) -> LLMManager: ...


@runtime_checkable
class AgentService(Protocol):
    """Runs agents for verified callers.

    Implemented in-process by ``dispatch.agents.service.AgentRunner`` and over gRPC by
    ``dispatch.agents.grpc_client.GrpcAgentClient``. Over gRPC the server takes the caller
    from the verified token; ``caller`` only tells the client which request it acts for.
    """

    async def start_run(
        self,
        caller: ToolCaller,
        agent_name: str,
        message: str,
        *,
        thread_id: str | None = None,
    ) -> RunHandle:
        """Start a run in the background and return its IDs at once.

        Raises :class:`UnknownAgentError`, :class:`InvalidRunRequestError`,
        :class:`ThreadNotFoundError`, :class:`RunLimitExceededError` (immediately, never
        queued) or :class:`AgentUnavailableError`.
        """
        ...

    async def cancel_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        """Cancel one of the caller's runs and return it once it has ended (an already
        finished run is returned as it is). Another user's run is :class:`RunNotFoundError`."""
        ...

    async def get_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        """One of the caller's runs; :class:`RunNotFoundError` for anyone else's."""
        ...
