"""The verified caller of the current request, as a ``ContextVar``.

The gRPC server interceptor binds it (together with the ``UserExecutionContext``) for the
duration of a handler; handlers read it with :func:`current_identity`. It is the
:class:`auth.api.AuthResult` of the presented token: ``token_type`` says whether the caller
is a user (access token) or a service (service token, ``user_id`` = service id).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from auth.api import AuthErrorCode, AuthResult, TokenError

__all__ = ["current_identity", "get_current_identity", "identity_scope"]

_identity: contextvars.ContextVar[AuthResult | None] = contextvars.ContextVar(
    "ssot_auth_identity", default=None
)


def get_current_identity() -> AuthResult | None:
    return _identity.get()


def current_identity() -> AuthResult:
    """The verified caller; raises :class:`auth.api.TokenError` (NO_TOKEN) when none."""
    identity = _identity.get()
    if identity is None:
        raise TokenError(
            "the request carries no verified identity", error_code=AuthErrorCode.NO_TOKEN
        )
    return identity


@contextmanager
def identity_scope(identity: AuthResult) -> Iterator[AuthResult]:
    if not identity.success:
        raise ValueError("only a successful AuthResult can be bound as the identity")
    token = _identity.set(identity)
    try:
        yield identity
    finally:
        _identity.reset(token)
