"""The :class:`~dispatch.llm.api.LLMManager` Protocol over a ``grpc.aio`` channel.

The channel carries the caller's identity: the composition root builds it with the auth
client interceptor that adds ``authorization`` and ``x-ssot-context`` metadata (or passes
``metadata``, a callable returning extra metadata for every call). The server answers for
that user only. A failed call raises the same :class:`~dispatch.llm.api.LLMError` subclass
the server raised, rebuilt from the status and the ``x-ssot-error-code`` trailer.
Structured output runs here, over :meth:`GrpcLLMClient.complete`, with the same protocol
as in process.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TypeVar

import grpc
from pydantic import BaseModel

from dispatch.llm import llm_pb2 as pb
from dispatch.llm import llm_pb2_grpc
from dispatch.llm.api import (
    Completion,
    CompletionRequest,
    LLMError,
    LLMHealth,
    ProviderUnavailableError,
    StreamChunk,
    UsageReport,
)
from dispatch.llm.proto_convert import (
    chunk_from_proto,
    completion_from_proto,
    error_from_status,
    health_from_proto,
    request_to_proto,
    usage_from_proto,
)
from dispatch.llm.structured import complete_structured

__all__ = ["GrpcLLMClient"]

ModelT = TypeVar("ModelT", bound=BaseModel)
Metadata = Sequence[tuple[str, str]]


def _error(exc: grpc.aio.AioRpcError) -> LLMError:
    trailers = {
        key: value
        for key, value in (exc.trailing_metadata() or ())
        if isinstance(key, str) and isinstance(value, str)
    }
    details = exc.details() or exc.code().name
    if not trailers and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return ProviderUnavailableError(f"the LLM service is unreachable: {details}")
    return error_from_status(details, trailers)


class GrpcLLMClient:
    """LLM access through a remote LLM service; see the module docstring."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_seconds: float | None = 120.0,
        metadata: Callable[[], Metadata] | None = None,
    ) -> None:
        self._stub = llm_pb2_grpc.LLMServiceStub(channel)
        self._timeout = timeout_seconds
        self._metadata = metadata

    def _call_metadata(self) -> Metadata | None:
        return None if self._metadata is None else tuple(self._metadata())

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            message = await self._stub.Complete(
                request_to_proto(request), timeout=self._timeout, metadata=self._call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return completion_from_proto(message)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        call = self._stub.CompleteStream(
            request_to_proto(request), timeout=self._timeout, metadata=self._call_metadata()
        )
        try:
            async for message in call:
                yield chunk_from_proto(message)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()

    async def complete_structured(self, request: CompletionRequest, model: type[ModelT]) -> ModelT:
        return await complete_structured(self.complete, request, model)

    async def usage(self) -> UsageReport:
        try:
            message = await self._stub.GetUsage(
                pb.GetUsageRequest(), timeout=self._timeout, metadata=self._call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return usage_from_proto(message)

    async def health(self) -> LLMHealth:
        try:
            message = await self._stub.Health(
                pb.HealthRequest(), timeout=self._timeout, metadata=self._call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return health_from_proto(message)
