"""The deployment every agent-and-tools scenario runs against, in either composition.

:func:`deployment` builds the real platform with :func:`server.composition.build_platform`
(SQLite and keys under the test's directory, cheap password hashing, the gateway on
127.0.0.1 port 0) and, for the ``grpc`` composition, serves all of it with
:func:`server.composition.serve_grpc` on another ephemeral loopback port. Scenarios then
act through :class:`Member` handles, which are the same Protocol types in both
compositions:

* ``inprocess`` - the platform's own objects (the agent runner, the tool engine, the data
  factory, an LLM manager built for the member's context, the dispatcher factory);
* ``grpc`` - :func:`server.composition.connect_grpc` clients carrying the member's own
  access token (agents, engine, data, LLM), and a dispatcher factory whose engine is the
  remote one (the dispatcher in the client process, the engine behind gRPC).

The WebSocket side is the platform's gateway in process; over gRPC it is a separate gateway
node (:func:`server.composition.build_gateway_stack`) whose runs go to the served agent
service and whose tokens are verified by the served auth service.

Leaving the ``async with deployment(...)`` block closes everything in order and then checks
that nothing was left behind: no runs, dispatchers, data scopes, checked-out or open
database connections, WebSocket connections or credentials, no asyncio task, and no server
(gRPC, gateways) still listening.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from auth.api import Plan
from context.api import ContextScope, UserExecutionContext, context_scope
from data.api import Note, ToolUsage, UserDataAccessProvider
from dispatch.agents.api import AgentService, RunHandle, RunInfo
from dispatch.agents.grpc_client import StreamingRunHandle
from dispatch.agents.service import AgentRunner
from dispatch.engine.api import ToolCaller, ToolExecutionEngine
from dispatch.llm.api import Completion, CompletionRequest, LLMManager, StreamChunk, UsageReport
from dispatch.tools.api import EventType, RunEventEnvelope
from dispatch.tools.service import ToolDispatcherFactory
from dispatch.tools.sinks import BufferingEventSink, BufferingSinkFactory
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
from server.testing import FAST_AUTH, TestAccount, new_account, settings_for_tests

__all__ = [
    "COMPOSITIONS",
    "TERMINAL",
    "Deployment",
    "Member",
    "RunRecord",
    "StartedRun",
    "assert_complete_run",
    "assert_mentions_none",
    "composition",
    "deployment",
]

COMPOSITIONS = ("inprocess", "grpc")
TERMINAL = frozenset({EventType.AGENT_COMPLETED, EventType.AGENT_ERROR})
#: Upper bound of any wait in a scenario (runs take milliseconds; this only stops a hang).
WAIT_SECONDS = 20.0


@pytest.fixture(params=COMPOSITIONS)
def composition(request: pytest.FixtureRequest) -> str:
    """``inprocess`` or ``grpc``: each scenario runs once in each composition."""
    return str(request.param)


# -- members -------------------------------------------------------------------------------


@dataclass(eq=False)
class Member:
    """One logged-in user and the services as this user reaches them."""

    name: str
    account: TestAccount
    caller: ToolCaller
    agents: AgentService
    engine: ToolExecutionEngine
    data: UserDataAccessProvider
    dispatchers: ToolDispatcherFactory
    llm: LLMManager
    remote: RemoteServices | None = None

    @property
    def user_id(self) -> str:
        return self.account.user_id

    @property
    def context(self) -> UserExecutionContext:
        return self.caller.context

    def bound(self) -> ContextScope:
        """Bind this member's request context (what gRPC clients send as
        ``x-ssot-context``)."""
        return context_scope(self.caller.context)

    async def complete(self, request: CompletionRequest) -> Completion:
        with self.bound():
            return await self.llm.complete(request)

    async def stream(self, request: CompletionRequest) -> list[StreamChunk]:
        with self.bound():
            return [chunk async for chunk in self.llm.stream(request)]

    async def usage(self) -> UsageReport:
        with self.bound():
            return await self.llm.usage()

    async def notes(self) -> list[Note]:
        """This user's notes, read through the composition's data access."""
        with self.bound():
            async with self.data.create_user_context(self.context) as scope:
                return list(await scope.notes.list(limit=200))

    def identifiers(self) -> tuple[str, ...]:
        """What names this user: another user's data, events and errors never contain it."""
        return (self.user_id, self.account.email, self.context.request_id)


# -- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A finished run: its events as its client received them and its record."""

    user_id: str
    run_id: str
    thread_id: str
    events: tuple[RunEventEnvelope, ...]
    info: RunInfo

    @property
    def types(self) -> list[str]:
        return [event.type.value for event in self.events]

    @property
    def terminal(self) -> RunEventEnvelope:
        return self.events[-1]

    def of_type(self, kind: EventType) -> list[RunEventEnvelope]:
        return [event for event in self.events if event.type is kind]


@dataclass(eq=False)
class StartedRun:
    """A run that was accepted; :meth:`finish` follows it to its end."""

    member: Member
    handle: RunHandle
    runner: AgentRunner
    sink: BufferingEventSink | None = None

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    async def _events(self) -> list[RunEventEnvelope]:
        if self.sink is not None:
            return [event async for event in self.sink.stream()]
        assert isinstance(self.handle, StreamingRunHandle)
        return [event async for event in self.handle.events()]

    async def finish(self) -> RunRecord:
        """Every event of the run up to its terminal one, and the run as recorded (read
        back through the member's own agent service)."""
        async with asyncio.timeout(WAIT_SECONDS):
            events = await self._events()
            await self.runner.wait_run(self.member.caller, self.run_id)
            info = await self.member.agents.get_run(self.member.caller, self.run_id)
        return RunRecord(
            user_id=self.member.user_id,
            run_id=self.run_id,
            thread_id=self.handle.thread_id,
            events=tuple(events),
            info=info,
        )


def assert_complete_run(record: RunRecord, *, completed: bool = True) -> None:
    """One run's events: its own IDs only, seq 1..n without gaps, ``agent_started`` first,
    exactly one terminal event and it is last, tool events in pairs."""
    events = record.events
    assert events, f"run {record.run_id} emitted nothing"
    assert {event.run_id for event in events} == {record.run_id}
    assert {event.thread_id for event in events} == {record.thread_id}
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert events[0].type is EventType.AGENT_STARTED
    assert [event.type in TERMINAL for event in events].count(True) == 1
    assert events[-1].type in TERMINAL
    expected = EventType.AGENT_COMPLETED if completed else EventType.AGENT_ERROR
    assert events[-1].type is expected, [event.type.value for event in events]
    tools = [
        event
        for event in events
        if event.type in (EventType.TOOL_EXECUTING, EventType.TOOL_COMPLETED)
    ]
    assert [event.type for event in tools] == [
        EventType.TOOL_EXECUTING,
        EventType.TOOL_COMPLETED,
    ] * (len(tools) // 2)
    for executing, completed_event in zip(tools[::2], tools[1::2], strict=True):
        assert executing.payload["tool_name"] == completed_event.payload["tool_name"]
    assert record.info.run_id == record.run_id
    assert record.info.thread_id == record.thread_id


def assert_mentions_none(value: object, forbidden: Iterable[str]) -> None:
    """``value`` (rendered as JSON, or its repr) contains none of ``forbidden``."""
    try:
        text = json.dumps(value, default=_jsonable, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    leaked = [item for item in forbidden if item and item in text]
    assert not leaked, f"found {leaked} in {text[:500]}"


def _jsonable(value: object) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return repr(value)


# -- the deployment ------------------------------------------------------------------------


@dataclass(eq=False)
class Deployment:
    """The platform in one composition; see the module docstring."""

    composition: str
    platform: Platform
    directory: Path
    host: GrpcHost | None = None
    _remotes: list[RemoteServices] = field(default_factory=list)
    _client_dispatchers: list[ToolDispatcherFactory] = field(default_factory=list)
    _gateway: GatewayStack | None = None

    @property
    def grpc(self) -> bool:
        return self.composition == "grpc"

    @property
    def runner(self) -> AgentRunner:
        return self.platform.internals.runner

    # -- users -------------------------------------------------------------------------------

    async def member(
        self, name: str, *, plan: Plan = Plan.FREE, roles: Sequence[str] = ()
    ) -> Member:
        """A new user (registered on the free plan, then given ``plan`` and ``roles`` by
        the auth service), logged in and connected through the composition."""
        account = await new_account(self.platform.auth, name)
        if plan is not Plan.FREE or roles:
            await self.platform.auth.update_account(account.user_id, plan=plan, roles=tuple(roles))
            account = await self.login(account)
        return await self.join(name, account)

    async def members(
        self, prefix: str, count: int, *, plan: Plan = Plan.FREE, roles: Sequence[str] = ()
    ) -> list[Member]:
        """``count`` new users at once."""
        return list(
            await asyncio.gather(
                *(self.member(f"{prefix}{n}", plan=plan, roles=roles) for n in range(count))
            )
        )

    async def login(self, account: TestAccount) -> TestAccount:
        """A fresh login of ``account`` (its token carries the account's current plan)."""
        pair = await self.platform.auth.login(account.email, account.password)
        return TestAccount(
            user_id=account.user_id,
            email=account.email,
            password=account.password,
            access_token=pair.access_token,
        )

    async def join(self, name: str, account: TestAccount) -> Member:
        """``account`` connected through this composition with its access token."""
        platform = self.platform
        if self.host is None:
            caller = await platform.caller(account.access_token)
            return Member(
                name=name,
                account=account,
                caller=caller,
                agents=platform.agents,
                engine=platform.engine,
                data=platform.data,
                dispatchers=platform.internals.dispatchers,
                llm=platform.llm.create_for_context(caller.context),
            )
        remote = await connect_grpc(self.host.address, access_token=account.access_token)
        self._remotes.append(remote)
        dispatchers = ToolDispatcherFactory(remote.engine)
        self._client_dispatchers.append(dispatchers)
        return Member(
            name=name,
            account=account,
            caller=await remote.caller(),
            agents=remote.agents,
            engine=remote.engine,
            data=remote.data,
            dispatchers=dispatchers,
            llm=remote.llm,
            remote=remote,
        )

    async def tool_usage(self, member: Member) -> list[ToolUsage]:
        """The tool usage recorded for ``member`` (read in the serving process: usage
        records are not offered over gRPC)."""
        async with self.platform.data.create_user_context(member.context) as scope:
            return list(await scope.tool_usage.list(limit=500))

    # -- runs --------------------------------------------------------------------------------

    async def start(
        self, member: Member, agent: str, message: str, *, thread_id: str | None = None
    ) -> StartedRun:
        """Start a run through the member's agent service (refusals raise AgentError)."""
        if self.host is None:
            observer = BufferingSinkFactory()
            handle = await self.runner.start_run(
                member.caller, agent, message, thread_id=thread_id, observer=observer
            )
            sink = observer.for_run(member.user_id, handle.run_id)
            return StartedRun(member=member, handle=handle, runner=self.runner, sink=sink)
        handle = await member.agents.start_run(member.caller, agent, message, thread_id=thread_id)
        return StartedRun(member=member, handle=handle, runner=self.runner)

    async def run(
        self, member: Member, agent: str, message: str, *, thread_id: str | None = None
    ) -> RunRecord:
        started = await self.start(member, agent, message, thread_id=thread_id)
        return await started.finish()

    # -- the WebSocket side ------------------------------------------------------------------

    async def ws_url(self) -> str:
        """Where the members' WebSocket clients connect (see the module docstring)."""
        if self.host is None:
            return self.platform.ws_url
        if self._gateway is None:
            verifier = await connect_grpc(self.host.address)
            settings = self.platform.settings.model_copy(
                update={"data_dir": self.directory / "gateway"}
            )
            self._gateway = await build_gateway_stack(
                settings,
                token_auth=verifier.auth,
                dispatch_address=self.host.address,
                on_close=[verifier.aclose],
            )
        return self._gateway.ws_url

    def service_run_id(self, member: Member, gateway_run_id: str) -> str | None:
        """The agent service's run ID behind a run the member started over WebSocket."""
        if self._gateway is not None:
            return self._gateway.runs.service_run_id(member.user_id, gateway_run_id)
        return self.platform.internals.runs.service_run_id(member.user_id, gateway_run_id)

    async def gateway_run_ended(self, member: Member, gateway_run_id: str) -> RunInfo:
        """Wait until the agent service has recorded the end of a WebSocket-started run
        (its terminal event goes out first) and return the record."""
        service_run_id = self.service_run_id(member, gateway_run_id)
        assert service_run_id is not None, "the gateway knows no such run of this user"
        async with asyncio.timeout(WAIT_SECONDS):
            return await self.runner.wait_run(member.caller, service_run_id)

    # -- clean-up ----------------------------------------------------------------------------

    def leftovers(self) -> dict[str, int]:
        """Everything still held (all 0 when idle); see :meth:`Platform.leftovers`."""
        counts = self.platform.leftovers()
        counts["client_dispatchers"] = sum(
            factory.stats().live_dispatchers for factory in self._client_dispatchers
        )
        if self._gateway is not None:
            counts["node_ws_connections"] = self._gateway.router.stats().connections
            counts["node_gateway_runs"] = self._gateway.runs.active()
            counts["node_ws_credentials"] = len(self._gateway.ws_auth)
        return counts

    async def assert_idle(self) -> None:
        """Every run has ended and given back everything it held: run slots, dispatchers,
        data scopes and database connections. (WebSocket connections are released by the
        server after the client has seen the close; they are checked when the deployment
        closes.)"""
        runs = self._gateway.runs if self._gateway is not None else self.platform.runs
        assert await runs.wait_idle(WAIT_SECONDS)
        leftovers = self.leftovers()
        for key in (
            "ws_connections",
            "ws_credentials",
            "node_ws_connections",
            "node_ws_credentials",
        ):
            leftovers.pop(key, None)
        assert leftovers == dict.fromkeys(leftovers, 0), leftovers
        assert self.runner.stats().active_runs_per_user == {}
        assert self.platform.internals.dispatchers.stats().dispatchers_per_user == {}
        assert self.platform.internals.data.stats().scopes_per_user == {}

    async def aclose(self) -> None:
        """Close the clients, the gateway node, the gRPC server and the platform."""
        try:
            for remote in self._remotes:
                await remote.aclose()
            for factory in self._client_dispatchers:
                await factory.aclose()
            if self._gateway is not None:
                await self._gateway.aclose(grace_seconds=5.0)
            if self.host is not None:
                await self.host.stop()
        finally:
            await self.platform.aclose(grace_seconds=5.0)


@asynccontextmanager
async def deployment(
    directory: Path,
    composition: str,
    *,
    settings: dict[str, Any] | None = None,
    **build: Any,
) -> AsyncIterator[Deployment]:
    """The platform in ``composition`` (see the module docstring).

    ``settings`` override :class:`~server.settings.ServerSettings` fields (per-user limits,
    the run timeout ...); ``build`` goes to :func:`build_platform` (``llm_factory``,
    ``llm_settings``, ``extra_tools``, ``agent_settings`` ...).
    """
    assert composition in COMPOSITIONS
    before = asyncio.all_tasks()
    platform = await build_platform(
        settings_for_tests(directory / "platform", **(settings or {})),
        auth_overrides=FAST_AUTH,
        **build,
    )
    deployed = Deployment(composition=composition, platform=platform, directory=directory)
    ports: list[int] = [platform.gateway.address[1]]
    try:
        if composition == "grpc":
            deployed.host = await serve_grpc(platform)
            ports.append(deployed.host.port)
        yield deployed
    finally:
        if deployed._gateway is not None:
            ports.append(deployed._gateway.gateway.address[1])
        await deployed.aclose()
    # Only reached when the scenario itself passed: nothing may be left behind.
    leftovers = deployed.leftovers()
    assert leftovers == dict.fromkeys(leftovers, 0), leftovers
    data = platform.internals.data.stats()
    assert data.closed
    assert data.connections_open == 0
    assert platform.internals.runner.stats().closed
    assert platform.internals.dispatchers.closed
    for port in ports:  # every server (gRPC, gateways) has stopped listening
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
    await asyncio.sleep(0)
    current = asyncio.current_task()
    stray = [
        task
        for task in asyncio.all_tasks() - before
        if task is not current and not _outside_world(task)
    ]
    assert stray == [], stray


def _outside_world(task: asyncio.Task[Any]) -> bool:
    """A task of the loopback LLM server (the outside world, which outlives the platform
    and cleans up after itself when it is closed)."""
    name: str = getattr(task.get_coro(), "__qualname__", "")
    return name.startswith("ChatCompletionsStub.")
