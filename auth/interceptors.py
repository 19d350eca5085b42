"""gRPC interceptors that carry identity across process boundaries (design section 3).

Server side, :class:`AuthServerInterceptor` (for any ``grpc.aio`` server, whatever its
services): for every method that is not public it

1. reads ``authorization: Bearer <token>`` and verifies the token with the given
   :class:`auth.api.TokenAuthenticator` (the local service, a :class:`JWKSVerifier`, or
   the gRPC client): missing or bad token -> UNAUTHENTICATED, verifier unreachable ->
   UNAVAILABLE;
2. rebuilds the caller's ``UserExecutionContext`` from ``x-ssot-context``
   (``context.decode_context_metadata``): undecodable -> INVALID_ARGUMENT; for a user
   token, a context of another user -> PERMISSION_DENIED; no context -> a fresh root
   context for the token's subject (or INVALID_ARGUMENT when ``require_context``);
3. runs the handler with the verified identity bound (:func:`auth.identity.current_identity`)
   and the context bound (``context.current_context()``, also in structlog).

Service tokens are accepted where ``allow_service_tokens`` says so; a service acts for the
user named in the context it forwards, so no subject check applies to it.

Client side, :class:`AuthClientInterceptor` adds both metadata entries to every call: the
token from a token provider and the current context, when there is one.

Every status carries the stable error code in trailing metadata ``x-ssot-error-code``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import structlog

from auth.api import AuthContextKind, AuthErrorCode, AuthResult, TokenAuthenticator, TokenType
from auth.grpc_status import abort_with_code
from auth.identity import identity_scope
from context import (
    CONTEXT_METADATA_KEY,
    ContextError,
    UserExecutionContext,
    context_scope,
    decode_context_metadata,
    encode_context_metadata,
    get_current_context,
)

__all__ = [
    "AUTHORIZATION_METADATA_KEY",
    "DEFAULT_PUBLIC_SERVICES",
    "AuthClientInterceptor",
    "AuthServerInterceptor",
    "TokenProvider",
    "auth_client_interceptors",
]

log = structlog.get_logger(__name__)

AUTHORIZATION_METADATA_KEY = "authorization"
DEFAULT_PUBLIC_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Context = grpc.aio.ServicerContext[Any, Any]


class _RejectedError(Exception):
    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _service_of(method: str) -> str:
    # "/package.Service/Method" -> "package.Service"
    return method.strip("/").split("/", 1)[0]


def _values(metadata: Any, key: str) -> list[str]:
    found: list[str] = []
    for entry_key, value in metadata or ():
        if entry_key.lower() == key:
            found.append(value.decode("ascii", "replace") if isinstance(value, bytes) else value)
    return found


class AuthServerInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the caller of every non-public method; see the module docstring."""

    def __init__(
        self,
        authenticator: TokenAuthenticator,
        *,
        public_methods: Collection[str] = (),
        public_services: Collection[str] = DEFAULT_PUBLIC_SERVICES,
        allow_service_tokens: bool = True,
        allowed_services: Collection[str] | None = None,
        require_context: bool = False,
    ) -> None:
        self._authenticator = authenticator
        self._public_methods = frozenset(public_methods)
        self._public_services = frozenset(public_services)
        self._allow_service_tokens = allow_service_tokens
        self._allowed_services = None if allowed_services is None else frozenset(allowed_services)
        self._require_context = require_context

    def is_public(self, method: str) -> bool:
        return method in self._public_methods or _service_of(method) in self._public_services

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self.is_public(handler_call_details.method):
            return handler
        return self._wrap(handler, handler_call_details.method)

    # ----- verification -------------------------------------------------------------------

    async def authenticate(self, metadata: Any) -> tuple[AuthResult, UserExecutionContext | None]:
        """Verify token and context from invocation metadata; raises ``_RejectedError``."""
        tokens = _values(metadata, AUTHORIZATION_METADATA_KEY)
        if not tokens:
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED, AuthErrorCode.NO_TOKEN, "no bearer token presented"
            )
        if len(tokens) > 1:
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED,
                AuthErrorCode.INVALID_FORMAT,
                "more than one authorization entry",
            )
        scheme, _, token = tokens[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED,
                AuthErrorCode.INVALID_FORMAT,
                "authorization must be 'Bearer <token>'",
            )
        token = token.strip()
        result = await self._authenticator.authenticate_token(token, AuthContextKind.GRPC)
        if (
            not result.success
            and result.error_code is AuthErrorCode.WRONG_TOKEN_TYPE
            and self._allow_service_tokens
        ):
            result = await self._authenticator.authenticate_service(token)
            if (
                result.success
                and self._allowed_services is not None
                and result.user_id not in self._allowed_services
            ):
                raise _RejectedError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    AuthErrorCode.PERMISSION_DENIED,
                    "this service may not call this server",
                )
        if not result.success:
            code = result.error_code or AuthErrorCode.INVALID_FORMAT
            status = (
                grpc.StatusCode.UNAVAILABLE
                if code is AuthErrorCode.AUTH_SERVICE_UNAVAILABLE
                else grpc.StatusCode.UNAUTHENTICATED
            )
            raise _RejectedError(status, code, result.error or "invalid token")
        return result, self._context_for(result, metadata)

    def _context_for(self, identity: AuthResult, metadata: Any) -> UserExecutionContext | None:
        encoded = _values(metadata, CONTEXT_METADATA_KEY)
        if len(encoded) > 1:
            raise _RejectedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                AuthErrorCode.INVALID_REQUEST,
                "more than one context entry",
            )
        is_user = identity.token_type is TokenType.ACCESS
        if not encoded:
            if self._require_context:
                raise _RejectedError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    AuthErrorCode.INVALID_REQUEST,
                    f"the {CONTEXT_METADATA_KEY} metadata entry is required",
                )
            if is_user and identity.user_id is not None:
                return UserExecutionContext.from_request(identity.user_id)
            return None
        try:
            ctx = decode_context_metadata(encoded[0])
        except ContextError:
            raise _RejectedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                AuthErrorCode.INVALID_REQUEST,
                "the request context cannot be decoded",
            ) from None
        if is_user and ctx.user_id != identity.user_id:
            log.warning("auth_context_user_mismatch", token_subject=identity.user_id)
            raise _RejectedError(
                grpc.StatusCode.PERMISSION_DENIED,
                AuthErrorCode.CONTEXT_MISMATCH,
                "the request context belongs to another user than the token",
            )
        return ctx

    # ----- handler wrapping ---------------------------------------------------------------

    @contextmanager
    def _bound(self, identity: AuthResult, ctx: UserExecutionContext | None) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(identity_scope(identity))
            if ctx is not None:
                stack.enter_context(context_scope(ctx))
            yield

    async def _admit(
        self, context: _Context, method: str
    ) -> tuple[AuthResult, UserExecutionContext | None]:
        try:
            return await self.authenticate(context.invocation_metadata())
        except _RejectedError as rejection:
            log.info("auth_rpc_rejected", method=method, error_code=str(rejection.code))
            await abort_with_code(context, rejection.status, str(rejection.code), rejection.message)

    def _wrap(
        self, handler: grpc.RpcMethodHandler[_Req, _Resp], method: str
    ) -> grpc.RpcMethodHandler[_Req, _Resp]:
        if handler.unary_unary is not None:
            inner_uu = cast(Callable[[Any, _Context], Any], handler.unary_unary)

            async def unary_unary(request: Any, context: _Context) -> Any:
                identity, ctx = await self._admit(context, method)
                with self._bound(identity, ctx):
                    result = inner_uu(request, context)
                    return await result if inspect.isawaitable(result) else result

            return cast(
                "grpc.RpcMethodHandler[_Req, _Resp]",
                grpc.unary_unary_rpc_method_handler(
                    unary_unary,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
            )
        if handler.stream_unary is not None:
            inner_su = cast(Callable[[Any, _Context], Any], handler.stream_unary)

            async def stream_unary(request_iterator: Any, context: _Context) -> Any:
                identity, ctx = await self._admit(context, method)
                with self._bound(identity, ctx):
                    result = inner_su(request_iterator, context)
                    return await result if inspect.isawaitable(result) else result

            return cast(
                "grpc.RpcMethodHandler[_Req, _Resp]",
                grpc.stream_unary_rpc_method_handler(
                    stream_unary,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
            )
        if handler.unary_stream is not None:
            inner_us = cast(Callable[[Any, _Context], Any], handler.unary_stream)

            async def unary_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
                identity, ctx = await self._admit(context, method)
                with self._bound(identity, ctx):
                    async for item in _as_async_iter(inner_us(request, context)):
                        yield item

            return cast(
                "grpc.RpcMethodHandler[_Req, _Resp]",
                grpc.unary_stream_rpc_method_handler(
                    unary_stream,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
            )
        if handler.stream_stream is not None:
            inner_ss = cast(Callable[[Any, _Context], Any], handler.stream_stream)

            async def stream_stream(request_iterator: Any, context: _Context) -> AsyncIterator[Any]:
                identity, ctx = await self._admit(context, method)
                with self._bound(identity, ctx):
                    async for item in _as_async_iter(inner_ss(request_iterator, context)):
                        yield item

            return cast(
                "grpc.RpcMethodHandler[_Req, _Resp]",
                grpc.stream_stream_rpc_method_handler(
                    stream_stream,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
            )
        return handler


async def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    """Streaming handlers either yield (async generator) or write and return (coroutine)."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    else:
        for item in result:
            yield item


TokenProvider = Callable[[], Awaitable[str | None]]


class _AuthMetadata:
    """Adds ``authorization`` (from ``token_provider``) and ``x-ssot-context`` (from
    ``context.get_current_context()``) to a call; entries the caller set explicitly win.
    """

    def __init__(
        self, token_provider: TokenProvider | None = None, *, send_context: bool = True
    ) -> None:
        self._token_provider = token_provider
        self._send_context = send_context

    async def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata()
        for key, value in details.metadata or ():
            metadata.add(key, value)
        if self._token_provider is not None and not metadata.get_all(AUTHORIZATION_METADATA_KEY):
            token = await self._token_provider()
            if token:
                metadata.add(AUTHORIZATION_METADATA_KEY, f"Bearer {token}")
        if self._send_context and not metadata.get_all(CONTEXT_METADATA_KEY):
            ctx = get_current_context()
            if ctx is not None:
                metadata.add(CONTEXT_METADATA_KEY, encode_context_metadata(ctx))
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files each interceptor under ONE call kind (the first base class it matches),
# so one class per kind is needed for the metadata to reach every kind of call.


class AuthClientInterceptor(_AuthMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    """The unary-unary part; :func:`auth_client_interceptors` gives all four kinds."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(await self._details(client_call_details), request)


class _UnaryStreamAuth(_AuthMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(await self._details(client_call_details), request)


class _StreamUnaryAuth(_AuthMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._details(client_call_details), request_iterator)


class _StreamStreamAuth(_AuthMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._details(client_call_details), request_iterator)


def auth_client_interceptors(
    token_provider: TokenProvider | None = None, *, send_context: bool = True
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a grpc.aio channel that authenticate every call, of every kind."""
    return [
        kind(token_provider, send_context=send_context)
        for kind in (AuthClientInterceptor, _UnaryStreamAuth, _StreamUnaryAuth, _StreamStreamAuth)
    ]
