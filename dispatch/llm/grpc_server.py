"""gRPC servicer for ``ssot.llm.v1.LLMService``: proto ↔ API, errors → status codes.

The caller's identity is the context bound by the server's auth interceptor
(:func:`context.current_context`), which has verified the token and checked that the
transmitted context belongs to it; nothing in a request message names a user. Each RPC
builds that user's manager through the factory, so every call acts on the caller's own
cache, budget and counters only. A call with no bound context is refused
(``UNAUTHENTICATED``).

:class:`~dispatch.llm.api.LLMError` subclasses become their ``grpc_status_name`` with the
stable error code in trailing metadata (see :mod:`dispatch.llm.proto_convert`); anything
unexpected becomes ``INTERNAL`` with a generic message (details stay in the server log).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
import structlog

from context import NoCurrentContextError, UserExecutionContext, current_context
from dispatch.llm import llm_pb2 as pb
from dispatch.llm import llm_pb2_grpc
from dispatch.llm.api import LLMError
from dispatch.llm.manager import ContextLLMManager, LLMManagerFactory
from dispatch.llm.proto_convert import (
    ERROR_CODE_KEY,
    chunk_to_proto,
    completion_to_proto,
    error_trailers,
    health_to_proto,
    request_from_proto,
    usage_to_proto,
)

__all__ = ["LLMServicer", "add_llm_servicer"]

_log = structlog.get_logger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: _Context, error: LLMError) -> NoReturn:
    await context.abort(
        grpc.StatusCode[error.grpc_status_name],
        error.message,
        trailing_metadata=error_trailers(error),
    )
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


async def _abort_internal(context: _Context, exc: BaseException, rpc: str) -> NoReturn:
    _log.error("llm.grpc.internal_error", rpc=rpc, error_type=type(exc).__name__, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        "internal error in the LLM service",
        trailing_metadata=((ERROR_CODE_KEY, LLMError.error_code),),
    )
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


class LLMServicer(llm_pb2_grpc.LLMServiceServicer):
    """Serves one :class:`LLMManagerFactory`. ``context_provider`` returns the caller's
    verified context (default: the one the auth interceptor bound)."""

    def __init__(
        self,
        factory: LLMManagerFactory,
        *,
        context_provider: Callable[[], UserExecutionContext] = current_context,
    ) -> None:
        self._factory = factory
        self._context_provider = context_provider

    async def _manager(self, context: _Context) -> ContextLLMManager:
        try:
            ctx = self._context_provider()
        except NoCurrentContextError:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no authenticated user context for this call",
                trailing_metadata=((ERROR_CODE_KEY, "UNAUTHENTICATED"),),
            )
            raise  # pragma: no cover - abort always raises
        return self._factory.create_for_context(ctx)

    async def Complete(  # noqa: N802 - gRPC method name
        self, request: pb.CompleteRequest, context: _Context
    ) -> pb.Completion:
        manager = await self._manager(context)
        try:
            completion = await manager.complete(request_from_proto(request))
        except LLMError as exc:
            await _abort(context, exc)
        except Exception as exc:
            await _abort_internal(context, exc, "Complete")
        return completion_to_proto(completion)

    async def CompleteStream(  # noqa: N802 - gRPC method name
        self, request: pb.CompleteRequest, context: _Context
    ) -> AsyncIterator[pb.StreamChunk]:
        manager = await self._manager(context)
        try:
            api_request = request_from_proto(request)
            async with contextlib.aclosing(manager.stream(api_request)) as chunks:
                async for chunk in chunks:
                    yield chunk_to_proto(chunk)
        except LLMError as exc:
            await _abort(context, exc)
        except Exception as exc:
            await _abort_internal(context, exc, "CompleteStream")

    async def GetUsage(  # noqa: N802 - gRPC method name
        self, request: pb.GetUsageRequest, context: _Context
    ) -> pb.UsageReport:
        manager = await self._manager(context)
        try:
            report = await manager.usage()
        except Exception as exc:
            await _abort_internal(context, exc, "GetUsage")
        return usage_to_proto(report)

    async def Health(  # noqa: N802 - gRPC method name
        self, request: pb.HealthRequest, context: _Context
    ) -> pb.HealthReport:
        manager = await self._manager(context)
        try:
            health = await manager.health()
        except Exception as exc:
            await _abort_internal(context, exc, "Health")
        return health_to_proto(health)


def add_llm_servicer(server: grpc.aio.Server, factory: LLMManagerFactory) -> LLMServicer:
    """Register the LLM service on ``server``; return the servicer."""
    servicer = LLMServicer(factory)
    llm_pb2_grpc.add_LLMServiceServicer_to_server(servicer, server)
    return servicer
