"""The ``assistant`` agent: an LLM ↔ tools loop with a step limit.

Each step asks the run's own LLM manager for a completion, offering the tools this caller
may use (as the dispatcher lists them), and emits ``agent_thinking`` with the model's
thinking for that step. When the model asks for tool calls, each one runs through the
run's dispatcher (which emits ``tool_executing`` / ``tool_completed``) and its result goes
back into the conversation as a ``tool`` message; when it answers in text, that is the
run's answer. The last allowed step offers no tools (``tool_choice="none"``), so a model
that keeps asking for tools is told to answer; one that still does not ends the run with
:class:`~dispatch.agents.api.StepLimitExceededError` (``agent_error`` "step_limit").

Tool failures are results the model sees and may react to; they do not end the run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

from dispatch.agents.api import AgentResult, StepLimitExceededError
from dispatch.agents.base import AgentDependencies, AgentType, BaseAgent
from dispatch.engine.api import ToolDefinition, ToolExecutionResult
from dispatch.llm.api import (
    MAX_TOOLS,
    ChatMessage,
    Completion,
    CompletionRequest,
    LLMManager,
    ToolSpec,
)
from dispatch.tools.api import ToolDispatcher
from dispatch.tools.sanitize import shorten

__all__ = ["ASSISTANT_AGENT", "SYSTEM_PROMPT", "AssistantAgent", "tool_message_content"]

SYSTEM_PROMPT = (
    "You are the assistant of one user. Use the offered tools to act on that user's own "
    "notes, threads and runs, to calculate and to tell the time; then answer briefly."
)
#: A tool result longer than this is cut before the model sees it.
MAX_TOOL_RESULT_CHARS = 16_000
_MAX_TOOL_DESCRIPTION = 4096


def tool_message_content(result: ToolExecutionResult) -> str:
    """What the model reads about one tool call: its status and result or error, as JSON."""
    if result.success:
        body: dict[str, object] = {"status": result.status.value, "result": result.result}
    else:
        body = {
            "status": result.status.value,
            "error_code": result.error_code,
            "error_message": result.error_message,
        }
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return shorten(text, MAX_TOOL_RESULT_CHARS)


@functools.lru_cache(maxsize=1024)
def _check_spec(name: str, description: str, parameters_json: str) -> None:
    """Validate a tool spec once per distinct definition (JSON Schema checks are costly).

    Only the verdict is cached; every run gets spec objects of its own.
    """
    ToolSpec(name=name, description=description, parameters=json.loads(parameters_json))


def _tool_spec(definition: ToolDefinition) -> ToolSpec:
    description = shorten(definition.description, _MAX_TOOL_DESCRIPTION)
    parameters_json = json.dumps(definition.input_schema, sort_keys=True)
    _check_spec(definition.name, description, parameters_json)
    return ToolSpec.model_construct(
        name=definition.name, description=description, parameters=json.loads(parameters_json)
    )


def _tool_specs(definitions: Sequence[ToolDefinition]) -> tuple[ToolSpec, ...]:
    return tuple(_tool_spec(definition) for definition in definitions[:MAX_TOOLS])


def _thought(completion: Completion, step: int) -> str:
    if completion.reasoning:
        return completion.reasoning
    if completion.tool_calls:
        names = ", ".join(call.name for call in completion.tool_calls)
        return f"Step {step}: calling {names}."
    return f"Step {step}: composing the answer."


class AssistantAgent(BaseAgent):
    """The LLM ↔ tools loop; see the module docstring."""

    def __init__(self, deps: AgentDependencies) -> None:
        super().__init__(deps)
        # Built for this instance's own context: its cache, budget and usage are the user's.
        self._llm: LLMManager = deps.llm.create_for_context(deps.caller.context)

    @property
    def llm(self) -> LLMManager:
        return self._llm

    async def work(self, message: str, dispatcher: ToolDispatcher) -> AgentResult:
        specs = _tool_specs(await dispatcher.list_tools())
        conversation: list[ChatMessage] = [
            ChatMessage.system(SYSTEM_PROMPT),
            ChatMessage.user(message),
        ]
        max_steps = self.settings.max_steps
        tool_calls = 0
        for step in range(1, max_steps + 1):
            last = step == max_steps
            completion = await self._llm.complete(
                CompletionRequest(
                    messages=tuple(conversation),
                    tools=specs,
                    tool_choice="none" if last or not specs else "auto",
                    config=self.settings.llm_config,
                )
            )
            await self.events.thinking(
                _thought(completion, step), step=step, message=f"Thinking (step {step})"
            )
            if not completion.tool_calls:
                return AgentResult(
                    answer=completion.content,
                    steps=step,
                    tool_calls=tool_calls,
                    details={"finish_reason": completion.finish_reason},
                )
            if last:
                break
            conversation.append(
                ChatMessage.assistant(completion.content or None, completion.tool_calls)
            )
            for call in completion.tool_calls:
                result = await dispatcher.execute_tool(
                    call.name, call.arguments, tool_call_id=call.id
                )
                tool_calls += 1
                conversation.append(
                    ChatMessage.tool(call.id, tool_message_content(result), name=call.name)
                )
        raise StepLimitExceededError(
            f"the assistant used all {max_steps} steps without reaching an answer"
        )


def _build(deps: AgentDependencies) -> AssistantAgent:
    return AssistantAgent(deps)


ASSISTANT_AGENT = AgentType(
    name="assistant",
    description="Answers with the help of an LLM that may call the user's tools.",
    build=_build,
)
