"""Conversions between the api models and the ``ssot.auth.v1`` messages (both directions)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from auth import auth_pb2
from auth.api import (
    Account,
    AuthContextKind,
    AuthErrorCode,
    AuthResult,
    JsonWebKey,
    JsonWebKeySet,
    Plan,
    ServiceToken,
    TokenPair,
    TokenType,
)

__all__ = [
    "account_from_proto",
    "account_to_proto",
    "context_kind_from_proto",
    "context_kind_to_proto",
    "jwks_from_proto",
    "jwks_to_proto",
    "plan_from_proto",
    "plan_to_proto",
    "result_from_proto",
    "result_to_proto",
    "service_token_from_proto",
    "service_token_to_proto",
    "timestamp",
    "to_datetime",
    "token_pair_from_proto",
    "token_pair_to_proto",
    "token_type_from_proto",
    "token_type_to_proto",
]

_PLAN_TO = {
    Plan.FREE: auth_pb2.PLAN_FREE,
    Plan.PRO: auth_pb2.PLAN_PRO,
    Plan.ENTERPRISE: auth_pb2.PLAN_ENTERPRISE,
    Plan.DEVELOPER: auth_pb2.PLAN_DEVELOPER,
}
_PLAN_FROM = {value: key for key, value in _PLAN_TO.items()}
_TYPE_TO = {
    TokenType.ACCESS: auth_pb2.TOKEN_TYPE_ACCESS,
    TokenType.REFRESH: auth_pb2.TOKEN_TYPE_REFRESH,
    TokenType.SERVICE: auth_pb2.TOKEN_TYPE_SERVICE,
}
_TYPE_FROM = {value: key for key, value in _TYPE_TO.items()}
_KIND_TO = {
    AuthContextKind.REST_API: auth_pb2.CONTEXT_KIND_REST_API,
    AuthContextKind.WEBSOCKET: auth_pb2.CONTEXT_KIND_WEBSOCKET,
    AuthContextKind.GRPC: auth_pb2.CONTEXT_KIND_GRPC,
    AuthContextKind.INTERNAL_SERVICE: auth_pb2.CONTEXT_KIND_INTERNAL_SERVICE,
}
_KIND_FROM = {value: key for key, value in _KIND_TO.items()}


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def to_datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def plan_to_proto(plan: Plan) -> auth_pb2.Plan.ValueType:
    return _PLAN_TO[plan]


def plan_from_proto(value: auth_pb2.Plan.ValueType) -> Plan | None:
    return _PLAN_FROM.get(value)


def token_type_to_proto(token_type: TokenType) -> auth_pb2.TokenType.ValueType:
    return _TYPE_TO[token_type]


def token_type_from_proto(value: auth_pb2.TokenType.ValueType) -> TokenType | None:
    return _TYPE_FROM.get(value)


def context_kind_to_proto(kind: AuthContextKind) -> auth_pb2.ContextKind.ValueType:
    return _KIND_TO[kind]


def context_kind_from_proto(value: auth_pb2.ContextKind.ValueType) -> AuthContextKind:
    return _KIND_FROM.get(value, AuthContextKind.REST_API)


def account_to_proto(account: Account) -> auth_pb2.Account:
    return auth_pb2.Account(
        user_id=account.user_id,
        email=account.email,
        display_name=account.display_name,
        plan=plan_to_proto(account.plan),
        roles=account.roles,
        permissions=account.permissions,
        created_at=timestamp(account.created_at),
    )


def account_from_proto(message: auth_pb2.Account) -> Account:
    return Account(
        user_id=message.user_id,
        email=message.email,
        display_name=message.display_name,
        plan=plan_from_proto(message.plan) or Plan.FREE,
        roles=tuple(message.roles),
        permissions=tuple(message.permissions),
        created_at=to_datetime(message.created_at),
    )


def token_pair_to_proto(pair: TokenPair) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        user_id=pair.user_id,
        session_id=pair.session_id,
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type=pair.token_type,
        access_expires_at=timestamp(pair.access_expires_at),
        refresh_expires_at=timestamp(pair.refresh_expires_at),
    )


def token_pair_from_proto(message: auth_pb2.TokenPair) -> TokenPair:
    return TokenPair(
        user_id=message.user_id,
        session_id=message.session_id,
        access_token=message.access_token,
        refresh_token=message.refresh_token,
        token_type=message.token_type or "Bearer",
        access_expires_at=to_datetime(message.access_expires_at),
        refresh_expires_at=to_datetime(message.refresh_expires_at),
    )


def service_token_to_proto(token: ServiceToken) -> auth_pb2.ServiceToken:
    return auth_pb2.ServiceToken(
        service_id=token.service_id, token=token.token, expires_at=timestamp(token.expires_at)
    )


def service_token_from_proto(message: auth_pb2.ServiceToken) -> ServiceToken:
    return ServiceToken(
        service_id=message.service_id,
        token=message.token,
        expires_at=to_datetime(message.expires_at),
    )


def result_to_proto(result: AuthResult) -> auth_pb2.AuthResult:
    message = auth_pb2.AuthResult(
        success=result.success,
        user_id=result.user_id or "",
        email=result.email or "",
        roles=result.roles,
        permissions=result.permissions,
        session_id=result.session_id or "",
        jti=result.jti or "",
        context_kind=context_kind_to_proto(result.context_kind),
        error_code=result.error_code.value if result.error_code else "",
        error=result.error or "",
        validated_at=timestamp(result.validated_at),
    )
    if result.plan is not None:
        message.plan = plan_to_proto(result.plan)
    if result.token_type is not None:
        message.token_type = token_type_to_proto(result.token_type)
    if result.issued_at is not None:
        message.issued_at.CopyFrom(timestamp(result.issued_at))
    if result.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(result.expires_at))
    return message


def _error_code(value: str) -> AuthErrorCode | None:
    if not value:
        return None
    try:
        return AuthErrorCode(value)
    except ValueError:
        return AuthErrorCode.INTERNAL_ERROR


def result_from_proto(message: auth_pb2.AuthResult) -> AuthResult:
    return AuthResult(
        success=message.success,
        user_id=message.user_id or None,
        email=message.email if message.success else None,
        plan=plan_from_proto(message.plan),
        roles=tuple(message.roles),
        permissions=tuple(message.permissions),
        token_type=token_type_from_proto(message.token_type),
        session_id=message.session_id or None,
        jti=message.jti or None,
        issued_at=to_datetime(message.issued_at) if message.HasField("issued_at") else None,
        expires_at=to_datetime(message.expires_at) if message.HasField("expires_at") else None,
        context_kind=context_kind_from_proto(message.context_kind),
        error_code=_error_code(message.error_code),
        error=message.error or None,
        validated_at=to_datetime(message.validated_at),
    )


def jwks_to_proto(jwks: JsonWebKeySet) -> auth_pb2.JsonWebKeySet:
    return auth_pb2.JsonWebKeySet(
        keys=[
            auth_pb2.JsonWebKey(
                kty=key.kty,
                kid=key.kid,
                alg=key.alg,
                use=key.use,
                crv=key.crv or "",
                x=key.x or "",
                n=key.n or "",
                e=key.e or "",
            )
            for key in jwks.keys
        ]
    )


def jwks_from_proto(message: auth_pb2.JsonWebKeySet) -> JsonWebKeySet:
    return JsonWebKeySet(
        keys=tuple(
            JsonWebKey(
                kty=key.kty,
                kid=key.kid,
                alg=key.alg,
                use=key.use or "sig",
                crv=key.crv or None,
                x=key.x or None,
                n=key.n or None,
                e=key.e or None,
            )
            for key in message.keys
        )
    )
