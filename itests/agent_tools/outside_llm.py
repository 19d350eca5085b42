"""The outside LLM for the scenarios: loopback chat-completions servers and the LLM
manager factories that reach them.

The only stand-in the integration tests allow is
:class:`~dispatch.llm.stub_server.ChatCompletionsStub`, a loopback server speaking the
OpenAI-compatible wire protocol; the real ``openai`` provider talks to it over HTTP, and
the real :class:`~dispatch.llm.manager.LLMManagerFactory` (cache, budget, usage, retries,
failover) runs around that provider.

* :class:`OutsideModel` - one stub whose answers a scenario decides per request
  (:data:`Answer`), with a gate: requests whose last user message contains the trigger
  word wait until :meth:`OutsideModel.release` (a model that hangs), and
  :meth:`OutsideModel.wait_held` awaits the arrival of such requests instead of sleeping.
* :func:`stub_llm_factory` - an LLM manager factory whose ``default`` configuration walks
  named stubs (and optionally the offline ``local`` provider) in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from dispatch.llm.api import LLMConfig
from dispatch.llm.manager import LLMManagerFactory
from dispatch.llm.providers.base import Provider
from dispatch.llm.providers.local import LocalProvider
from dispatch.llm.providers.openai import OpenAIProvider
from dispatch.llm.resilience import CooldownPolicy, RetryPolicy
from dispatch.llm.stub_server import (
    ChatCompletionsStub,
    RecordedRequest,
    StubResponse,
    StubToolCall,
)

__all__ = [
    "HANG",
    "Answer",
    "OutsideModel",
    "last_user_message",
    "stub_llm_factory",
    "text_answer",
    "tool_then_text",
]

#: Upper bound of a wait for requests to arrive (they take milliseconds).
WAIT_SECONDS = 20.0
#: The word that makes :class:`OutsideModel` hold a request until released.
HANG = "hang"

#: How the model answers one request (its JSON body is ``request.json()``).
Answer = Callable[[RecordedRequest], StubResponse]


def last_user_message(request: RecordedRequest) -> str:
    """The content of the last ``user`` message of a chat-completions request."""
    body: dict[str, Any] = request.json()
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def text_answer(request: RecordedRequest) -> StubResponse:
    """A plain text answer that quotes the user's own message."""
    return StubResponse.completion(f"answer to: {last_user_message(request)}")


def tool_then_text(tool: str, arguments: Callable[[str], dict[str, Any]]) -> Answer:
    """An answer that first calls ``tool`` (when it is offered) with ``arguments(last user
    message)`` and, once the conversation holds the tool's result, answers in text."""

    def answer(request: RecordedRequest) -> StubResponse:
        body: dict[str, Any] = request.json()
        if any(message.get("role") == "tool" for message in body.get("messages", [])):
            return text_answer(request)
        offered = [spec["function"]["name"] for spec in body.get("tools", [])]
        wire_names = [name for name in offered if name in (tool, tool.replace(".", "_"))]
        if not wire_names or body.get("tool_choice") == "none":
            return text_answer(request)
        call = StubToolCall(
            id=f"call_{len(request.body)}",
            name=wire_names[0],
            arguments=json.dumps(arguments(last_user_message(request))),
        )
        return StubResponse.completion(None, tool_calls=[call])

    return answer


class OutsideModel:
    """A loopback chat-completions server with a gate (see the module docstring);
    ``trigger=None`` holds nothing."""

    def __init__(self, answer: Answer = text_answer, *, trigger: str | None = HANG) -> None:
        self._answer_for = answer
        self._trigger = trigger
        self.stub = ChatCompletionsStub(handler=self._answer)
        self._held = 0
        self._arrivals = asyncio.Condition()
        self._released = asyncio.Event()

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.stub.requests

    @property
    def base_url(self) -> str:
        return self.stub.base_url

    @property
    def held(self) -> int:
        """How many requests have reached the gate so far."""
        return self._held

    async def _answer(self, request: RecordedRequest) -> StubResponse:
        if self._trigger is not None and self._trigger in last_user_message(request):
            async with self._arrivals:
                self._held += 1
                self._arrivals.notify_all()
            await self._released.wait()
        return self._answer_for(request)

    async def wait_held(self, count: int) -> None:
        """Wait (up to :data:`WAIT_SECONDS`) until ``count`` requests in all have reached
        the gate."""
        async with asyncio.timeout(WAIT_SECONDS), self._arrivals:
            await self._arrivals.wait_for(lambda: self._held >= count)

    def release(self) -> None:
        """Let every held request (and every later one) be answered."""
        self._released.set()

    def provider(self, name: str = "outside") -> OpenAIProvider:
        """The real ``openai`` provider pointed at this server."""
        return OpenAIProvider(base_url=self.base_url, name=name, default_model="stub-model")

    def llm_factory(self, **kwargs: Any) -> LLMManagerFactory:
        """An LLM manager factory whose ``default`` configuration uses only this model."""
        return stub_llm_factory([self.provider()], **kwargs)

    async def __aenter__(self) -> Self:
        await self.stub.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        await self.stub.aclose()


def stub_llm_factory(
    providers: Sequence[OpenAIProvider],
    *,
    with_local: bool = False,
    cooldown_threshold: int = 100,
    **kwargs: Any,
) -> LLMManagerFactory:
    """An LLM manager factory whose ``default`` chain is ``providers`` (then ``local``
    when ``with_local``): one attempt per provider, no cooldown in a scenario's time."""
    chain: list[Provider] = list(providers)
    if with_local:
        chain.append(LocalProvider())
    return LLMManagerFactory(
        providers=chain,
        configs=[
            LLMConfig(
                name="default",
                providers=tuple(provider.name for provider in chain),
                timeout_seconds=600,
            )
        ],
        retry=RetryPolicy(max_attempts=1, base_delay_seconds=0.0, max_delay_seconds=0.0),
        cooldown=CooldownPolicy(failure_threshold=cooldown_threshold, cooldown_seconds=30.0),
        **kwargs,
    )
