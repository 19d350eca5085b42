"""Turning driver and pool exceptions into the package's typed errors.

Callers of ``data`` see :class:`~data.api.DataError` subclasses only, never a raw
SQLAlchemy, asyncpg, sqlite3 or socket exception: a backend that cannot be reached, is
shutting down or is overloaded becomes :class:`~data.api.DataUnavailableError`
(UNAVAILABLE), a row-level security refusal becomes
:class:`~data.api.DataAccessDeniedError`. Messages are generic; the original exception is
chained for debugging and logged by type and SQLSTATE only (never its SQL or parameters,
which may hold user content).
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import exc as sa_exc

from data.api import (
    DataAccessDeniedError,
    DataError,
    DataUnavailableError,
    InvalidInputError,
)

__all__ = ["is_disconnect", "is_foreign_key_violation", "translate_db_error"]

log = structlog.get_logger(__name__)

# SQLSTATE classes of "the server is not there for you right now": connection exception,
# insufficient resources, operator intervention (shutdown, cannot connect now), and
# invalid authorization (a misconfigured or dropped role cannot be fixed by the caller).
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "53", "57"})
_RETRYABLE_STATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_INSUFFICIENT_PRIVILEGE = "42501"


def _sqlstate(error: BaseException) -> str | None:
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_foreign_key_violation(error: sa_exc.IntegrityError) -> bool:
    """Whether an integrity error is a foreign key violation (not a duplicate key)."""
    if _sqlstate(error) == "23503":  # PostgreSQL foreign_key_violation
        return True
    # sqlite3 names the extended result code (Python 3.11+).
    return getattr(error.orig, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_FOREIGNKEY"


def is_disconnect(error: BaseException) -> bool:
    """Whether ``error`` means the connection (or the server) is gone."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    state = _sqlstate(error)
    if state is not None and state[:2] in _UNAVAILABLE_CLASSES:
        return True
    # Raw socket errors and timeouts can escape the driver while connecting.
    return isinstance(error, OSError | asyncio.TimeoutError | sa_exc.InterfaceError)


def translate_db_error(error: BaseException) -> DataError | None:
    """The typed error for a database-layer exception, or None if it is not one.

    None means a programming error (a bug), which should propagate unchanged.
    """
    if isinstance(error, DataError):
        return error
    state = _sqlstate(error)
    translated: DataError | None
    if isinstance(error, sa_exc.TimeoutError):
        translated = DataUnavailableError("no database connection became free in time")
    elif is_disconnect(error):
        translated = DataUnavailableError("the database is unavailable")
    elif state == _INSUFFICIENT_PRIVILEGE:
        translated = DataAccessDeniedError("the database refused this statement for this user")
    elif state in _RETRYABLE_STATES:
        translated = DataUnavailableError("the database aborted the transaction; retry")
    elif isinstance(error, sa_exc.IntegrityError):
        translated = InvalidInputError("the write conflicts with existing data")
    elif isinstance(error, sa_exc.DataError):
        translated = InvalidInputError("the database rejected a value")
    elif isinstance(error, sa_exc.OperationalError):
        # SQLite reports a busy database, a missing file or an I/O error this way.
        translated = DataUnavailableError("the database is unavailable")
    elif isinstance(error, sa_exc.DBAPIError) or state is not None:
        translated = DataError("the database failed to run the statement")
    else:
        return None
    log.warning(
        "data.backend_error",
        error_type=type(error).__name__,
        sqlstate=state,
        error_code=translated.error_code,
    )
    return translated
