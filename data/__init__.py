"""``data``: per-user data access, the SSOT ``DataAccessFactory``.

Open a scope for a context and use its repositories; the user is always the context's::

    factory = SqlDataAccessFactory.from_config(DataAccessConfig(database_url=...))
    async with factory.create_user_context(ctx) as scope:
        thread = await scope.threads.create(title="Plans")
        await scope.messages.append(thread.id, role=MessageRole.USER, content="hi")

SQLite (embedded default) or PostgreSQL with row-level security; an in-memory or Redis
per-user cache. The interface is :mod:`data.api`; the gRPC adapters are
:mod:`data.grpc_server` and :mod:`data.grpc_client`.
"""

from data.api import (
    AlreadyExistsError,
    DataAccessDeniedError,
    DataAccessFactory,
    DataError,
    DataUnavailableError,
    FactoryClosedError,
    FactoryStats,
    InvalidInputError,
    InvalidTransitionError,
    Message,
    MessageRepository,
    MessageRole,
    NotAUserContextError,
    NotAuthenticatedError,
    Note,
    NoteRepository,
    NotFoundError,
    Run,
    RunEvent,
    RunEventRepository,
    RunRepository,
    RunStatus,
    ScopeClosedError,
    ScopeLimitExceededError,
    Thread,
    ThreadRepository,
    ToolUsage,
    ToolUsageRepository,
    TransactionAbortedError,
    UserCache,
    UserDataAccess,
    UserDataAccessProvider,
    UserDataScope,
)
from data.factory import DataAccessConfig, SqlDataAccessFactory
from data.migrate import upgrade_schema

__all__ = [
    "AlreadyExistsError",
    "DataAccessConfig",
    "DataAccessDeniedError",
    "DataAccessFactory",
    "DataError",
    "DataUnavailableError",
    "FactoryClosedError",
    "FactoryStats",
    "InvalidInputError",
    "InvalidTransitionError",
    "Message",
    "MessageRepository",
    "MessageRole",
    "NotAUserContextError",
    "NotAuthenticatedError",
    "NotFoundError",
    "Note",
    "NoteRepository",
    "Run",
    "RunEvent",
    "RunEventRepository",
    "RunRepository",
    "RunStatus",
    "ScopeClosedError",
    "ScopeLimitExceededError",
    "SqlDataAccessFactory",
    "Thread",
    "ThreadRepository",
    "ToolUsage",
    "ToolUsageRepository",
    "TransactionAbortedError",
    "UserCache",
    "UserDataAccess",
    "UserDataAccessProvider",
    "UserDataScope",
    "upgrade_schema",
]
