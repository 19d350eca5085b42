"""A scripted provider for tests of code that uses an LLM manager.

:class:`ScriptedProvider` implements the provider contract with answers (or failures)
given in advance, in order, and records every call it receives. Tests of the manager's
fallback, cooldown and structured-output repair use it, and so can tests of agent loops
that need an exact sequence of model answers. It is a real provider, not a mock of the
manager: the manager's cache, budget, retry and fallback logic all run around it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable

from dispatch.llm.api import StreamChunk, TokenUsage, ToolCall
from dispatch.llm.providers.base import (
    ProviderCall,
    ProviderCallError,
    ProviderResult,
    ProviderStreamItem,
)

__all__ = ["Outcome", "ScriptedProvider", "text_result"]

#: What the provider does for one call: answer, fail, or compute an answer from the call.
Outcome = ProviderResult | ProviderCallError | Callable[[ProviderCall], ProviderResult]


def text_result(
    content: str,
    *,
    tool_calls: tuple[ToolCall, ...] = (),
    usage: tuple[int, int] = (10, 5),
    model: str = "scripted-1",
) -> ProviderResult:
    """A finished answer with the given text and usage (prompt, completion)."""
    return ProviderResult(
        model=model,
        content=content,
        tool_calls=tool_calls,
        finish_reason="tool_calls" if tool_calls else "stop",
        usage=TokenUsage.of(*usage),
    )


class ScriptedProvider:
    """Answers calls from ``outcomes`` in order; when they run out, from ``default``
    (or fails the test with an AssertionError when there is none)."""

    def __init__(
        self,
        name: str,
        outcomes: Iterable[Outcome] = (),
        *,
        default: Outcome | None = None,
        default_model: str = "scripted-1",
    ) -> None:
        self._name = name
        self._outcomes: deque[Outcome] = deque(outcomes)
        self._default = default
        self._default_model = default_model
        self.calls: list[ProviderCall] = []
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_model(self) -> str:
        return self._default_model

    def enqueue(self, *outcomes: Outcome) -> None:
        self._outcomes.extend(outcomes)

    def _next(self, call: ProviderCall) -> ProviderResult:
        self.calls.append(call)
        if self._outcomes:
            outcome = self._outcomes.popleft()
        elif self._default is not None:
            outcome = self._default
        else:
            raise AssertionError(f"scripted provider {self._name!r} has no outcome left")
        if isinstance(outcome, ProviderCallError):
            raise outcome
        if isinstance(outcome, ProviderResult):
            return outcome
        return outcome(call)

    async def complete(self, call: ProviderCall) -> ProviderResult:
        return self._next(call)

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderStreamItem, None]:
        result = self._next(call)
        for piece in re.findall(r"\s*\S+\s*", result.content) or [result.content]:
            if piece:
                yield StreamChunk(delta=piece)
        yield result

    async def aclose(self) -> None:
        self.closed = True
