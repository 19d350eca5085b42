"""What the data-isolation scenarios share: the platform in both compositions, users with
verified sessions, hermetic PostgreSQL and Redis, and the clean-up checks.

* :func:`composition` - the fixture that runs a scenario twice: ``inprocess`` (the
  embedded platform's own handles) and ``grpc`` (every service behind the auth
  interceptor on 127.0.0.1:0, reached through per-user gRPC clients).
* :func:`deployment` - the real platform (:func:`server.composition.build_platform`) for
  one scenario, with users registered through the composition's auth service; on a clean
  exit it checks that everything was given back (:func:`assert_shut_down`).
* :class:`UserSession` - one user's data and agent handles. In process, data access goes
  through the same two steps the gRPC interceptor makes: the user's token is verified for
  the request context (``platform.caller``: a context of another user is refused), then
  the data factory opens the scope. Over gRPC the server does both.
* ``pg_server`` / ``pg_database`` - one PostgreSQL server per test module (the harness's
  own, with the non-owner, NOBYPASSRLS ``app`` role), a fresh migrated database per test;
  ``redis`` - one Redis server per test module, emptied for each test.

The fixtures are registered in a scenario module by importing them (listed in the
module's ``__all__``); there is no conftest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pytest

from auth.api import AuthError, UnifiedAuthenticationService
from auth.grpc_client import ClientPolicy, GrpcAuthClient
from context.api import UserExecutionContext
from data.api import (
    DataAccessDeniedError,
    NotAuthenticatedError,
    UserDataAccess,
    UserDataAccessProvider,
)
from data.migrate import upgrade_schema
from data.scope import SqlUserDataScope
from dispatch.agents.api import AgentService, RunHandle, RunInfo
from dispatch.engine.api import CallerMismatchError, ToolCaller
from dispatch.tools.api import RunEventEnvelope
from dispatch.tools.sinks import BufferingEventSink
from itests.harness import PostgresDatabase, PostgresServer, RedisServer
from server.composition import (
    GrpcHost,
    Platform,
    RemoteServices,
    build_platform,
    connect_grpc,
    serve_grpc,
)
from server.settings import ServerSettings
from server.testing import FAST_AUTH, TestAccount, new_account, settings_for_tests

__all__ = [
    "COMPOSITIONS",
    "FORBIDDEN_OTHER_USER",
    "PATIENT_AUTH",
    "UNAUTHENTICATED",
    "Composition",
    "Deployment",
    "ShiftableClock",
    "StartedRun",
    "UserSession",
    "assert_idle",
    "assert_mentions_none",
    "assert_shut_down",
    "composition",
    "deployment",
    "eventually",
    "grpc_status_of",
    "pg_database",
    "pg_server",
    "pg_template",
    "postgres_settings",
    "redis",
]

Composition = Literal["inprocess", "grpc"]
COMPOSITIONS: tuple[Composition, ...] = ("inprocess", "grpc")

#: What a request for another user's data is refused with: in process by the caller check
#: (``CallerMismatchError``), over gRPC by the auth interceptor (PERMISSION_DENIED).
FORBIDDEN_OTHER_USER: tuple[type[Exception], ...] = (CallerMismatchError, DataAccessDeniedError)
#: What a request without a valid user token is refused with: in process by token
#: verification (``AuthError``), over gRPC by the interceptor or the data servicer
#: (UNAUTHENTICATED).
UNAUTHENTICATED: tuple[type[Exception], ...] = (AuthError, NotAuthenticatedError)

_WAIT = 20.0
_SHUTDOWN_WITHIN = 60.0


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(params=COMPOSITIONS)
def composition(request: pytest.FixtureRequest) -> Composition:
    """The scenario runs once in process and once over gRPC."""
    return cast(Composition, request.param)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test module (tests may stop and restart it)."""
    with PostgresServer() as server:
        yield server


def _run_coroutine(work: Callable[[], Any]) -> None:
    """Run an async job to completion on its own loop in a worker thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, work()).result()


@pytest.fixture(scope="module")
def pg_template(pg_server: PostgresServer) -> str:
    """A database migrated once (as the owner, granting the app role); tests copy it."""
    template = pg_server.create_database()
    _run_coroutine(
        lambda: upgrade_schema(template.sqlalchemy_url("owner"), app_role=pg_server.app.name)
    )
    return template.name


@pytest.fixture
def pg_database(pg_server: PostgresServer, pg_template: str) -> Iterator[PostgresDatabase]:
    """A fresh copy of the migrated template for one test, dropped afterwards."""
    if not pg_server.running:
        pg_server.restart()
    database = pg_server.create_database(template=pg_template)
    try:
        yield database
    finally:
        if not pg_server.running:
            pg_server.restart()
        database.drop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server per test module."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The module's Redis server, running and empty."""
    if not redis_server.running:
        redis_server.restart()
    redis_server.flushall()
    return redis_server


def postgres_settings(
    data_dir: Path, database: PostgresDatabase, **overrides: Any
) -> ServerSettings:
    """Platform settings whose user data lives in ``database``: the services connect as
    the non-owner ``app`` role, the schema is migrated as the owner."""
    return settings_for_tests(
        data_dir,
        database_url=database.sqlalchemy_url("app"),
        database_migration_url=database.sqlalchemy_url("owner"),
        database_app_role=database.server.app.name,
        **overrides,
    )


# -- small helpers -----------------------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], within: float = _WAIT) -> None:
    """Wait until ``predicate()`` holds: for server-side state no client can await."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 -- no event exists for this state
            await asyncio.sleep(0.005)


def grpc_status_of(error: BaseException) -> str:
    """The gRPC status an error of ours maps to (its ``grpc_status_name``), else ``""``."""
    return str(getattr(error, "grpc_status_name", ""))


def assert_mentions_none(value: object, *secrets: str) -> None:
    """``value`` (its ``str`` and ``repr``) names none of ``secrets``."""
    shown = f"{value!s} {value!r}"
    leaked = [secret for secret in secrets if secret and secret in shown]
    assert not leaked, f"{leaked} leaked into {shown[:500]}"


class ShiftableClock:
    """A ``time.time``-like clock for the auth service that a test can move ahead (so a
    token issued right after a revocation is not in the revoked millisecond)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# -- runs --------------------------------------------------------------------------------------


@dataclass(eq=False)
class StartedRun:
    """A run a session started: its IDs and its live events (in both compositions)."""

    handle: RunHandle
    _events: Callable[[], AsyncIterator[RunEventEnvelope]] = field(repr=False)

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    @property
    def thread_id(self) -> str:
        return self.handle.thread_id

    def events(self) -> AsyncIterator[RunEventEnvelope]:
        """The run's events from the first, ending after the run has ended."""
        return self._events()


# -- sessions ----------------------------------------------------------------------------------


class _VerifiedDataAccess:
    """In process: the platform's data factory behind token verification, the two steps
    the gRPC interceptor and data servicer make on the server side.

    The factory's own checks run first, at once (anything but a UserExecutionContext is
    refused by the factory itself); then the token is verified for the context
    (``platform.caller`` refuses an invalid or revoked token and a context of another
    user); only then is the scope opened.
    """

    def __init__(self, platform: Platform, token: Callable[[], str]) -> None:
        self._platform = platform
        self._token = token

    def create_user_context(
        self, ctx: UserExecutionContext
    ) -> AbstractAsyncContextManager[UserDataAccess]:
        entry = self._platform.data.create_user_context(ctx)
        return self._verified(ctx, entry)

    @asynccontextmanager
    async def _verified(
        self, ctx: UserExecutionContext, entry: AbstractAsyncContextManager[UserDataAccess]
    ) -> AsyncIterator[UserDataAccess]:
        await self._platform.caller(self._token(), ctx)
        async with entry as scope:
            yield scope


@dataclass(eq=False)
class UserSession:
    """One user's handles on the platform, in one composition."""

    name: str
    account: TestAccount
    composition: Composition
    platform: Platform
    remote: RemoteServices | None
    token: str = field(repr=False)
    _data: UserDataAccessProvider | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.remote is not None:
            self._data = self.remote.data
        else:
            self._data = _VerifiedDataAccess(self.platform, lambda: self.token)

    @property
    def user_id(self) -> str:
        return self.account.user_id

    @property
    def data(self) -> UserDataAccessProvider:
        """The user's data access: in process (verified first) or over gRPC."""
        assert self._data is not None
        return self._data

    @property
    def agents(self) -> AgentService:
        return self.remote.agents if self.remote is not None else self.platform.agents

    async def caller(self, ctx: UserExecutionContext | None = None) -> ToolCaller:
        """The caller verified from this session's token (for ``ctx`` or a new context)."""
        if self.remote is not None:
            return await self.remote.caller(ctx)
        return await self.platform.caller(self.token, ctx)

    async def context(self) -> UserExecutionContext:
        """A new root request context of this user.

        In process it is built from the verified token (``platform.caller``); over gRPC
        the client names its own user and the server verifies the context against the
        token on every call.
        """
        if self.remote is not None:
            return UserExecutionContext.from_request(self.user_id)
        return (await self.caller()).context

    async def open(self) -> AbstractAsyncContextManager[UserDataAccess]:
        """Data access for a new verified request context of this user."""
        return self.data.create_user_context(await self.context())

    @asynccontextmanager
    async def local_scope(self) -> AsyncIterator[SqlUserDataScope]:
        """An in-process unit of work of the platform's data factory, for a context
        verified from this user's token (raw SQL, cache and transactions live here)."""
        ctx = (await self.platform.caller(self.token)).context
        async with self.platform.internals.data.create_user_context(ctx) as scope:
            yield scope

    async def start(
        self, message: str, *, agent: str = "assistant", thread_id: str | None = None
    ) -> StartedRun:
        """Start a run of ``agent`` as this user; its events can be followed."""
        caller = await self.caller()
        if self.remote is not None:
            remote_handle = await self.remote.agents.start_run(
                caller, agent, message, thread_id=thread_id
            )
            return StartedRun(remote_handle, remote_handle.events)
        sinks: list[BufferingEventSink] = []

        def observer(ctx: UserExecutionContext, agent_name: str) -> BufferingEventSink:
            sink = BufferingEventSink(ctx)
            sinks.append(sink)
            return sink

        runner = self.platform.internals.runner
        handle = await runner.start_run(
            caller, agent, message, thread_id=thread_id, observer=observer
        )
        return StartedRun(handle, sinks[0].stream)

    async def finish(self, run: StartedRun) -> tuple[RunInfo, list[RunEventEnvelope]]:
        """Every event of ``run`` until it has ended, and the run as recorded."""
        events = [event async for event in run.events()]
        return await self.agents.get_run(await self.caller(), run.run_id), events

    async def run(
        self, message: str, *, agent: str = "assistant", thread_id: str | None = None
    ) -> tuple[RunInfo, list[RunEventEnvelope]]:
        """Start a run and wait for its end."""
        return await self.finish(await self.start(message, agent=agent, thread_id=thread_id))

    async def aclose(self) -> None:
        if self.remote is not None:
            await self.remote.aclose()


#: The auth client policy of the scenarios' gRPC clients: patient, because a loaded test
#: machine must not turn a slow register or token check into a failure (non-idempotent
#: calls are still never retried), and no circuit breaker between tests' calls.
PATIENT_AUTH = ClientPolicy(
    deadline_seconds=60.0,
    attempt_timeout_seconds=20.0,
    breaker_failure_threshold=1000,
)


async def _connect(address: str, token: str | None) -> RemoteServices:
    """``connect_grpc`` for one token, its auth client using :data:`PATIENT_AUTH`."""
    remote = await connect_grpc(address, access_token=token, ready_timeout=30.0)
    await remote.auth.close()
    remote.auth = GrpcAuthClient(address, policy=PATIENT_AUTH)
    return remote


@dataclass(eq=False)
class Deployment:
    """The platform of one scenario in one composition, and its users' sessions."""

    composition: Composition
    platform: Platform
    host: GrpcHost | None
    sessions: list[UserSession] = field(default_factory=list)
    _anonymous: RemoteServices | None = field(default=None, repr=False)
    _extra_clients: list[RemoteServices] = field(default_factory=list, repr=False)

    @property
    def address(self) -> str:
        assert self.host is not None
        return self.host.address

    async def auth(self) -> UnifiedAuthenticationService:
        """The auth service as this composition reaches it (over gRPC: anonymously)."""
        if self.host is None:
            return self.platform.auth
        if self._anonymous is None:
            self._anonymous = await _connect(self.host.address, None)
        return self._anonymous.auth

    async def data_for_token(self, token: str | None) -> UserDataAccessProvider:
        """Data access presenting ``token`` (or no token at all), whoever it belongs to."""
        if self.host is None:
            return _VerifiedDataAccess(self.platform, lambda: token or "")
        remote = await _connect(self.host.address, token)
        self._extra_clients.append(remote)
        return remote.data

    async def remote_for_token(self, token: str | None) -> RemoteServices:
        """gRPC clients presenting ``token`` (the ``grpc`` composition only)."""
        remote = await _connect(self.address, token)
        self._extra_clients.append(remote)
        return remote

    async def user(self, name: str) -> UserSession:
        """Register and log in a new user through the composition's auth service."""
        account = await new_account(await self.auth(), name)
        return await self.session_for(name, account, account.access_token)

    async def users(self, *names: str, concurrency: int = 8) -> list[UserSession]:
        """Several new users, registered a few at a time (registration is not what the
        scenarios measure, and a loaded machine must not time it out)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(name: str) -> UserSession:
            async with gate:
                return await self.user(name)

        # Every registration is let finish, even when one fails: cancelling calls in
        # flight could cancel the auth service's database work half-way.
        results = await asyncio.gather(*(one(name) for name in names), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result for result in results if isinstance(result, UserSession)]

    async def session_for(self, name: str, account: TestAccount, token: str) -> UserSession:
        """A session of ``account`` acting with ``token``."""
        remote = None
        if self.host is not None:
            remote = await _connect(self.host.address, token)
        session = UserSession(
            name=name,
            account=account,
            composition=self.composition,
            platform=self.platform,
            remote=remote,
            token=token,
        )
        self.sessions.append(session)
        return session

    async def relogin(self, session: UserSession) -> UserSession:
        """A new session of the same account with a freshly issued token."""
        pair = await self.platform.auth.login(session.account.email, session.account.password)
        return await self.session_for(session.name, session.account, pair.access_token)

    async def close_clients(self) -> None:
        """Close every client channel and stop the gRPC server."""
        for session in self.sessions:
            await session.aclose()
        self.sessions.clear()
        for remote in self._extra_clients:
            await remote.aclose()
        self._extra_clients.clear()
        if self._anonymous is not None:
            await self._anonymous.aclose()
            self._anonymous = None
        if self.host is not None:
            await self.host.stop()

    async def aclose(self) -> None:
        try:
            await self.close_clients()
        finally:
            await self.platform.aclose(grace_seconds=5.0)


def _sqlite_workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@asynccontextmanager
async def deployment(
    composition: Composition,
    data_dir: Path,
    *,
    settings: ServerSettings | None = None,
    **platform_kwargs: Any,
) -> AsyncIterator[Deployment]:
    """The platform for one scenario, served over gRPC for the ``grpc`` composition.

    On a clean exit the clients, the gRPC server and the platform are closed and
    :func:`assert_shut_down` checks that nothing is left over.
    """
    tasks_before = asyncio.all_tasks()
    workers_before = _sqlite_workers()
    platform = await build_platform(
        settings or settings_for_tests(data_dir),
        auth_overrides=platform_kwargs.pop("auth_overrides", FAST_AUTH),
        **platform_kwargs,
    )
    host: GrpcHost | None = None
    try:
        if composition == "grpc":
            host = await serve_grpc(platform)
    except BaseException:
        await platform.aclose(grace_seconds=0)
        raise
    deployed = Deployment(composition=composition, platform=platform, host=host)
    try:
        yield deployed
    except BaseException:
        try:
            async with asyncio.timeout(_SHUTDOWN_WITHIN):
                await deployed.aclose()
        finally:
            await _reap(_new_tasks(tasks_before))
        raise
    try:
        async with asyncio.timeout(_SHUTDOWN_WITHIN):
            await deployed.aclose()
    except TimeoutError:
        raise AssertionError(f"the platform did not shut down within {_SHUTDOWN_WITHIN}s") from None
    await assert_shut_down(platform, tasks_before, workers_before)


def assert_idle(platform: Platform) -> None:
    """Nothing is held while the platform runs on: no run, gateway run, dispatcher, data
    scope, checked-out database connection, WebSocket connection or held token."""
    leftovers = platform.leftovers()
    assert leftovers == dict.fromkeys(leftovers, 0), leftovers
    runner = platform.internals.runner.stats()
    assert runner.active_runs_per_user == {}
    data = platform.internals.data.stats()
    assert data.scopes_per_user == {}
    dispatchers = platform.internals.dispatchers.stats()
    assert dispatchers.dispatchers_per_user == {}
    assert dispatchers.leaked == 0


async def assert_shut_down(
    platform: Platform,
    tasks_before: set[asyncio.Task[Any]] | None = None,
    workers_before: Sequence[threading.Thread] | set[threading.Thread] = (),
) -> None:
    """After ``platform.aclose()``: everything idle, the data factory closed with no
    database connection open, no task and no SQLite connection thread left behind."""
    assert_idle(platform)
    data = platform.internals.data.stats()
    assert data.closed
    assert data.connections_open == 0
    assert not data.cleanup_task_running
    assert platform.internals.router.stats().connections == 0
    started = _sqlite_workers() - set(workers_before)
    for thread in started:
        await asyncio.to_thread(thread.join, 5.0)
    assert not [t for t in started if t.is_alive()], "a SQLite connection was left open"
    if tasks_before is not None:
        await asyncio.sleep(0)
        stray = _new_tasks(tasks_before)
        if stray:
            shown = sorted(repr(task) for task in stray)
            await _reap(stray)
            raise AssertionError(f"tasks left behind: {shown}")


def _new_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks of this loop that were not there ``before`` (but the current one)."""
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() - before if task is not current}


async def _reap(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` until they end (a few rounds, bounded), so that a failing scenario
    reports its failure instead of hanging the event loop's close.

    A task may need more than one cancellation: SQLAlchemy's aiosqlite adapter, when a
    statement is cancelled twice, leaves a graceful-close task whose ``finally`` awaits a
    worker thread that has already stopped; only a further cancellation ends it.
    """
    for _ in range(5):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)
