"""The interface itself: one error hierarchy with stable codes, and who implements what."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from context import UserExecutionContext, new_user_id
from data import (
    DataAccessConfig,
    DataAccessFactory,
    DataError,
    RunStatus,
    SqlDataAccessFactory,
    UserDataAccessProvider,
    UserDataScope,
)
from data.cache import MemoryCacheBackend, RedisCacheBackend
from data.grpc_client import GrpcDataAccessClient
from data.migrate import upgrade_schema
from data.scope import SqlUserDataScope


def _all_errors() -> list[type[DataError]]:
    found: list[type[DataError]] = []
    pending: list[type[DataError]] = [DataError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_error_codes_are_unique_and_statuses_exist() -> None:
    errors = _all_errors()
    codes = [cls.error_code for cls in errors]
    assert len(codes) == len(set(codes))
    for cls in errors:
        assert grpc.StatusCode[cls.grpc_status_name]
        assert cls.error_code.isupper()
    statuses = {cls.__name__: cls.grpc_status_name for cls in errors}
    assert statuses["NotFoundError"] == "NOT_FOUND"
    assert statuses["ScopeLimitExceededError"] == "RESOURCE_EXHAUSTED"
    assert statuses["InvalidInputError"] == "INVALID_ARGUMENT"
    assert statuses["NotAUserContextError"] == "INVALID_ARGUMENT"
    assert statuses["DataUnavailableError"] == "UNAVAILABLE"


def test_run_status_transitions() -> None:
    assert RunStatus.PENDING.can_become(RunStatus.RUNNING)
    assert RunStatus.PENDING.can_become(RunStatus.CANCELLED)
    assert not RunStatus.PENDING.can_become(RunStatus.COMPLETED)
    assert RunStatus.RUNNING.can_become(RunStatus.COMPLETED)
    assert not RunStatus.RUNNING.can_become(RunStatus.PENDING)
    for terminal in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        assert terminal.is_terminal
        assert not any(terminal.can_become(other) for other in RunStatus)


def test_implementations_satisfy_the_protocols() -> None:
    # Checked by mypy (the assignments below are typed against the Protocols).
    def factory(value: SqlDataAccessFactory) -> DataAccessFactory:
        return value

    def provider(value: SqlDataAccessFactory) -> UserDataAccessProvider:
        return value

    def remote(value: GrpcDataAccessClient) -> UserDataAccessProvider:
        return value

    def scope(value: SqlUserDataScope) -> UserDataScope:
        return value

    assert all(callable(f) for f in (factory, provider, remote, scope))


async def test_factory_from_config(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data.db'}"
    await upgrade_schema(url)
    config = DataAccessConfig(
        database_url=url, max_scopes_per_user=3, scope_ttl_seconds=60, cache_url="memory://"
    )
    factory = SqlDataAccessFactory.from_config(config)
    try:
        assert isinstance(factory.cache_backend, MemoryCacheBackend)
        stats = factory.stats()
        assert (stats.max_scopes_per_user, stats.scope_ttl_seconds) == (3, 60)
        async with factory.create_user_context(
            UserExecutionContext.from_request(new_user_id())
        ) as scope:
            await scope.notes.add("configured")
    finally:
        await factory.shutdown()
    with_redis = SqlDataAccessFactory.from_config(
        DataAccessConfig(database_url=url, cache_url="redis://:secret@127.0.0.1:1/0")
    )
    assert isinstance(with_redis.cache_backend, RedisCacheBackend)
    await with_redis.shutdown()
    assert "secret" not in repr(DataAccessConfig(database_url="postgresql://u:secret@h/db"))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_scopes_per_user"):
        DataAccessConfig(max_scopes_per_user=0)
    with pytest.raises(ValueError, match="extra"):
        DataAccessConfig.model_validate({"database_url": "sqlite:///x.db", "oops": 1})
