"""Fixtures of the gateway tests: the real gateway on 127.0.0.1:0 over the real auth
service (SQLite under tmp_path), the real router, replay buffer and emitters, and real
``websockets`` clients.

The one stand-in is :class:`ScriptedRuns`, an :class:`~websocket.gateway.runs.AgentRuns`
for the agent service (a package the gateway may not depend on): each run emits the
event sequence of a real run through the real emitter, and a test can pause it at
chosen points.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

from auth.api import TokenAuthenticator
from auth.service import LocalAuthService
from auth.testing import fast_settings
from context.api import UserExecutionContext
from websocket.auth.authenticator import WebSocketAuthenticator
from websocket.auth.expiry import Clock, ExpiryPolicy
from websocket.auth.settings import WebSocketAuthSettings
from websocket.auth.testing import ShiftedTime, TestUser, register_user
from websocket.emitter import MemoryReplayBuffer, RequestEmitterFactory
from websocket.gateway.api import RunRejectedError
from websocket.gateway.runs import RunAccepted
from websocket.gateway.server import WebSocketGateway
from websocket.gateway.settings import GatewaySettings
from websocket.router import InProcessEventRouter

__all__ = [
    "AGENT",
    "SEQUENCE",
    "Client",
    "GatewayFactory",
    "Harness",
    "ScriptedRuns",
    "alice",
    "auth_service",
    "auth_time",
    "bob",
    "eventually",
    "harness",
    "make_harness",
]

AGENT = "research"
#: The event types of one complete scripted run, in order.
SEQUENCE = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)
ALLOWED_ORIGIN = "https://app.example.com"
RECV_TIMEOUT = 5.0


@dataclass
class _Run:
    user_id: str
    task: asyncio.Task[None]


class ScriptedRuns:
    """Runs of one agent, ``research``: agent_started, agent_thinking, tool_executing,
    tool_completed, agent_completed - five events through the real emitter.

    ``pause_after`` lists event counts after which a run stops until :meth:`proceed`;
    each stop is announced on ``paused`` (``(run_id, count)``). A cancelled run ends
    with ``agent_error``.
    """

    def __init__(self, emitters: RequestEmitterFactory) -> None:
        self._emitters = emitters
        self._runs: dict[str, _Run] = {}
        self.started: list[UserExecutionContext] = []
        self.pause_after: set[int] = set()
        self.paused: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._proceed: asyncio.Queue[None] = asyncio.Queue()

    def proceed(self) -> None:
        self._proceed.put_nowait(None)

    async def next_pause(self) -> tuple[str, int]:
        return await asyncio.wait_for(self.paused.get(), timeout=RECV_TIMEOUT)

    async def start(
        self, ctx: UserExecutionContext, *, agent_name: str, message: str
    ) -> RunAccepted:
        if agent_name != AGENT:
            raise RunRejectedError("Unknown agent.")
        self.started.append(ctx)
        emitter = self._emitters.create_emitter(ctx)
        task = asyncio.create_task(self._script(ctx.run_id, emitter, agent_name, message))
        self._runs[ctx.run_id] = _Run(ctx.user_id, task)
        return RunAccepted(run_id=ctx.run_id, thread_id=ctx.thread_id)

    async def _script(self, run_id: str, emitter: Any, agent: str, message: str) -> None:
        steps: Sequence[Callable[[], Awaitable[bool]]] = (
            lambda: emitter.notify_agent_started(agent),
            lambda: emitter.notify_agent_thinking(agent, f"How to answer: {message}", step=1),
            lambda: emitter.notify_tool_executing(agent, "calculator", {"expression": "6*7"}),
            lambda: emitter.notify_tool_completed(
                agent, "calculator", success=True, result_summary="42", execution_time_ms=1.5
            ),
            lambda: emitter.notify_agent_completed(agent, {"answer": "42"}),
        )
        try:
            for count, step in enumerate(steps, 1):
                if not await step():
                    raise AssertionError(f"the emitter refused event {count}")
                if count in self.pause_after:
                    self.paused.put_nowait((run_id, count))
                    await self._proceed.get()
        except asyncio.CancelledError:
            await emitter.notify_agent_error(agent, "cancelled", "The run was cancelled.")
        finally:
            await emitter.close()

    async def cancel(self, ctx: UserExecutionContext, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.user_id != ctx.user_id or run.task.done():
            return False
        run.task.cancel()
        return True

    async def wait_idle(self, grace_seconds: float) -> bool:
        pending = [run.task for run in self._runs.values() if not run.task.done()]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=grace_seconds)
        return not still

    async def finish(self) -> None:
        """Cancel whatever still runs (test teardown)."""
        for run in self._runs.values():
            run.task.cancel()
        await asyncio.gather(*(run.task for run in self._runs.values()), return_exceptions=True)


class Client:
    """A real ``websockets`` client with JSON helpers."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout=RECV_TIMEOUT)
        parsed: dict[str, Any] = json.loads(frame)
        return parsed

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait for the server to close; return the close code and reason received.

        Fails if a message arrives first.
        """
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout=RECV_TIMEOUT)
        except ConnectionClosed:
            return self.ws.close_code, self.ws.close_reason
        raise AssertionError(f"expected the connection to close, got {frame!r}")

    async def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """Receive until the run's last event (agent_completed or agent_error)."""
        events: list[dict[str, Any]] = []
        while True:
            message = await self.recv()
            assert message.get("run_id") == run_id, message
            events.append(message)
            if message["type"] in ("agent_completed", "agent_error"):
                return events

    async def ping_pong(self) -> None:
        """The connection is open and nothing is pending before the pong."""
        await self.send({"type": "ping"})
        assert await self.recv() == {"type": "pong"}


@dataclass
class Harness:
    gateway: WebSocketGateway
    auth: LocalAuthService
    authenticator: WebSocketAuthenticator
    router: InProcessEventRouter
    replay: MemoryReplayBuffer
    runs: ScriptedRuns
    registry: CollectorRegistry
    stack: AsyncExitStack
    users: dict[str, TestUser] = field(default_factory=dict)

    async def user(self, name: str) -> TestUser:
        if name not in self.users:
            self.users[name] = await register_user(self.auth, name)
        return self.users[name]

    async def raw(
        self,
        *,
        token: str | None = None,
        path: str | None = None,
        subprotocols: Sequence[str] | None = None,
        origin: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        **options: Any,
    ) -> Client:
        """Connect without reading anything."""
        extra = list(headers)
        if token is not None:
            extra.append(("Authorization", f"Bearer {token}"))
        url = self.gateway.url if path is None else self.gateway.url.rsplit("/", 1)[0] + path
        ws = await self.stack.enter_async_context(
            connect(
                url,
                additional_headers=extra,
                subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
                origin=None if origin is None else Origin(origin),
                open_timeout=RECV_TIMEOUT,
                **options,
            )
        )
        return Client(ws)

    async def connect(self, user: TestUser, **kwargs: Any) -> Client:
        """Connect as ``user`` and read ``authentication_success``."""
        client = await self.raw(token=user.access_token, **kwargs)
        welcome = await client.recv()
        assert welcome["type"] == "authentication_success", welcome
        assert welcome["user_id"] == user.user_id
        return client

    async def start_run(self, client: Client, **fields: Any) -> dict[str, Any]:
        """Send start_agent and return run_accepted."""
        await client.send({"type": "start_agent", "agent": AGENT, "message": "6*7?", **fields})
        accepted = await client.recv()
        assert accepted["type"] == "run_accepted", accepted
        return accepted


GatewayFactory = Callable[..., Awaitable[Harness]]


async def eventually(predicate: Callable[[], bool], within: float = RECV_TIMEOUT) -> None:
    """Wait until ``predicate()`` holds: for state of the server side (registry entries,
    metrics) that a client cannot await directly."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  (no event exists for this state)
            await asyncio.sleep(0.005)


@pytest.fixture
def auth_time() -> ShiftedTime:
    """The auth service's clock: real time, which a test may move ahead."""
    return ShiftedTime()


@pytest.fixture
async def auth_service(tmp_path: Path, auth_time: ShiftedTime) -> AsyncIterator[LocalAuthService]:
    settings = fast_settings(tmp_path / "auth")
    async with await LocalAuthService.create(settings, clock=auth_time) as service:
        yield service


@pytest.fixture
async def make_harness(auth_service: LocalAuthService) -> AsyncIterator[GatewayFactory]:
    """Build and start gateways; each is shut down at the end of the test."""
    async with AsyncExitStack() as stack:

        async def build(
            *,
            token_auth: TokenAuthenticator | None = None,
            auth_settings: WebSocketAuthSettings | None = None,
            expiry_policy: ExpiryPolicy | None = None,
            clock: Clock | None = None,
            **settings: Any,
        ) -> Harness:
            router = InProcessEventRouter()
            replay = MemoryReplayBuffer()
            runs = ScriptedRuns(RequestEmitterFactory(delivery=router, replay=replay))
            registry = CollectorRegistry()
            authenticator = WebSocketAuthenticator(
                token_auth or auth_service,
                settings=auth_settings or WebSocketAuthSettings(allowed_origins=(ALLOWED_ORIGIN,)),
            )
            gateway = WebSocketGateway(
                authenticator=authenticator,
                router=router,
                replay=replay,
                runs=runs,
                settings=GatewaySettings(**{"port": 0, **settings}),
                metrics_registry=registry,
                expiry_policy=expiry_policy,
                clock=clock,
            )
            await gateway.start()
            # Teardown runs in reverse: clients close, then runs end, then the gateway.
            stack.push_async_callback(router.close)
            stack.push_async_callback(gateway.shutdown, 0)
            stack.push_async_callback(runs.finish)
            client_stack = await stack.enter_async_context(AsyncExitStack())
            return Harness(
                gateway=gateway,
                auth=auth_service,
                authenticator=authenticator,
                router=router,
                replay=replay,
                runs=runs,
                registry=registry,
                stack=client_stack,
            )

        yield build


@pytest.fixture
async def harness(make_harness: GatewayFactory) -> Harness:
    return await make_harness()


@pytest.fixture
async def alice(harness: Harness) -> TestUser:
    return await harness.user("alice")


@pytest.fixture
async def bob(harness: Harness) -> TestUser:
    return await harness.user("bob")
