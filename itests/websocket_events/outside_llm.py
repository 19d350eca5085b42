"""The outside LLM of scenarios that need a model to call chosen tools, or to keep a run
waiting: :class:`ScriptedLLM` answers over the real OpenAI-compatible wire protocol, from
:class:`~dispatch.llm.stub_server.ChatCompletionsStub` on a loopback port.

It is the one stand-in the integration tests allow (for the world outside the platform);
everything between it and the WebSocket client is the real platform, reached through the
real ``openai`` provider over HTTP.

A script is chosen by a *marker*, a unique word a scenario puts into the user's message:
the request's latest user message names the script, and the number of assistant turns
after it is the step. Each step answers with tool calls or a text; a step may be *held*
(the HTTP request waits until the scenario releases it), which keeps a run inside its
model call for as long as a scenario needs it there, without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue, SecretStr

from dispatch.llm.settings import LLMSettings
from dispatch.llm.stub_server import (
    ChatCompletionsStub,
    RecordedRequest,
    StubResponse,
    StubToolCall,
)

__all__ = ["Gate", "ScriptedLLM", "Step", "scripted_llm"]

# The openai provider's function names: our tool names with anything else as "_".
_FUNCTION_NAME_INVALID = re.compile(r"[^A-Za-z0-9_-]")
_ENTER_TIMEOUT = 20.0


class Gate:
    """Holds the model calls of a step until :meth:`open`; :attr:`entered` is set as soon
    as one call is waiting (or passed through an open gate)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self.entered.wait(), _ENTER_TIMEOUT)

    async def pass_through(self) -> None:
        self.entered.set()
        await self._open.wait()


@dataclass(frozen=True)
class Step:
    """One model answer: ``tool_calls`` as ``(tool name, arguments)``, or ``text``."""

    tool_calls: Sequence[tuple[str, Mapping[str, JsonValue]]] = ()
    text: str = "done"
    gate: Gate | None = None


@dataclass
class _Script:
    steps: list[Step]
    calls: int = 0


@dataclass
class ScriptedLLM:
    """Scripts by marker, served by a started :class:`ChatCompletionsStub`."""

    stub: ChatCompletionsStub
    _scripts: dict[str, _Script] = field(default_factory=dict)

    def script(self, marker: str, *steps: Step) -> None:
        """Answer conversations whose latest user message contains ``marker`` with
        ``steps`` (step ``n`` after ``n`` assistant turns; the last one repeats)."""
        if not steps:
            raise ValueError("a script needs at least one step")
        self._scripts[marker] = _Script(list(steps))

    def calls(self, marker: str) -> int:
        """How many model requests the script of ``marker`` has answered (or holds)."""
        return self._scripts[marker].calls

    def settings(self) -> LLMSettings:
        """LLM settings that send every model call of the platform to this stub."""
        return LLMSettings(
            providers=("openai",),
            openai_base_url=self.stub.base_url,
            openai_api_key=SecretStr("stub-key-for-tests"),
            retry_max_attempts=1,
            timeout_seconds=120.0,
        )

    async def handle(self, request: RecordedRequest) -> StubResponse:
        body: dict[str, Any] = request.json()
        messages: list[dict[str, Any]] = body["messages"]
        last_user = max(
            (index for index, message in enumerate(messages) if message["role"] == "user"),
            default=-1,
        )
        text = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
        step_number = sum(
            1 for message in messages[last_user + 1 :] if message["role"] == "assistant"
        )
        script = next((s for marker, s in self._scripts.items() if marker in text), None)
        if script is None:
            return StubResponse.error(500, "no script for this conversation")
        script.calls += 1
        step = script.steps[min(step_number, len(script.steps) - 1)]
        if step.gate is not None:
            await step.gate.pass_through()
        if not step.tool_calls or body.get("tool_choice") == "none":
            return StubResponse.completion(step.text)
        calls = [
            StubToolCall(
                id=f"call_{step_number}_{index}",
                name=_FUNCTION_NAME_INVALID.sub("_", name),
                arguments=json.dumps(arguments),
            )
            for index, (name, arguments) in enumerate(step.tool_calls)
        ]
        return StubResponse.completion(None, tool_calls=calls)


@asynccontextmanager
async def scripted_llm() -> AsyncIterator[ScriptedLLM]:
    """A started stub with an empty :class:`ScriptedLLM`; every held gate is opened and the
    stub stopped on exit."""
    llm: ScriptedLLM | None = None

    async def handler(request: RecordedRequest) -> StubResponse:
        assert llm is not None
        return await llm.handle(request)

    async with ChatCompletionsStub(handler=handler) as stub:
        llm = ScriptedLLM(stub)
        try:
            yield llm
        finally:
            for script in llm._scripts.values():
                for step in script.steps:
                    if step.gate is not None:
                        step.gate.open()
