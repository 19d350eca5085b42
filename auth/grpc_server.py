"""The ``ssot.auth.v1.AuthService`` servicer: proto <-> api, errors -> gRPC statuses.

A thin adapter over :class:`auth.service.LocalAuthService`. :func:`build_server` assembles
a ``grpc.aio`` server with this servicer, the :class:`AuthServerInterceptor` (only
RevokeUserTokens and UpdateAccount need a caller token), the standard health service and
server reflection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog

# grpcio-health-checking and grpcio-reflection ship no type information.
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auth import auth_pb2, auth_pb2_grpc
from auth.api import (
    AuthError,
    AuthErrorCode,
    InvalidRequestError,
    PermissionDeniedError,
    TokenType,
)
from auth.grpc_status import abort_with_code, abort_with_error, peer_address
from auth.identity import current_identity
from auth.interceptors import AuthServerInterceptor
from auth.proto_convert import (
    account_to_proto,
    context_kind_from_proto,
    jwks_to_proto,
    plan_from_proto,
    result_to_proto,
    service_token_to_proto,
    timestamp,
    to_datetime,
    token_pair_to_proto,
    token_type_from_proto,
)
from auth.service import LocalAuthService
from context.proto_codec import GRPC_SERVER_METADATA_OPTIONS

__all__ = [
    "ADMIN_ROLE",
    "AUTH_SERVICE_NAME",
    "PUBLIC_METHODS",
    "AuthServicer",
    "build_server",
]

log = structlog.get_logger(__name__)

AUTH_SERVICE_NAME: str = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
ADMIN_ROLE = "admin"
PUBLIC_METHODS: frozenset[str] = frozenset(
    f"/{AUTH_SERVICE_NAME}/{name}"
    for name in (
        "Register",
        "Login",
        "Refresh",
        "Logout",
        "ValidateToken",
        "IssueServiceToken",
        "GetJWKS",
    )
)

_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]


async def _answer(context: _Context, method: str, call: Callable[[], Awaitable[_T]]) -> _T:
    """Run one call; typed errors become their status, anything else INTERNAL."""
    try:
        return await call()
    except AuthError as error:
        await abort_with_error(context, error)
    except Exception:
        log.exception("auth_rpc_failed", method=method)
        await abort_with_code(
            context, grpc.StatusCode.INTERNAL, AuthErrorCode.INTERNAL_ERROR.value, "internal error"
        )


def _authorize_admin(*, target_user: str | None = None) -> None:
    """Services and admins may; a user may act on themself when ``target_user`` is given."""
    identity = current_identity()
    if identity.token_type is TokenType.SERVICE or ADMIN_ROLE in identity.roles:
        return
    if target_user is not None and identity.user_id == target_user:
        return
    raise PermissionDeniedError("this operation needs an administrator or a service")


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, service: LocalAuthService) -> None:
        self._service = service

    async def Register(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.RegisterRequest, context: _Context
    ) -> auth_pb2.RegisterResponse:
        async def call() -> auth_pb2.RegisterResponse:
            account = await self._service.register(
                request.email,
                request.password,
                request.display_name,
                client_id=peer_address(context),
            )
            return auth_pb2.RegisterResponse(account=account_to_proto(account))

        return await _answer(context, "Register", call)

    async def Login(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.LoginRequest, context: _Context
    ) -> auth_pb2.TokenPair:
        async def call() -> auth_pb2.TokenPair:
            pair = await self._service.login(
                request.email, request.password, client_id=peer_address(context)
            )
            return token_pair_to_proto(pair)

        return await _answer(context, "Login", call)

    async def Refresh(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.RefreshRequest, context: _Context
    ) -> auth_pb2.TokenPair:
        async def call() -> auth_pb2.TokenPair:
            return token_pair_to_proto(await self._service.refresh(request.refresh_token))

        return await _answer(context, "Refresh", call)

    async def Logout(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.LogoutRequest, context: _Context
    ) -> auth_pb2.LogoutResponse:
        async def call() -> auth_pb2.LogoutResponse:
            await self._service.logout(request.token)
            return auth_pb2.LogoutResponse()

        return await _answer(context, "Logout", call)

    async def ValidateToken(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.ValidateTokenRequest, context: _Context
    ) -> auth_pb2.AuthResult:
        async def call() -> auth_pb2.AuthResult:
            expected = token_type_from_proto(request.expected_type) or TokenType.ACCESS
            if expected is TokenType.SERVICE:
                result = await self._service.authenticate_service(
                    request.token, request.service_id or None
                )
            elif expected is TokenType.ACCESS:
                result = await self._service.authenticate_token(
                    request.token, context_kind_from_proto(request.context_kind)
                )
            else:
                raise InvalidRequestError("only access and service tokens can be validated")
            return result_to_proto(result)

        return await _answer(context, "ValidateToken", call)

    async def RevokeUserTokens(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.RevokeUserTokensRequest, context: _Context
    ) -> auth_pb2.RevokeUserTokensResponse:
        async def call() -> auth_pb2.RevokeUserTokensResponse:
            _authorize_admin(target_user=request.user_id)
            before = to_datetime(request.before) if request.HasField("before") else None
            mark = await self._service.revoke_user_tokens(request.user_id, before=before)
            return auth_pb2.RevokeUserTokensResponse(revoked_before=timestamp(mark))

        return await _answer(context, "RevokeUserTokens", call)

    async def UpdateAccount(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.UpdateAccountRequest, context: _Context
    ) -> auth_pb2.Account:
        async def call() -> auth_pb2.Account:
            _authorize_admin()
            account = await self._service.update_account(
                request.user_id,
                plan=plan_from_proto(request.plan),
                roles=tuple(request.roles.values) if request.HasField("roles") else None,
                permissions=(
                    tuple(request.permissions.values) if request.HasField("permissions") else None
                ),
            )
            return account_to_proto(account)

        return await _answer(context, "UpdateAccount", call)

    async def IssueServiceToken(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.IssueServiceTokenRequest, context: _Context
    ) -> auth_pb2.ServiceToken:
        async def call() -> auth_pb2.ServiceToken:
            token = await self._service.issue_service_token(
                request.service_id, request.service_secret, client_id=peer_address(context)
            )
            return service_token_to_proto(token)

        return await _answer(context, "IssueServiceToken", call)

    async def GetJWKS(  # noqa: N802  (the generated servicer's name)
        self, request: auth_pb2.GetJWKSRequest, context: _Context
    ) -> auth_pb2.JsonWebKeySet:
        async def call() -> auth_pb2.JsonWebKeySet:
            return jwks_to_proto(await self._service.get_jwks())

        return await _answer(context, "GetJWKS", call)


async def build_server(
    service: LocalAuthService, *, host: str = "127.0.0.1", port: int = 8081
) -> tuple[grpc.aio.Server, int, Any]:
    """A ready-to-start server bound to ``host:port`` (0 = ephemeral), the bound port and
    the health servicer (``grpc_health.v1.health.aio.HealthServicer``, for shutdown)."""
    interceptor = AuthServerInterceptor(service, public_methods=PUBLIC_METHODS)
    server = grpc.aio.server(interceptors=[interceptor], options=GRPC_SERVER_METADATA_OPTIONS)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(AUTH_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (AUTH_SERVICE_NAME, health_name, reflection.SERVICE_NAME), server
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}") from exc
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return server, bound, health_servicer
