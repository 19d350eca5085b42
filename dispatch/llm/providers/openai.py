"""The ``openai`` provider: the OpenAI-compatible chat-completions API over httpx.

Speaks ``POST {base_url}/chat/completions`` (``base_url`` includes the version path, as in
``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1`` for vLLM, Ollama or
llama.cpp servers):

* tools as ``tools=[{"type": "function", "function": {name, description, parameters}}]``;
  our tool names may contain dots (``notes.add``), which the API does not allow in function
  names, so names are encoded per request (invalid characters become ``_``, collisions get
  a numeric suffix) and the model's calls are decoded back;
* answers from ``choices[0].message`` (``content``, ``tool_calls`` with JSON-string
  arguments), ``usage`` when the server reports it (else the package's approximation);
* streaming as server-sent events (``stream: true``, ``stream_options.include_usage``):
  ``data: {...}`` events until ``data: [DONE]``, tool-call argument fragments accumulated
  by ``index``;
* failures classified for the manager (see :mod:`dispatch.llm.providers.base`): 429 →
  throttled with ``Retry-After`` (seconds, HTTP-date, or ``retry-after-ms``), 408, 409, 5xx
  and transport errors → transient, 401/403/404 → misconfigured, other 4xx → rejected.

The API key is held as a ``SecretStr`` and only ever placed in the ``Authorization``
header; it is never logged, and no prompt text is logged either.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from dispatch.llm.api import (
    TOOL_NAME_PATTERN,
    ChatMessage,
    FinishReason,
    Role,
    StreamChunk,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
)
from dispatch.llm.clock import Clock, SystemClock
from dispatch.llm.providers.base import (
    ProviderCall,
    ProviderMisconfiguredError,
    ProviderRejectedRequestError,
    ProviderResult,
    ProviderStreamItem,
    ProviderThrottledError,
    ProviderTransientError,
)
from dispatch.llm.tokens import count_completion_tokens, count_prompt_tokens

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "OpenAIProvider",
    "SSEDecoder",
    "ToolNameCodec",
    "parse_retry_after",
]

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_MAX_ERROR_MESSAGE = 200
_FUNCTION_NAME_INVALID = re.compile(r"[^A-Za-z0-9_-]")
_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)
_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

_log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------------------
# Wire format (only the fields we read; servers add more)
# --------------------------------------------------------------------------------------

_Loose = ConfigDict(extra="ignore")


class _WireFunction(BaseModel):
    model_config = _Loose
    name: str | None = None
    arguments: str | None = None


class _WireToolCall(BaseModel):
    model_config = _Loose
    index: int | None = None
    id: str | None = None
    function: _WireFunction | None = None


class _WireMessage(BaseModel):
    model_config = _Loose
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_WireToolCall] | None = None


class _WireChoice(BaseModel):
    model_config = _Loose
    index: int = 0
    message: _WireMessage | None = None
    delta: _WireMessage | None = None
    finish_reason: str | None = None


class _WireUsage(BaseModel):
    model_config = _Loose
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WireResponse(BaseModel):
    model_config = _Loose
    model: str | None = None
    choices: list[_WireChoice] = []
    usage: _WireUsage | None = None
    error: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_retry_after(headers: httpx.Headers, now: datetime) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as delta-seconds or as
    an HTTP-date (relative to ``now``); ``None`` when absent or unreadable."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None and (value := _seconds(milliseconds.strip())) is not None:
        return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw[:1].isdigit():
        return _seconds(raw)
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.utcoffset() is None:
        return None
    return max(0.0, (moment - now).total_seconds())


class ToolNameCodec:
    """Maps our tool names to valid function names (``^[A-Za-z0-9_-]{1,64}$``) and back,
    for one request. Deterministic: the same tools give the same encoding."""

    def __init__(self, names: list[str]) -> None:
        self._encoded: dict[str, str] = {}
        self._decoded: dict[str, str] = {}
        for name in names:
            self.encode(name)

    def encode(self, name: str) -> str:
        known = self._encoded.get(name)
        if known is not None:
            return known
        base = _FUNCTION_NAME_INVALID.sub("_", name)[:60] or "tool"
        candidate, suffix = base, 2
        while candidate in self._decoded:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        self._encoded[name] = candidate
        self._decoded[candidate] = name
        return candidate

    def decode(self, function_name: str) -> str:
        return self._decoded.get(function_name, function_name)


class SSEDecoder:
    """Server-sent events, line by line: returns the ``data`` of each completed event.

    ``data:`` lines of one event are joined with newlines; an event ends at a blank line;
    comment lines (``:``) and other fields (``event:``, ``id:``, ``retry:``) are ignored.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> list[str]:
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return []
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return []

    def flush(self) -> list[str]:
        if not self._data:
            return []
        data = "\n".join(self._data)
        self._data = []
        return [data]


def _finish_reason(raw: str | None, has_tool_calls: bool) -> FinishReason:
    if raw is None:
        return "tool_calls" if has_tool_calls else "stop"
    return _FINISH_REASONS.get(raw, "stop")


def _error_message(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return ""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = " ".join(error["message"].split())
            return text[:_MAX_ERROR_MESSAGE]
        if isinstance(error, str):
            return " ".join(error.split())[:_MAX_ERROR_MESSAGE]
    return ""


# --------------------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------------------


class OpenAIProvider:
    """An OpenAI-compatible chat-completions endpoint under a registration ``name``.

    ``transport`` replaces httpx's network transport (tests, proxies); ``clock`` is used
    to turn an HTTP-date ``Retry-After`` into seconds.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | None = None,
        name: str = "openai",
        default_model: str = DEFAULT_OPENAI_MODEL,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        max_response_bytes: int = _MAX_RESPONSE_BYTES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        self._name = name
        self._default_model = default_model
        self._clock: Clock = clock or SystemClock()
        self._max_response_bytes = max_response_bytes
        request_headers = {"Accept": "application/json", **(headers or {})}
        if api_key is not None and api_key.get_secret_value():
            request_headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=request_headers,
            transport=transport,
            follow_redirects=False,
        )
        self._log = _log.bind(provider=name)

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self._name!r}, base_url={str(self._client.base_url)!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_model(self) -> str:
        return self._default_model

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- request building ----------------------------------------------------------------

    def _body(self, call: ProviderCall, codec: ToolNameCodec, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": call.model or self._default_model,
            "messages": [self._wire_message(message, codec) for message in call.messages],
            "temperature": call.temperature,
            "max_tokens": call.max_tokens,
        }
        if call.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": codec.encode(spec.name),
                        "description": spec.description,
                        "parameters": spec.parameters,
                    },
                }
                for spec in call.tools
            ]
            body["tool_choice"] = call.tool_choice
        if call.response_format == "json":
            body["response_format"] = {"type": "json_object"}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _wire_message(message: ChatMessage, codec: ToolNameCodec) -> dict[str, Any]:
        wire: dict[str, Any] = {"role": message.role.value, "content": message.content}
        if message.role is Role.ASSISTANT and message.tool_calls:
            wire["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": codec.encode(call.name),
                        "arguments": json.dumps(call.arguments, ensure_ascii=False),
                    },
                }
                for call in message.tool_calls
            ]
        if message.role is Role.TOOL:
            wire["tool_call_id"] = message.tool_call_id
        return wire

    # -- errors --------------------------------------------------------------------------

    def _raise_for_status(self, status: int, headers: httpx.Headers, body: bytes) -> NoReturn:
        detail = _error_message(body)
        suffix = f": {detail}" if detail else ""
        self._log.warning("llm.provider.http_error", status_code=status)
        if status == 429:
            raise ProviderThrottledError(
                f"{self._name} is rate limiting requests (HTTP 429){suffix}",
                provider=self._name,
                retry_after=parse_retry_after(headers, self._clock.now()),
            )
        if status in (408, 409) or status >= 500 or status < 400:
            raise ProviderTransientError(
                f"{self._name} failed with HTTP {status}{suffix}",
                provider=self._name,
                status_code=status,
            )
        if status in (401, 403, 404):
            raise ProviderMisconfiguredError(
                f"{self._name} refused the call with HTTP {status} "
                "(check its API key, model and base URL)",
                provider=self._name,
                status_code=status,
            )
        raise ProviderRejectedRequestError(
            f"{self._name} rejected the request with HTTP {status}{suffix}",
            provider=self._name,
            status_code=status,
        )

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderTransientError:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection failed"
        self._log.warning("llm.provider.transport_error", error_type=type(exc).__name__)
        return ProviderTransientError(
            f"{self._name} {kind} ({type(exc).__name__})", provider=self._name
        )

    def _garbled(self, what: str) -> ProviderTransientError:
        self._log.warning("llm.provider.bad_response", problem=what)
        return ProviderTransientError(f"{self._name} sent {what}", provider=self._name)

    async def _read_limited(self, response: httpx.Response) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > self._max_response_bytes:
                raise self._garbled(f"a response larger than {self._max_response_bytes} bytes")
            parts.append(part)
        return b"".join(parts)

    # -- parsing -------------------------------------------------------------------------

    def _tool_call(
        self, call_id: str | None, name: str | None, arguments: str | None, codec: ToolNameCodec
    ) -> ToolCall:
        if not call_id or not name:
            raise self._garbled("a tool call without id or name")
        decoded = codec.decode(name)
        if _TOOL_NAME.match(decoded) is None:
            raise self._garbled("a tool call with an invalid function name")
        try:
            value = json.loads(arguments) if arguments and arguments.strip() else {}
        except ValueError:
            raise self._garbled("tool-call arguments that are not valid JSON") from None
        if not isinstance(value, dict):
            raise self._garbled("tool-call arguments that are not a JSON object")
        return ToolCall(id=call_id, name=decoded, arguments=value)

    @staticmethod
    def _usage(
        wire: _WireUsage | None, call: ProviderCall, content: str, tool_calls: tuple[ToolCall, ...]
    ) -> TokenUsage:
        if wire is not None:
            return TokenUsage.of(max(0, wire.prompt_tokens), max(0, wire.completion_tokens))
        return TokenUsage.of(
            count_prompt_tokens(call.messages, call.tools),
            count_completion_tokens(content, tool_calls),
        )

    def _parse_response(
        self, body: bytes, call: ProviderCall, codec: ToolNameCodec
    ) -> ProviderResult:
        try:
            wire = _WireResponse.model_validate_json(body)
        except ValidationError:
            raise self._garbled("a response that is not a chat completion") from None
        if wire.error is not None or not wire.choices or wire.choices[0].message is None:
            raise self._garbled("a response without a choice")
        choice = wire.choices[0]
        message = choice.message
        assert message is not None  # checked above; narrows the type
        tool_calls = tuple(
            self._tool_call(
                item.id,
                item.function.name if item.function else None,
                item.function.arguments if item.function else None,
                codec,
            )
            for item in message.tool_calls or ()
        )
        content = message.content or ""
        return ProviderResult(
            model=wire.model or call.model or self._default_model,
            content=content,
            tool_calls=tool_calls,
            finish_reason=_finish_reason(choice.finish_reason, bool(tool_calls)),
            usage=self._usage(wire.usage, call, content, tool_calls),
            reasoning=message.reasoning_content,
        )

    # -- calls ---------------------------------------------------------------------------

    async def complete(self, call: ProviderCall) -> ProviderResult:
        codec = ToolNameCodec([spec.name for spec in call.tools])
        body = self._body(call, codec, stream=False)
        try:
            async with self._client.stream(
                "POST", "chat/completions", json=body, timeout=call.timeout_seconds
            ) as response:
                raw = await self._read_limited(response)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code != 200:
            self._raise_for_status(response.status_code, response.headers, raw)
        return self._parse_response(raw, call, codec)

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderStreamItem, None]:
        codec = ToolNameCodec([spec.name for spec in call.tools])
        body = self._body(call, codec, stream=True)
        state = _StreamState()
        try:
            async with self._client.stream(
                "POST", "chat/completions", json=body, timeout=call.timeout_seconds
            ) as response:
                if response.status_code != 200:
                    raw = await self._read_limited(response)
                    self._raise_for_status(response.status_code, response.headers, raw)
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    for data in decoder.feed(line):
                        for chunk in self._stream_event(data, state, codec):
                            yield chunk
                    if state.done:
                        break
                if not state.done:
                    for data in decoder.flush():
                        for chunk in self._stream_event(data, state, codec):
                            yield chunk
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if not state.done and state.finish_reason is None:
            raise self._garbled("a stream that ended before it finished")
        yield self._assemble(state, call, codec)

    def _stream_event(
        self, data: str, state: _StreamState, codec: ToolNameCodec
    ) -> list[StreamChunk]:
        if data.strip() == "[DONE]":
            state.done = True
            return []
        try:
            wire = _WireResponse.model_validate_json(data)
        except ValidationError:
            raise self._garbled("a stream event that is not a chat-completion chunk") from None
        if wire.error is not None:
            raise self._garbled("an error in the middle of a stream")
        if wire.model:
            state.model = wire.model
        if wire.usage is not None:
            state.usage = wire.usage
        chunks: list[StreamChunk] = []
        for choice in wire.choices:
            if choice.index != 0:
                continue
            if choice.finish_reason is not None:
                state.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.reasoning_content:
                state.reasoning.append(delta.reasoning_content)
                chunks.append(StreamChunk(thinking=delta.reasoning_content))
            if delta.content:
                state.content.append(delta.content)
                chunks.append(StreamChunk(delta=delta.content))
            pieces = [
                self._accumulate(position, item, state, codec)
                for position, item in enumerate(delta.tool_calls or ())
            ]
            if pieces:
                chunks.append(StreamChunk(tool_calls=tuple(pieces)))
        return chunks

    def _accumulate(
        self, position: int, item: _WireToolCall, state: _StreamState, codec: ToolNameCodec
    ) -> ToolCallDelta:
        index = item.index if item.index is not None else position
        if index < 0 or index > 127:
            raise self._garbled("a tool-call delta with an impossible index")
        slot = state.tool_calls.setdefault(index, _PartialToolCall())
        name: str | None = None
        if item.id:
            slot.id = item.id
        if item.function is not None and item.function.name and slot.name is None:
            slot.name = item.function.name
            name = codec.decode(slot.name)
        fragment = item.function.arguments if item.function is not None else None
        if fragment:
            slot.arguments.append(fragment)
        return ToolCallDelta(
            index=index, id=item.id or None, name=name, arguments_delta=fragment or ""
        )

    def _assemble(
        self, state: _StreamState, call: ProviderCall, codec: ToolNameCodec
    ) -> ProviderResult:
        tool_calls = tuple(
            self._tool_call(slot.id, slot.name, "".join(slot.arguments), codec)
            for _, slot in sorted(state.tool_calls.items())
        )
        content = "".join(state.content)
        return ProviderResult(
            model=state.model or call.model or self._default_model,
            content=content,
            tool_calls=tool_calls,
            finish_reason=_finish_reason(state.finish_reason, bool(tool_calls)),
            usage=self._usage(state.usage, call, content, tool_calls),
            reasoning="".join(state.reasoning) or None,
        )


class _PartialToolCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []


class _StreamState:
    __slots__ = ("content", "done", "finish_reason", "model", "reasoning", "tool_calls", "usage")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, _PartialToolCall] = {}
        self.finish_reason: str | None = None
        self.usage: _WireUsage | None = None
        self.model: str | None = None
        self.done = False
