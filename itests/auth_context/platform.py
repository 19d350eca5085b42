"""The real platform for the auth & context scenarios, in both compositions.

Every scenario of this category composes the services through :mod:`server.composition`
and reaches them the way a client does:

* ``inprocess`` - the embedded platform's services by their api Protocol types: the
  in-process auth service, ``platform.agents``, ``platform.data``, ``platform.engine``,
  and a verified :class:`~dispatch.engine.api.ToolCaller` from
  ``platform.caller(token, ctx)``;
* ``grpc`` - the same Protocols over gRPC (:func:`server.composition.connect_grpc`):
  every service behind the auth interceptor of :func:`server.composition.serve_grpc` on
  127.0.0.1 port 0, one channel per user carrying that user's token, accounts registered
  and logged in over gRPC too. With ``with_gateway`` the WebSocket side is a gateway node
  of its own (:func:`server.composition.build_gateway_stack`): it verifies handshake
  tokens with the auth service over gRPC and starts runs on the AgentService over gRPC.

:func:`open_deployment` builds one deployment under the test's own directory. When the
scenario leaves it normally, it shuts everything down and asserts that nothing is left:
no runs, dispatchers, data scopes or checked-out database connections, no WebSocket
connections or held credentials, the database engine disposed and no task of ours
still alive.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from auth.api import TokenPair, UnifiedAuthenticationService
from auth.grpc_client import ClientPolicy, GrpcAuthClient
from context.api import UserExecutionContext, context_scope
from data.api import UserDataAccessProvider
from dispatch.agents.api import AgentService, RunHandle, RunInfo
from dispatch.engine.api import ToolCaller, ToolExecutionEngine
from dispatch.llm.api import UsageReport
from dispatch.tools.api import RunEventEnvelope
from dispatch.tools.sinks import BufferingEventSink
from server.composition import (
    GatewayStack,
    GrpcHost,
    Platform,
    RemoteServices,
    build_gateway_stack,
    build_platform,
    connect_grpc,
    serve_grpc,
)
from server.credentials import ConnectionCredentials
from server.runs import GrpcAgentRuns, LocalAgentRuns
from server.testing import FAST_AUTH, TestAccount, settings_for_tests
from websocket.router.api import ConnectionInfo
from websocket.router.router import InProcessEventRouter

__all__ = [
    "COMPOSITIONS",
    "PASSWORD",
    "PATIENT_AUTH_CLIENT",
    "Deployment",
    "GatewayView",
    "StartedRun",
    "UserSession",
    "assert_no_stray_tasks",
    "assert_platform_shut_down",
    "build_test_platform",
    "composition",
    "eventually",
    "open_deployment",
    "removal_of",
    "wait_removed",
    "wire_text",
]

COMPOSITIONS = ("inprocess", "grpc")
#: The gRPC auth clients this module builds itself: the client's own defaults (1 s per
#: attempt, the breaker open after three slow answers) suit a production network; a test
#: machine running many suites at once on two cores needs more patience to stay exact.
PATIENT_AUTH_CLIENT = ClientPolicy(
    deadline_seconds=20.0,
    attempt_timeout_seconds=10.0,
    max_attempts=2,
    breaker_failure_threshold=1000,
)
PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - the test accounts' password
#: How long a scenario waits for something it has every reason to expect.
WAIT_SECONDS = 20.0


@pytest.fixture(params=COMPOSITIONS)
def composition(request: pytest.FixtureRequest) -> str:
    """``inprocess`` or ``grpc``: how the scenario reaches the services."""
    return str(request.param)


async def eventually(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait (bounded) for server-side state that no event announces, e.g. a slot freed
    after its socket closed; fails with ``what`` when it does not come."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.01)


def removal_of(router: InProcessEventRouter, connection_id: str) -> asyncio.Event:
    """An event set when ``connection_id`` leaves the router (at once if it is gone)."""
    gone = asyncio.Event()

    def listener(info: ConnectionInfo) -> None:
        if info.connection_id == connection_id:
            gone.set()

    router.add_removal_listener(listener)
    if router.owner_of(connection_id) is None:
        gone.set()
    return gone


async def wait_removed(gone: asyncio.Event, what: str) -> None:
    """Await a :func:`removal_of` event (bounded)."""
    try:
        await asyncio.wait_for(gone.wait(), WAIT_SECONDS)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_SECONDS:g}s: {what}") from None


def wire_text(events: Sequence[RunEventEnvelope]) -> str:
    """The events as a client receives them, as one text (for "names nobody else")."""
    return "\n".join(event.model_dump_json() for event in events)


# -- runs ------------------------------------------------------------------------------------


@dataclass(eq=False)
class StartedRun:
    """A run as its starter sees it: its IDs and its event stream (in process: a sink the
    runner fans every event into; over gRPC: the AgentService stream)."""

    handle: RunHandle
    _events: Callable[[], AsyncIterator[RunEventEnvelope]] = field(repr=False)

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    @property
    def thread_id(self) -> str:
        return self.handle.thread_id

    async def events(self) -> list[RunEventEnvelope]:
        """Every event of the run, until its terminal one (bounded wait)."""
        async with asyncio.timeout(WAIT_SECONDS):
            return [event async for event in self._events()]


# -- one user's view ---------------------------------------------------------------------------


@dataclass(eq=False)
class UserSession:
    """One user's handles on the platform, in one composition, acting with ``token``."""

    account: TestAccount
    token: str = field(repr=False)
    agents: AgentService
    data: UserDataAccessProvider
    engine: ToolExecutionEngine
    _platform: Platform = field(repr=False)
    _remote: RemoteServices | None = field(default=None, repr=False)

    @property
    def user_id(self) -> str:
        return self.account.user_id

    async def caller(self, ctx: UserExecutionContext | None = None) -> ToolCaller:
        """The verified caller of this session's token (for ``ctx``, or a new root context).

        Raises AuthError for a refused token and CallerMismatchError for a context of
        another user than the token's.
        """
        if self._remote is not None:
            return await self._remote.caller(ctx)
        return await self._platform.caller(self.token, ctx)

    async def usage(self, ctx: UserExecutionContext) -> UsageReport:
        """The LLM usage report of the user the service binds for ``ctx``."""
        with context_scope(ctx):
            if self._remote is not None:
                return await self._remote.llm.usage()
            return await self._platform.llm.create_for_context(ctx).usage()

    async def notes(self, ctx: UserExecutionContext | None = None) -> list[str]:
        """The contents of the notes the data service shows for ``ctx`` (default: a new
        root context of this user), oldest first."""
        ctx = ctx or UserExecutionContext.from_request(self.user_id)
        async with self.data.create_user_context(ctx) as scope:
            notes = await scope.notes.list(limit=500)
        return sorted((note.content for note in notes), key=str)

    async def add_note(self, content: str, ctx: UserExecutionContext | None = None) -> str:
        """Write a note through the data service; its ID."""
        ctx = ctx or UserExecutionContext.from_request(self.user_id)
        async with self.data.create_user_context(ctx) as scope:
            note = await scope.notes.add(content)
        return note.id

    async def start_run(
        self, caller: ToolCaller, agent: str, message: str, *, thread_id: str | None = None
    ) -> StartedRun:
        """Start a run of ``agent`` for ``caller`` and follow its events."""
        if self._remote is not None:
            handle = await self._remote.agents.start_run(
                caller, agent, message, thread_id=thread_id
            )
            return StartedRun(handle, handle.events)
        sinks: list[BufferingEventSink] = []

        def observer(ctx: UserExecutionContext, agent_name: str) -> BufferingEventSink:
            sink = BufferingEventSink(ctx)
            sinks.append(sink)
            return sink

        runner = self._platform.internals.runner
        started = await runner.start_run(
            caller, agent, message, thread_id=thread_id, observer=observer
        )
        return StartedRun(started, sinks[0].stream)

    async def run(
        self, caller: ToolCaller, agent: str, message: str, *, thread_id: str | None = None
    ) -> tuple[RunHandle, list[RunEventEnvelope]]:
        """Start a run and read all its events."""
        started = await self.start_run(caller, agent, message, thread_id=thread_id)
        return started.handle, await started.events()

    async def get_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        return await self.agents.get_run(caller, run_id)


# -- the WebSocket side ------------------------------------------------------------------------


@dataclass(eq=False)
class GatewayView:
    """What a scenario needs of a WebSocket gateway: its URL, its router, the credentials
    it holds per connection and its run adapter (gateway run ID -> service run ID)."""

    ws_url: str
    router: InProcessEventRouter
    credentials: ConnectionCredentials
    runs: LocalAgentRuns | GrpcAgentRuns

    def leftovers(self) -> dict[str, int]:
        return {
            "ws_connections": self.router.stats().connections,
            "ws_credentials": len(self.credentials),
            "gateway_runs": self.runs.active(),
        }


# -- the deployment ------------------------------------------------------------------------------


@dataclass(eq=False)
class Deployment:
    """The platform of one scenario, in one composition (see the module docstring)."""

    composition: str
    platform: Platform
    #: Registration, login, refresh, revocation: in process, or the gRPC client.
    auth: UnifiedAuthenticationService
    gateway: GatewayView
    host: GrpcHost | None = None
    _auth_client: GrpcAuthClient | None = field(default=None, repr=False)
    _remotes: list[RemoteServices] = field(default_factory=list, repr=False)
    _stack: GatewayStack | None = field(default=None, repr=False)

    @property
    def grpc(self) -> bool:
        return self.composition == "grpc"

    @property
    def address(self) -> str:
        """The gRPC address of the services (``grpc`` composition only)."""
        if self.host is None:
            raise RuntimeError("this deployment serves no gRPC")
        return self.host.address

    async def register(self, name: str) -> TestAccount:
        """A new account (unique email) registered and logged in through :attr:`auth`."""
        email = f"{name}-{secrets.token_hex(4)}@example.com"
        account = await self.auth.register(email, PASSWORD)
        pair = await self.auth.login(email, PASSWORD)
        return TestAccount(
            user_id=account.user_id,
            email=email,
            password=PASSWORD,
            access_token=pair.access_token,
        )

    async def login(self, account: TestAccount) -> str:
        """A fresh access token for ``account`` (a new session)."""
        return (await self.login_pair(account)).access_token

    async def login_pair(self, account: TestAccount) -> TokenPair:
        """A new session of ``account``: its access and refresh tokens."""
        return await self.auth.login(account.email, account.password)

    async def session(self, account: TestAccount, token: str | None = None) -> UserSession:
        """The account's handles, acting with ``token`` (default: its own access token)."""
        token = account.access_token if token is None else token
        platform = self.platform
        if not self.grpc:
            return UserSession(
                account=account,
                token=token,
                agents=platform.agents,
                data=platform.data,
                engine=platform.engine,
                _platform=platform,
            )
        remote = await connect_grpc(self.address, access_token=token)
        self._remotes.append(remote)
        return UserSession(
            account=account,
            token=token,
            agents=remote.agents,
            data=remote.data,
            engine=remote.engine,
            _platform=platform,
            _remote=remote,
        )

    async def revoke_own_tokens(self, session: UserSession) -> None:
        """``session``'s user revokes every token they hold (over gRPC: authorized by
        their own token, as a user may do for themself)."""
        if not self.grpc:
            await self.auth.revoke_user_tokens(session.user_id)
            return
        token = session.token

        async def own_token() -> str:
            return token

        async with GrpcAuthClient(
            self.address, token_provider=own_token, policy=PATIENT_AUTH_CLIENT
        ) as client:
            await client.revoke_user_tokens(session.user_id)

    async def new_user(self, name: str) -> UserSession:
        return await self.session(await self.register(name))

    async def new_users(self, *names: str) -> list[UserSession]:
        """Several users, registered and logged in concurrently."""
        return list(await asyncio.gather(*(self.new_user(name) for name in names)))

    def leftovers(self) -> dict[str, int]:
        """What the services still hold (all 0 when idle)."""
        held = self.platform.leftovers()
        if self._stack is not None:
            for key, value in self.gateway.leftovers().items():
                held[f"node_{key}"] = value
        return held

    async def assert_idle(self, *, connections_open: bool = False) -> None:
        """Every run has ended and given back its dispatcher, data scopes and database
        connections (WebSocket connections may still be open when ``connections_open``)."""
        assert await self.platform.runs.wait_idle(WAIT_SECONDS)
        assert await self.gateway.runs.wait_idle(WAIT_SECONDS)
        held = self.leftovers()
        if connections_open:
            held = {key: value for key, value in held.items() if "ws_" not in key}
        assert held == dict.fromkeys(held, 0), held

    async def _close(self) -> None:
        for remote in self._remotes:
            await remote.aclose()
        if self._auth_client is not None:
            await self._auth_client.close()
        if self._stack is not None:
            await self._stack.aclose(grace_seconds=5.0)
        if self.host is not None:
            await self.host.stop()
        await self.platform.aclose(grace_seconds=5.0)

    def _assert_shut_down(self) -> None:
        held = self.leftovers()
        assert held == dict.fromkeys(held, 0), held
        assert_platform_shut_down(self.platform)
        if self._stack is not None:
            assert self.gateway.router.closed


@asynccontextmanager
async def open_deployment(
    composition: str,
    data_dir: Path,
    *,
    with_gateway: bool = False,
    settings_overrides: dict[str, Any] | None = None,
    **platform_kwargs: Any,
) -> AsyncIterator[Deployment]:
    """Build the platform under ``data_dir`` in ``composition``; see the module docstring.

    ``settings_overrides`` go to the server settings, ``platform_kwargs`` to
    :func:`server.composition.build_platform` (``auth_overrides`` default to fast
    password hashing). On a normal exit everything is shut down and checked.
    """
    if composition not in COMPOSITIONS:
        raise ValueError(f"unknown composition {composition!r}")
    before = asyncio.all_tasks()
    platform = await build_test_platform(
        data_dir, settings_overrides=settings_overrides, **platform_kwargs
    )
    internals = platform.internals
    assert isinstance(internals.router, InProcessEventRouter)
    deployment = Deployment(
        composition=composition,
        platform=platform,
        auth=platform.auth,
        gateway=GatewayView(
            ws_url=platform.ws_url,
            router=internals.router,
            credentials=internals.ws_auth,
            runs=internals.runs,
        ),
    )
    try:
        if composition == "grpc":
            deployment.host = await serve_grpc(platform)
            deployment._auth_client = GrpcAuthClient(
                deployment.host.address, policy=PATIENT_AUTH_CLIENT
            )
            deployment.auth = deployment._auth_client
            if with_gateway:
                deployment._stack = await _gateway_node(data_dir, deployment.host.address)
                router = deployment._stack.router
                assert isinstance(router, InProcessEventRouter)
                deployment.gateway = GatewayView(
                    ws_url=deployment._stack.ws_url,
                    router=router,
                    credentials=deployment._stack.ws_auth,
                    runs=deployment._stack.runs,
                )
    except BaseException:
        await deployment._close()
        raise
    try:
        yield deployment
    except BaseException:
        await deployment._close()
        raise
    await deployment._close()
    deployment._assert_shut_down()
    await assert_no_stray_tasks(before)


def assert_platform_shut_down(platform: Platform) -> None:
    """Everything the platform held is given back and its stores are closed."""
    held = platform.leftovers()
    assert held == dict.fromkeys(held, 0), held
    data = platform.internals.data.stats()
    assert data.closed
    assert data.connections_open == 0
    assert data.connections_checked_out == 0
    router = platform.internals.router
    assert isinstance(router, InProcessEventRouter)
    assert router.closed


async def assert_no_stray_tasks(before: set[asyncio.Task[Any]]) -> None:
    """No task started since ``before`` is still alive."""
    await asyncio.sleep(0)
    stray = [
        task
        for task in asyncio.all_tasks() - before
        if task is not asyncio.current_task() and not task.done()
    ]
    assert stray == [], stray


async def build_test_platform(
    data_dir: Path, *, settings_overrides: dict[str, Any] | None = None, **platform_kwargs: Any
) -> Platform:
    """:func:`server.composition.build_platform` under ``data_dir/platform``: ephemeral
    ports, fast password hashing, ``settings_overrides`` on the test settings."""
    platform_kwargs.setdefault(
        "settings", settings_for_tests(data_dir / "platform", **(settings_overrides or {}))
    )
    platform_kwargs.setdefault("auth_overrides", FAST_AUTH)
    return await build_platform(**platform_kwargs)


async def _gateway_node(data_dir: Path, address: str) -> GatewayStack:
    """A gateway node of its own: handshake and run-start tokens verified by the auth
    service over gRPC, runs started on the AgentService over gRPC."""
    auth_client = GrpcAuthClient(address, policy=PATIENT_AUTH_CLIENT)
    try:
        return await build_gateway_stack(
            settings_for_tests(data_dir / "gateway"),
            token_auth=auth_client,
            dispatch_address=address,
            on_close=[auth_client.close],
        )
    except BaseException:
        await auth_client.close()
        raise
