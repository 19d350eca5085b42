"""A scripted OpenAI-compatible chat-completions server on loopback, for tests.

It stands in for the outside world (an LLM vendor) and speaks the real wire protocol, so
the ``openai`` provider is tested through its actual HTTP code: HTTP/1.1 with keep-alive
over ``asyncio.start_server`` on ``127.0.0.1`` and an ephemeral port, JSON answers with
``Content-Length``, and server-sent-event streams with chunked transfer encoding. Only
the standard library is used.

Each request to ``POST /v1/chat/completions`` is recorded (:attr:`ChatCompletionsStub.requests`)
and answered by the next scripted :class:`StubResponse`, or by a handler function. A
request that finds no scripted answer gets HTTP 500 with an explanatory error, so a test
that under-scripts fails loudly. Other paths get 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

__all__ = ["ChatCompletionsStub", "RecordedRequest", "StubResponse", "StubToolCall"]

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024
COMPLETIONS_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class StubToolCall:
    id: str
    name: str
    arguments: str  # the JSON text, as the API sends it


@dataclass(frozen=True, slots=True)
class StubResponse:
    """One scripted answer. With ``sse_events`` set the answer is an event stream: each
    item is sent as one ``data:`` event; ``drop_after`` closes the connection after that
    many events, without finishing the response (a broken stream)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    sse_events: tuple[str, ...] | None = None
    drop_after: int | None = None

    @classmethod
    def json(
        cls, payload: Any, *, status: int = 200, headers: Sequence[tuple[str, str]] = ()
    ) -> StubResponse:
        return cls(
            status=status,
            headers=(("Content-Type", "application/json"), *headers),
            body=json.dumps(payload).encode("utf-8"),
        )

    @classmethod
    def error(
        cls, status: int, message: str = "error", *, headers: Sequence[tuple[str, str]] = ()
    ) -> StubResponse:
        payload = {"error": {"message": message, "type": "stub_error", "code": None}}
        return cls.json(payload, status=status, headers=headers)

    @classmethod
    def completion(
        cls,
        content: str | None = "",
        *,
        tool_calls: Sequence[StubToolCall] = (),
        finish_reason: str | None = None,
        usage: tuple[int, int] | None = (10, 5),
        model: str = "stub-model",
    ) -> StubResponse:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in tool_calls
            ]
        payload: dict[str, Any] = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
                }
            ],
        }
        if usage is not None:
            payload["usage"] = {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": usage[0] + usage[1],
            }
        return cls.json(payload)

    @classmethod
    def stream(
        cls,
        pieces: Sequence[str] = (),
        *,
        tool_calls: Sequence[StubToolCall] = (),
        finish_reason: str | None = None,
        usage: tuple[int, int] | None = (10, 5),
        model: str = "stub-model",
        drop_after: int | None = None,
    ) -> StubResponse:
        """An SSE answer: a role chunk, one chunk per text piece, tool calls as deltas
        (id and name first, then the arguments in two fragments), the finish chunk, a
        usage chunk (``choices: []``), then ``[DONE]``."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return json.dumps(
                {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces]
        for index, call in enumerate(tool_calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            events.append(chunk({"tool_calls": [head]}))
            half = len(call.arguments) // 2
            for fragment in (call.arguments[:half], call.arguments[half:]):
                part = {"index": index, "function": {"arguments": fragment}}
                events.append(chunk({"tool_calls": [part]}))
        events.append(chunk({}, finish_reason or ("tool_calls" if tool_calls else "stop")))
        if usage is not None:
            events.append(
                json.dumps(
                    {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": usage[0],
                            "completion_tokens": usage[1],
                            "total_tokens": usage[0] + usage[1],
                        },
                    }
                )
            )
        events.append("[DONE]")
        return cls(
            status=200,
            headers=(("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")),
            sse_events=tuple(events),
            drop_after=drop_after,
        )


Handler = Callable[[RecordedRequest], StubResponse | Awaitable[StubResponse]]


class _BadRequestError(Exception):
    pass


@dataclass(slots=True)
class _State:
    queue: deque[StubResponse] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)


class ChatCompletionsStub:
    """The stub server. Use as ``async with ChatCompletionsStub([...]) as stub:`` and point
    a provider at :attr:`base_url`."""

    def __init__(
        self, responses: Iterable[StubResponse] = (), *, handler: Handler | None = None
    ) -> None:
        self._state = _State(queue=deque(responses))
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._state.requests

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stub server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *responses: StubResponse) -> None:
        self._state.queue.extend(responses)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            for task in list(self._connections):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- HTTP --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    request = await self._read_request(reader)
                except _BadRequestError:
                    await self._write(writer, StubResponse.error(400, "bad request"), close=True)
                    return
                if request is None:
                    return
                response = await self._answer(request)
                keep_alive = request.headers.get("connection", "").lower() != "close"
                if not await self._write(writer, response, close=not keep_alive):
                    return
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequestError from None
            return None
        except asyncio.LimitOverrunError:
            raise _BadRequestError from None
        if len(head) > _MAX_HEADER_BYTES:
            raise _BadRequestError
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequestError
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequestError
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _BadRequestError  # clients send JSON bodies with Content-Length
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequestError from None
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise _BadRequestError
        body = await reader.readexactly(length)
        return RecordedRequest(method=parts[0], path=parts[1], headers=headers, body=body)

    async def _answer(self, request: RecordedRequest) -> StubResponse:
        if request.method != "POST" or request.path.split("?")[0] != COMPLETIONS_PATH:
            return StubResponse.error(404, f"no route for {request.method} {request.path}")
        self._state.requests.append(request)
        if self._handler is not None:
            answer = self._handler(request)
            return await answer if inspect.isawaitable(answer) else answer
        if not self._state.queue:
            return StubResponse.error(500, "the stub server has no scripted response left")
        return self._state.queue.popleft()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, response: StubResponse, *, close: bool) -> bool:
        """Send ``response``; return False when the connection must end afterwards."""
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Status"
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if response.sse_events is None:
            lines.append(f"Content-Length: {len(response.body)}")
        else:
            lines.append("Transfer-Encoding: chunked")
        if close:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if response.sse_events is None:
            writer.write(response.body)
            await writer.drain()
            return not close
        for number, event in enumerate(response.sse_events):
            if response.drop_after is not None and number >= response.drop_after:
                await writer.drain()
                return False
            data = f"data: {event}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return not close
