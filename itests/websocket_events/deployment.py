"""The platform behind a real WebSocket gateway, in the two compositions of the scenarios.

* ``inprocess``: :func:`server.composition.build_platform` - auth, data (SQLite under the
  test's directory), tools, LLM access, the agent runner and the gateway in one process;
  the gateway starts runs on the in-process runner.
* ``grpc``: the same platform with its own gateway not started, every service served by
  :func:`server.composition.serve_grpc` on 127.0.0.1:0, and the clients connecting to a
  gateway node (:func:`server.composition.build_gateway_stack`) that verifies tokens
  through the gRPC auth client and starts runs over the gRPC AgentService, re-emitting the
  streamed events through its own router and replay buffer. Accounts are registered over
  gRPC too.

:class:`Deployment` gives a scenario the same handles either way: accounts from the real
auth service, connections to the gateway
(:class:`~itests.websocket_events.wsclient.ProtocolClient`), the gateway's router, replay
buffer and emitters, more gateway nodes (:meth:`Deployment.add_gateway_node`; they share
Redis when :func:`deploy` is given ``shared_redis``), and :meth:`Deployment.leftovers` -
what is still held anywhere (runs, gateway runs, dispatchers, data scopes and connections,
WebSocket connections, their tokens and per-user slots), all zero once a scenario's
connections are closed and its runs have ended.

The ``composition`` fixture gives a scenario one test case per composition; the theme
modules import it from here.

:func:`deploy` shuts everything down on exit and then checks that it is really gone: no
gateway accepts connections any more, the data layer is closed with no database
connection open, the runner is closed, and no task the deployment started is left on the
event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from auth.api import UnifiedAuthenticationService
from auth.grpc_client import GrpcAuthClient
from context.api import UserExecutionContext, context_scope
from data.api import Note
from dispatch.agents.api import RunInfo
from dispatch.engine.registry import Tool
from itests.websocket_events.outside_llm import ScriptedLLM
from itests.websocket_events.wsclient import ProtocolClient
from server.composition import (
    GatewayStack,
    GrpcHost,
    Platform,
    build_gateway_stack,
    build_platform,
    serve_grpc,
)
from server.credentials import ConnectionCredentials
from server.runs import GrpcAgentRuns, LocalAgentRuns
from server.settings import ServerSettings
from server.testing import FAST_AUTH, new_account, settings_for_tests
from websocket.auth.authenticator import WebSocketAuthenticator
from websocket.auth.expiry import Clock
from websocket.auth.settings import WebSocketAuthSettings
from websocket.emitter.api import EmitterFactory, ReplayBuffer
from websocket.gateway.server import WebSocketGateway
from websocket.gateway.settings import GatewaySettings
from websocket.router.api import WebSocketEventRouter

__all__ = [
    "COMPOSITIONS",
    "Account",
    "Deployment",
    "composition",
    "deploy",
    "eventually",
]

COMPOSITIONS = ("inprocess", "grpc")
#: Seconds a closing gateway lets runs finish; scenarios end their runs before closing.
CLOSE_GRACE_SECONDS = 2.0
SETTLE_TIMEOUT = 20.0


@pytest.fixture(params=COMPOSITIONS)
def composition(request: pytest.FixtureRequest) -> str:
    """A scenario whose services have a gRPC interface runs once per composition:
    ``inprocess`` and ``grpc`` (see the module docstring)."""
    return str(request.param)


async def eventually(
    predicate: Callable[[], bool], *, what: str, within: float = SETTLE_TIMEOUT
) -> None:
    """Wait until ``predicate`` holds: for state that changes without an event to await
    (a server noticing that a socket closed, say). Fails with ``what`` after ``within``
    seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Account:
    """A registered, logged-in user of the deployment's auth service."""

    name: str
    user_id: str
    email: str
    password: str = field(repr=False)
    access_token: str = field(repr=False)

    def footprint(self) -> set[str]:
        """What names this user: none of it may reach another user's connections."""
        return {self.user_id, self.email, self.access_token}


class Deployment:
    """One composition of the platform and the gateway(s) its clients connect to."""

    def __init__(
        self,
        *,
        composition: str,
        platform: Platform,
        ws_auth_settings: WebSocketAuthSettings,
        gateway_settings: GatewaySettings,
        ws_clock: Clock | None,
        node_settings: ServerSettings,
        exit_stack: AsyncExitStack,
    ) -> None:
        self.composition = composition
        self.platform = platform
        self.auth: UnifiedAuthenticationService = platform.auth
        self.host: GrpcHost | None = None
        #: Gateway nodes whose runs go to the platform over gRPC (the first one is the
        #: clients' gateway in the ``grpc`` composition).
        self.nodes: list[GatewayStack] = []
        self.accounts: list[Account] = []
        self.clients: list[ProtocolClient] = []
        self._ws_auth_settings = ws_auth_settings
        self._gateway_settings = gateway_settings
        self._ws_clock = ws_clock
        self._node_settings = node_settings
        self._exit = exit_stack

    @property
    def settings(self) -> ServerSettings:
        return self.platform.settings

    # -- gRPC and gateway nodes ------------------------------------------------------------

    async def grpc_host(self) -> GrpcHost:
        """The platform's services on a gRPC server on 127.0.0.1:0 (started once)."""
        if self.host is None:
            self.host = await serve_grpc(self.platform)
            self._exit.push_async_callback(self.host.stop)
        return self.host

    async def add_gateway_node(self) -> GatewayStack:
        """A further gateway node: tokens verified through the gRPC auth client, runs
        started over the gRPC AgentService; with ``shared_redis`` it shares the Redis
        fan-out and replay buffer with every other gateway."""
        host = await self.grpc_host()
        token_auth = GrpcAuthClient(host.address)
        node = await build_gateway_stack(
            self._node_settings,
            token_auth=token_auth,
            dispatch_address=host.address,
            ws_auth_settings=self._ws_auth_settings,
            gateway_settings=self._gateway_settings,
            ws_clock=self._ws_clock,
            on_close=[token_auth.close],
        )
        self._exit.push_async_callback(functools.partial(node.aclose, CLOSE_GRACE_SECONDS))
        self.nodes.append(node)
        return node

    # -- the gateway the clients use -------------------------------------------------------

    @property
    def primary(self) -> GatewayStack | None:
        """The gateway node of the ``grpc`` composition (None in process)."""
        return self.nodes[0] if self.composition == "grpc" else None

    @property
    def gateway(self) -> WebSocketGateway:
        node = self.primary
        return node.gateway if node is not None else self.platform.gateway

    @property
    def ws_url(self) -> str:
        return self.gateway.url

    @property
    def router(self) -> WebSocketEventRouter:
        node = self.primary
        return node.router if node is not None else self.platform.router

    @property
    def replay(self) -> ReplayBuffer:
        node = self.primary
        return node.replay if node is not None else self.platform.replay

    @property
    def emitters(self) -> EmitterFactory:
        node = self.primary
        return node.emitters if node is not None else self.platform.emitters

    @property
    def runs(self) -> LocalAgentRuns | GrpcAgentRuns:
        node = self.primary
        return node.runs if node is not None else self.platform.internals.runs

    def _gateways(self) -> list[tuple[WebSocketEventRouter, ConnectionCredentials]]:
        return [
            (self.platform.router, self.platform.internals.ws_auth),
            *((node.router, node.ws_auth) for node in self.nodes),
        ]

    # -- users and connections -------------------------------------------------------------

    async def account(self, name: str) -> Account:
        """Register and log in a new user through the deployment's auth service."""
        made = await new_account(self.auth, name)
        account = Account(
            name=name,
            user_id=made.user_id,
            email=made.email,
            password=made.password,
            access_token=made.access_token,
        )
        self.accounts.append(account)
        return account

    async def accounts_named(self, *names: str) -> list[Account]:
        """Several new users, registered concurrently."""
        return list(await asyncio.gather(*(self.account(name) for name in names)))

    async def login(self, account: Account) -> str:
        """A new access token of ``account`` (a second login)."""
        pair = await self.auth.login(account.email, account.password)
        return pair.access_token

    async def connect(
        self,
        account: Account,
        *,
        token: str | None = None,
        node: GatewayStack | None = None,
        label: str | None = None,
        **options: Any,
    ) -> ProtocolClient:
        """A connection of ``account`` (with its access token unless ``token`` is given)
        to the clients' gateway, or to ``node``."""
        client = await ProtocolClient.open(
            node.ws_url if node is not None else self.ws_url,
            token or account.access_token,
            label=label or f"{account.name}#{len(self.clients)}",
            **options,
        )
        assert client.user_id == account.user_id
        self.clients.append(client)
        return client

    async def connect_many(self, account: Account, count: int) -> list[ProtocolClient]:
        """``count`` connections of ``account``, opened concurrently."""
        return list(await asyncio.gather(*(self.connect(account) for _ in range(count))))

    # -- what the platform recorded --------------------------------------------------------

    async def recorded_run(self, account: Account, run_id: str) -> RunInfo:
        """The agent service's record of the user's gateway run ``run_id``, once ended."""
        service_run_id = self.runs.service_run_id(account.user_id, run_id)
        assert service_run_id is not None, f"{account.name} has no run {run_id}"
        caller = await self.platform.caller(account.access_token)
        return await self.platform.internals.runner.wait_run(caller, service_run_id)

    async def notes_of(self, account: Account) -> list[Note]:
        """The user's notes, read through a data scope of the user's own context."""
        ctx = UserExecutionContext.from_request(account.user_id)
        with context_scope(ctx):
            async with self.platform.data.create_user_context(ctx) as scope:
                return list(await scope.notes.list())

    # -- clean-up --------------------------------------------------------------------------

    def leftovers(self) -> dict[str, int]:
        """Everything still held for anyone (all 0 when the deployment is idle)."""
        found = dict(self.platform.leftovers())
        for index, node in enumerate(self.nodes):
            found[f"node{index}_gateway_runs"] = node.runs.active()
            found[f"node{index}_ws_connections"] = node.router.stats().connections
            found[f"node{index}_ws_credentials"] = len(node.ws_auth)
        slots = 0
        routed = 0
        for router, credentials in self._gateways():
            inner = credentials.inner
            assert isinstance(inner, WebSocketAuthenticator)
            slots += sum(inner.slots.count(account.user_id) for account in self.accounts)
            routed += sum(len(router.connections_of(a.user_id)) for a in self.accounts)
        found["ws_slots"] = slots
        found["ws_connections_routed"] = routed
        return found

    def idle(self) -> bool:
        return not any(self.leftovers().values())

    async def close_clients(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))

    async def assert_idle(self) -> None:
        """Close every client, then wait until nothing is held anywhere (and say what is
        still held if that does not happen)."""
        await self.close_clients()
        try:
            await eventually(self.idle, what="the deployment to hold nothing")
        except AssertionError:
            raise AssertionError(f"still held: {self.leftovers()}") from None


@asynccontextmanager
async def deploy(
    directory: Path,
    composition: str = "inprocess",
    *,
    llm: ScriptedLLM | None = None,
    server: Mapping[str, Any] | None = None,
    auth: Mapping[str, Any] | None = None,
    ws_auth: Mapping[str, Any] | None = None,
    gateway: Mapping[str, Any] | None = None,
    ws_clock: Clock | None = None,
    auth_clock: Callable[[], float] | None = None,
    extra_tools: Iterable[Tool[Any]] = (),
    shared_redis: str | None = None,
) -> AsyncIterator[Deployment]:
    """Build, start and yield a :class:`Deployment`; on exit close it and check that it is
    gone (see the module docstring).

    ``server``: :class:`~server.settings.ServerSettings` values (limits, ``redis_url``);
    ``auth``: auth settings on top of the fast test ones; ``ws_auth`` and ``gateway``:
    WebSocket auth and gateway settings; ``llm``: the outside LLM (default: the platform's
    deterministic local provider); ``ws_clock`` / ``auth_clock``: the clocks of the token
    expiry protocol and of token issuing and verification.

    ``shared_redis``: a Redis URL the WebSocket gateways share (event fan-out and replay
    buffer). In process the platform's own gateway uses it, with everything else of the
    platform; over gRPC only the gateway nodes do, like ``--role gateway`` processes in
    front of a dispatch process whose runs reach clients only through the nodes.
    """
    if composition not in COMPOSITIONS:
        raise ValueError(f"unknown composition {composition!r}")
    tasks_before = asyncio.all_tasks()
    settings = settings_for_tests(directory / "platform", **dict(server or {}))
    node_settings = settings
    if shared_redis is not None:
        node_settings = settings.model_copy(update={"redis_url": shared_redis})
        if composition == "inprocess":
            settings = node_settings
    ws_auth_settings = WebSocketAuthSettings(
        **{
            "allowed_origins": settings.allowed_origins,
            "max_connections_per_user": settings.max_connections_per_user,
            **dict(ws_auth or {}),
        }
    )
    gateway_settings = GatewaySettings(host="127.0.0.1", port=0, **dict(gateway or {}))
    platform = await build_platform(
        settings,
        auth_overrides={**FAST_AUTH, **dict(auth or {})},
        llm_settings=llm.settings() if llm is not None else None,
        extra_tools=extra_tools,
        ws_auth_settings=ws_auth_settings,
        gateway_settings=gateway_settings,
        ws_clock=ws_clock,
        auth_clock=auth_clock,
        start_gateway=composition == "inprocess",
    )
    deployment: Deployment | None = None
    try:
        async with AsyncExitStack() as exit_stack:
            deployment = Deployment(
                composition=composition,
                platform=platform,
                ws_auth_settings=ws_auth_settings,
                gateway_settings=gateway_settings,
                ws_clock=ws_clock,
                node_settings=node_settings,
                exit_stack=exit_stack,
            )
            exit_stack.push_async_callback(deployment.close_clients)
            if composition == "grpc":
                await deployment.add_gateway_node()
                remote_auth = GrpcAuthClient((await deployment.grpc_host()).address)
                exit_stack.push_async_callback(remote_auth.close)
                deployment.auth = remote_auth
            yield deployment
    finally:
        await platform.aclose(grace_seconds=CLOSE_GRACE_SECONDS)
    await _assert_gone(deployment, tasks_before)


async def _assert_gone(deployment: Deployment | None, tasks_before: set[asyncio.Task[Any]]) -> None:
    """The closed deployment holds nothing: no gateway, database connection or task."""
    assert deployment is not None
    gateways = [deployment.platform.gateway, *(node.gateway for node in deployment.nodes)]
    for gateway in gateways:
        assert not gateway.accepting
    for node in deployment.nodes:
        await _assert_refused(node.ws_url)
    if deployment.composition == "inprocess":
        await _assert_refused(deployment.platform.ws_url)
    data = deployment.platform.internals.data.stats()
    assert data.closed
    assert data.connections_open == 0
    assert data.live_scopes == 0
    runner = deployment.platform.internals.runner.stats()
    assert runner.closed
    assert runner.active_runs == 0
    current = asyncio.current_task()

    def stray() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() - tasks_before if task is not current]

    try:
        await eventually(lambda: not stray(), what="the deployment's tasks to end", within=5.0)
    except AssertionError:
        raise AssertionError(f"tasks left behind: {stray()}") from None


async def _assert_refused(url: str) -> None:
    try:
        ws = await connect(url, open_timeout=2)
    except (OSError, TimeoutError):
        return
    await ws.close()
    raise AssertionError(f"{url} still accepts connections after shutdown")
