"""The current context of the running task or thread.

One ``ContextVar`` holds the ``UserExecutionContext`` being served. asyncio copies the
contextvars into every task it creates, so concurrent requests each see their own context,
and a scope entered inside one task never leaks into another.

:func:`context_scope` binds a context for the duration of a ``with`` or ``async with`` block,
and also binds ``user_id``, ``thread_id``, ``run_id`` and ``request_id`` into
``structlog.contextvars`` so every log line written inside the block carries them (when the
structlog configuration includes ``structlog.contextvars.merge_contextvars``). On exit both
are restored exactly as they were, also on exceptions and when scopes are nested.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from types import TracebackType
from typing import Any, cast

import structlog

from context.errors import NoCurrentContextError
from context.execution_context import UserExecutionContext

__all__ = [
    "LOG_CONTEXT_KEYS",
    "ContextScope",
    "context_scope",
    "current_context",
    "get_current_context",
]

#: The context fields bound into structlog's contextvars inside a scope.
LOG_CONTEXT_KEYS: tuple[str, ...] = ("user_id", "thread_id", "run_id", "request_id")

_current: contextvars.ContextVar[UserExecutionContext | None] = contextvars.ContextVar(
    "ssot_user_execution_context", default=None
)


def get_current_context() -> UserExecutionContext | None:
    """The context bound by the innermost active scope, or ``None`` outside any scope."""
    return _current.get()


def current_context() -> UserExecutionContext:
    """The context bound by the innermost active scope.

    Raises :class:`NoCurrentContextError` outside any scope: code that acts for a user must
    never run without knowing which user.
    """
    ctx = _current.get()
    if ctx is None:
        raise NoCurrentContextError(
            "no UserExecutionContext is bound here; run this code inside context_scope(ctx)"
        )
    return ctx


class ContextScope:
    """Binds one context while active; use via :func:`context_scope`.

    A scope object can be entered once at a time and must be exited in the same task or
    thread that entered it (a ``ContextVar`` token cannot be reset elsewhere).
    """

    __slots__ = ("_context", "_log_tokens", "_token")

    def __init__(self, ctx: UserExecutionContext) -> None:
        if not isinstance(cast(object, ctx), UserExecutionContext):
            raise TypeError(f"context_scope needs a UserExecutionContext, got {type(ctx).__name__}")
        self._context = ctx
        self._token: contextvars.Token[UserExecutionContext | None] | None = None
        self._log_tokens: Mapping[str, contextvars.Token[Any]] = {}

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    def __enter__(self) -> UserExecutionContext:
        if self._token is not None:
            raise RuntimeError("this context scope is already active; create a new one")
        ctx = self._context
        self._token = _current.set(ctx)
        self._log_tokens = structlog.contextvars.bind_contextvars(
            **{key: getattr(ctx, key) for key in LOG_CONTEXT_KEYS}
        )
        return ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token, log_tokens = self._token, self._log_tokens
        if token is None:
            raise RuntimeError("this context scope is not active")
        self._token, self._log_tokens = None, {}
        try:
            structlog.contextvars.reset_contextvars(**log_tokens)
        finally:
            _current.reset(token)

    async def __aenter__(self) -> UserExecutionContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


def context_scope(ctx: UserExecutionContext) -> ContextScope:
    """Bind ``ctx`` as the current context (and into structlog) for a ``with`` or
    ``async with`` block; restore the previous bindings on exit."""
    return ContextScope(ctx)
