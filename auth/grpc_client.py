"""``UnifiedAuthenticationService`` over gRPC: the remote facade of the auth service.

Behaves like the local service, error codes included, plus what a network needs:

* every operation has an overall deadline (``ClientPolicy.deadline_seconds``) and every
  attempt its own timeout;
* idempotent calls are retried on UNAVAILABLE / DEADLINE_EXCEEDED only, with exponential
  backoff and full jitter; Register and Refresh are never retried (a retried refresh could
  look like reuse and revoke the session);
* a circuit breaker opens after repeated transport failures and then fails calls at once;
* token checks never raise: an unreachable service gives an ``AuthResult`` with
  AUTH_SERVICE_UNAVAILABLE, within the deadline; other operations raise
  :class:`auth.api.ServiceUnavailableError`.

Malformed tokens are rejected locally, without a network round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog
from google.protobuf.message import Message
from grpc_health.v1 import (
    health_pb2,
    health_pb2_grpc,
)
from pydantic import BaseModel, ConfigDict, Field

from auth import auth_pb2, auth_pb2_grpc
from auth.api import (
    Account,
    AuthContextKind,
    AuthError,
    AuthErrorCode,
    AuthHealth,
    AuthResult,
    AuthStats,
    HealthState,
    JsonWebKeySet,
    Plan,
    ServiceToken,
    ServiceUnavailableError,
    TokenPair,
)
from auth.grpc_status import error_from_rpc_error
from auth.interceptors import TokenProvider, auth_client_interceptors
from auth.proto_convert import (
    account_from_proto,
    context_kind_to_proto,
    jwks_from_proto,
    plan_to_proto,
    result_from_proto,
    service_token_from_proto,
    timestamp,
    to_datetime,
    token_pair_from_proto,
)
from auth.resilience import BreakerState, CircuitBreaker, backoff_delay
from auth.stats import AuthCounters
from auth.token_format import DEFAULT_MAX_TOKEN_BYTES, validate_jwt_format

__all__ = ["ClientPolicy", "GrpcAuthClient"]

log = structlog.get_logger(__name__)

_Resp = TypeVar("_Resp", bound=Message)
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class ClientPolicy(BaseModel):
    """Timeouts, retries and breaker settings of one client."""

    model_config = ConfigDict(frozen=True)

    deadline_seconds: float = Field(default=3.0, gt=0)
    attempt_timeout_seconds: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    backoff_base_seconds: float = Field(default=0.05, ge=0)
    backoff_max_seconds: float = Field(default=0.5, ge=0)
    breaker_failure_threshold: int = Field(default=3, ge=1)
    breaker_cooldown_seconds: float = Field(default=10.0, ge=0)
    # Reconnect quickly once the server is back (gRPC's default backoff grows to 120 s).
    reconnect_backoff_ms: int = Field(default=200, ge=10)
    max_reconnect_backoff_ms: int = Field(default=2000, ge=10)
    max_token_bytes: int = Field(default=DEFAULT_MAX_TOKEN_BYTES, ge=256)


class GrpcAuthClient:
    """Implements :class:`auth.api.UnifiedAuthenticationService` against a remote server.

    ``token_provider`` supplies the caller's own token (a service token, or an admin's
    access token) for the calls that need one (RevokeUserTokens, UpdateAccount).
    """

    def __init__(
        self,
        target: str,
        *,
        policy: ClientPolicy | None = None,
        token_provider: TokenProvider | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._policy = policy or ClientPolicy()
        self._breaker = CircuitBreaker(
            failure_threshold=self._policy.breaker_failure_threshold,
            cooldown_seconds=self._policy.breaker_cooldown_seconds,
            clock=breaker_clock,
        )
        options = [
            ("grpc.initial_reconnect_backoff_ms", self._policy.reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", self._policy.reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self._policy.max_reconnect_backoff_ms),
            ("grpc.enable_retries", 0),  # retries are ours, with our policy
        ]
        interceptors = auth_client_interceptors(token_provider) if token_provider else None
        self._channel = grpc.aio.insecure_channel(
            target, options=options, interceptors=interceptors
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._health_stub = health_pb2_grpc.HealthStub(self._channel)
        self._counters = AuthCounters()

    @property
    def target(self) -> str:
        return self._target

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> GrpcAuthClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_until_ready(self) -> None:
        """Wait for the channel to connect (wrap in ``asyncio.timeout``); for start-up
        ordering and for tests that restart the server."""
        await self._channel.channel_ready()

    # ----- the call loop ------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        rpc: Any,
        request: Message,
        *,
        idempotent: bool,
    ) -> Any:
        loop = asyncio.get_running_loop()
        policy = self._policy
        deadline = loop.time() + policy.deadline_seconds
        attempt = 0
        while True:
            if not self._breaker.allow():
                raise ServiceUnavailableError("auth service unavailable (circuit open)")
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._breaker.release()
                raise ServiceUnavailableError("auth service unavailable (deadline exceeded)")
            attempt += 1
            try:
                response = await rpc(
                    request, timeout=min(policy.attempt_timeout_seconds, remaining)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    self._breaker.record_success()  # the service answered
                    raise error_from_rpc_error(exc) from None
                self._breaker.record_failure()
                log.warning(
                    "auth_remote_call_failed",
                    method=method,
                    status=exc.code().name,
                    attempt=attempt,
                    breaker=self._breaker.state.value,
                )
                if not idempotent or attempt >= policy.max_attempts:
                    raise ServiceUnavailableError(
                        f"auth service unavailable ({exc.code().name})"
                    ) from None
                delay = backoff_delay(
                    attempt, base=policy.backoff_base_seconds, cap=policy.backoff_max_seconds
                )
                if loop.time() + delay >= deadline:
                    raise ServiceUnavailableError(
                        "auth service unavailable (deadline exceeded)"
                    ) from None
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._breaker.release()
                raise
            self._breaker.record_success()
            return response

    # ----- token checks (never raise for bad tokens) ----------------------------------------

    def validate_jwt_format(self, token: object) -> bool:
        return validate_jwt_format(token, max_bytes=self._policy.max_token_bytes)

    def _local_rejection(self, token: object, kind: AuthContextKind) -> AuthResult | None:
        if token is None or token == "":
            return AuthResult.failure(AuthErrorCode.NO_TOKEN, "no token presented", kind)
        if not self.validate_jwt_format(token):
            return AuthResult.failure(
                AuthErrorCode.INVALID_FORMAT, "token is not a compact JWS", kind
            )
        return None

    async def _validate(
        self, request: auth_pb2.ValidateTokenRequest, kind: AuthContextKind
    ) -> AuthResult:
        try:
            response = await self._call(
                "ValidateToken", self._stub.ValidateToken, request, idempotent=True
            )
        except AuthError as exc:
            return AuthResult.failure(exc.error_code, exc.message, kind)
        result: AuthResult = result_from_proto(response)
        return result

    async def authenticate_token(
        self, token: str | None, context_kind: AuthContextKind = AuthContextKind.REST_API
    ) -> AuthResult:
        rejected = self._local_rejection(token, context_kind)
        if rejected is not None:
            return self._counters.record(rejected)
        request = auth_pb2.ValidateTokenRequest(
            token=str(token),
            context_kind=context_kind_to_proto(context_kind),
            expected_type=auth_pb2.TOKEN_TYPE_ACCESS,
        )
        return self._counters.record(await self._validate(request, context_kind))

    async def authenticate_service(
        self, token: str | None, service_id: str | None = None
    ) -> AuthResult:
        kind = AuthContextKind.INTERNAL_SERVICE
        rejected = self._local_rejection(token, kind)
        if rejected is not None:
            return self._counters.record(rejected)
        request = auth_pb2.ValidateTokenRequest(
            token=str(token),
            context_kind=context_kind_to_proto(kind),
            expected_type=auth_pb2.TOKEN_TYPE_SERVICE,
            service_id=service_id or "",
        )
        return self._counters.record(await self._validate(request, kind))

    # ----- accounts and sessions --------------------------------------------------------------

    async def register(
        self, email: str, password: str, display_name: str = "", *, client_id: str | None = None
    ) -> Account:
        request = auth_pb2.RegisterRequest(
            email=email, password=password, display_name=display_name
        )
        response = await self._call("Register", self._stub.Register, request, idempotent=False)
        return account_from_proto(response.account)

    async def login(self, email: str, password: str, *, client_id: str | None = None) -> TokenPair:
        request = auth_pb2.LoginRequest(email=email, password=password)
        response = await self._call("Login", self._stub.Login, request, idempotent=True)
        return token_pair_from_proto(response)

    async def refresh(self, refresh_token: str) -> TokenPair:
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token)
        response = await self._call("Refresh", self._stub.Refresh, request, idempotent=False)
        return token_pair_from_proto(response)

    async def logout(self, token: str) -> None:
        request = auth_pb2.LogoutRequest(token=token)
        await self._call("Logout", self._stub.Logout, request, idempotent=True)

    async def revoke_user_tokens(self, user_id: str, *, before: datetime | None = None) -> datetime:
        request = auth_pb2.RevokeUserTokensRequest(user_id=user_id)
        if before is not None:
            request.before.CopyFrom(timestamp(before))
        response = await self._call(
            "RevokeUserTokens", self._stub.RevokeUserTokens, request, idempotent=before is not None
        )
        return to_datetime(response.revoked_before)

    async def update_account(
        self,
        user_id: str,
        *,
        plan: Plan | None = None,
        roles: tuple[str, ...] | None = None,
        permissions: tuple[str, ...] | None = None,
    ) -> Account:
        request = auth_pb2.UpdateAccountRequest(user_id=user_id)
        if plan is not None:
            request.plan = plan_to_proto(plan)
        if roles is not None:
            request.roles.values.extend(roles)
            request.roles.SetInParent()
        if permissions is not None:
            request.permissions.values.extend(permissions)
            request.permissions.SetInParent()
        response = await self._call(
            "UpdateAccount", self._stub.UpdateAccount, request, idempotent=True
        )
        return account_from_proto(response)

    async def issue_service_token(
        self, service_id: str, service_secret: str, *, client_id: str | None = None
    ) -> ServiceToken:
        request = auth_pb2.IssueServiceTokenRequest(
            service_id=service_id, service_secret=service_secret
        )
        response = await self._call(
            "IssueServiceToken", self._stub.IssueServiceToken, request, idempotent=True
        )
        return service_token_from_proto(response)

    async def get_jwks(self) -> JsonWebKeySet:
        response = await self._call(
            "GetJWKS", self._stub.GetJWKS, auth_pb2.GetJWKSRequest(), idempotent=True
        )
        return jwks_from_proto(response)

    # ----- observability -----------------------------------------------------------------------

    async def stats(self) -> AuthStats:
        return self._counters.snapshot(circuit_state=self._breaker.state.value)

    async def health(self) -> AuthHealth:
        details = {"target": self._target, "circuit": self._breaker.state.value}
        if self._breaker.state is BreakerState.OPEN:
            return AuthHealth(state=HealthState.UNAVAILABLE, details=details)
        try:
            response = await self._call(
                "Health.Check",
                self._health_stub.Check,
                health_pb2.HealthCheckRequest(service="ssot.auth.v1.AuthService"),
                idempotent=True,
            )
        except AuthError as exc:
            details["error"] = exc.error_code.value
            return AuthHealth(state=HealthState.UNAVAILABLE, details=details)
        serving = response.status == health_pb2.HealthCheckResponse.SERVING
        details["serving"] = str(serving).lower()
        return AuthHealth(
            state=HealthState.OK if serving else HealthState.DEGRADED, details=details
        )
