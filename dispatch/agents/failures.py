"""How an exception that ends a run is reported: error type, message, recoverability.

The message goes to the run's client (``agent_error``) and into the run's record, so it
only ever comes from our own typed errors, whose messages are written for the caller.
Anything unexpected is reported as ``internal_error`` with a fixed message; its details
stay in the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.api import DataError
from dispatch.agents.api import AgentError, ErrorType, StepLimitExceededError
from dispatch.engine.api import EngineError
from dispatch.llm.api import LLMError
from dispatch.tools.api import ToolDispatchError

__all__ = ["RunFailure", "classify_failure"]

_RECOVERABLE_STATUSES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True, slots=True)
class RunFailure:
    error_type: ErrorType
    message: str
    recoverable: bool
    #: The stable code of the typed error behind it, when there is one.
    error_code: str | None = None


def classify_failure(exc: BaseException) -> RunFailure:
    """The report of ``exc`` ending a run (see the module docstring)."""
    if isinstance(exc, StepLimitExceededError):
        return RunFailure(ErrorType.STEP_LIMIT, exc.message, False, exc.error_code)
    if isinstance(exc, LLMError):
        return RunFailure(
            ErrorType.LLM_ERROR,
            exc.message,
            exc.grpc_status_name in _RECOVERABLE_STATUSES,
            exc.error_code,
        )
    if isinstance(exc, ToolDispatchError | EngineError):
        return RunFailure(
            ErrorType.TOOL_ERROR,
            exc.message,
            exc.grpc_status_name in _RECOVERABLE_STATUSES,
            exc.error_code,
        )
    if isinstance(exc, DataError):
        return RunFailure(
            ErrorType.INTERNAL_ERROR,
            "the run's data could not be read or written",
            exc.grpc_status_name in _RECOVERABLE_STATUSES,
            exc.error_code,
        )
    if isinstance(exc, AgentError):
        return RunFailure(
            ErrorType.INTERNAL_ERROR,
            exc.message,
            exc.grpc_status_name in _RECOVERABLE_STATUSES,
            exc.error_code,
        )
    return RunFailure(ErrorType.INTERNAL_ERROR, "the agent failed with an internal error", False)
