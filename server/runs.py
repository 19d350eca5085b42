"""The gateway's :class:`~websocket.gateway.runs.AgentRuns`, wired to the agent service.

The gateway builds each run's context itself (verified user, a new ``run_id``, the
requested or a new ``thread_id``) and expects the run's events under that ``run_id``: it
holds the run's live events until ``run_accepted`` has been sent, and ``resume`` and
``cancel_run`` name it. The agent service (:class:`~dispatch.agents.api.AgentService`)
chooses and records its own run ID, in process and over gRPC alike. So each adapter here
keeps a link between the two: the *gateway run ID* (what the WebSocket client sees in
every event, in ``run_accepted``, ``resume`` and ``cancel_run``) and the *service run ID*
(what the runner recorded through //data). :meth:`LocalAgentRuns.service_run_id` and
:meth:`GrpcAgentRuns.service_run_id` give the latter for the former.

The thread: the adapters first ask for the context's ``thread_id``; when the service says
the user has no such thread (a new conversation, or a thread that is not the user's - the
two answers are identical), the run starts on a new thread and ``run_accepted`` and every
event name that thread.

* :class:`LocalAgentRuns` (embedded platform): the runner's event-sink factory is
  :class:`RunEventSinks`; a run started through the gateway has its sink built for the
  gateway's context, so its events are numbered, stored for replay and routed exactly once,
  by the gateway process's own emitter.
* :class:`GrpcAgentRuns` (``--role gateway``): the run is started over gRPC with the user's
  own access token; the streamed envelopes are re-emitted, in stream order, through this
  process's emitter (router delivery + replay buffer), so ``resume`` works here. Sequence
  numbers: the emitter numbers per run from 1 in arrival order, and the gRPC stream
  delivers the dispatch process's events complete and in order, so the numbers are the
  same as the dispatch side's; each re-emitted event is checked against the streamed
  ``seq`` and a difference is logged. A stream that breaks before the run's terminal
  event ends the run here with one ``agent_error`` (``recoverable``), so a client never
  waits for an end that will not come.

The runs are always acted on as the connection's user: the caller is rebuilt from the
connection's access token (:class:`server.credentials.ConnectionCredentials`), verified
again at each start, so a revoked or expired token starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc.aio
import structlog

from auth.api import AuthContextKind, TokenAuthenticator
from context.api import UserExecutionContext
from dispatch.agents.api import (
    AgentError,
    AgentUnavailableError,
    ThreadNotFoundError,
)
from dispatch.agents.grpc_client import GrpcAgentClient, StreamingRunHandle
from dispatch.agents.service import AgentRunner
from dispatch.engine.api import EngineError, ToolCaller
from dispatch.tools.api import EventType, RunEventSink
from server.credentials import ConnectionCredentials
from websocket.emitter.api import EmitterFactory, UserWebSocketEmitter
from websocket.gateway.api import GatewayError, RunRejectedError, ServiceUnavailableError
from websocket.gateway.runs import AgentRuns, RunAccepted

__all__ = [
    "DiscardingSink",
    "GrpcAgentRuns",
    "LocalAgentRuns",
    "RunEventSinks",
    "discarding_sinks",
]

log = structlog.get_logger(__name__)

_TERMINAL = frozenset({EventType.AGENT_COMPLETED.value, EventType.AGENT_ERROR.value})


def _rejection(error: AgentError) -> GatewayError:
    """The gateway error for an agent-service refusal (its messages are client-safe)."""
    if isinstance(error, AgentUnavailableError):
        return ServiceUnavailableError()
    return RunRejectedError(f"{error.message} ({error.error_code})")


async def _verified_caller(
    ctx: UserExecutionContext, credentials: ConnectionCredentials, auth: TokenAuthenticator
) -> tuple[ToolCaller, str]:
    """The caller for ``ctx`` from its connection's token, verified now; and the token."""
    token = credentials.token_for(ctx)
    if token is None:
        raise RunRejectedError("This connection holds no credential to start runs with.")
    try:
        result = await auth.authenticate_token(token, AuthContextKind.WEBSOCKET)
    except Exception as exc:
        log.error("run_caller_verification_failed", error=type(exc).__name__)
        raise ServiceUnavailableError() from None
    if not result.success:
        code = result.error_code.value if result.error_code is not None else "INVALID_TOKEN"
        if code in ("AUTH_SERVICE_UNAVAILABLE", "INTERNAL_ERROR"):
            raise ServiceUnavailableError()
        raise RunRejectedError(f"The connection's token is no longer valid ({code}); refresh it.")
    try:
        return ToolCaller.from_auth_result(ctx, result), token
    except EngineError as exc:
        raise RunRejectedError(f"{exc.message} ({exc.error_code})") from None


class _RunIdHistory:
    """Gateway run ID -> (user, service run ID) of the last ``limit`` runs started here."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def add(self, user_id: str, run_id: str, service_run_id: str) -> None:
        self._ids[run_id] = (user_id, service_run_id)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def get(self, user_id: str, run_id: str) -> str | None:
        found = self._ids.get(run_id)
        if found is None or found[0] != user_id:
            return None
        return found[1]


# -- in process --------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _RunLink:
    """A run started through the gateway: its two IDs and who may act on it."""

    gateway_ctx: UserExecutionContext
    caller: ToolCaller | None = None
    service_run_id: str | None = None
    thread_id: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    on_done: Callable[[], None] | None = None

    @property
    def user_id(self) -> str:
        return self.gateway_ctx.user_id


class _LinkedSink:
    """The emitter of a gateway-started run; marks the link done when the run closes it."""

    def __init__(self, emitter: UserWebSocketEmitter, link: _RunLink) -> None:
        self._emitter = emitter
        self._link = link

    @property
    def emitter(self) -> UserWebSocketEmitter:
        return self._emitter

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        return await self._emitter.emit(event_type, agent_name=agent_name, payload=payload)

    async def close(self) -> None:
        try:
            await self._emitter.close()
        finally:
            self._link.done.set()
            if self._link.on_done is not None:
                self._link.on_done()


class RunEventSinks:
    """The runner's event-sink factory: one emitter (router + replay) per run.

    A run the gateway started (see :meth:`claim`) gets an emitter for the gateway's
    context - the gateway's run ID, the thread the runner chose - so its events carry the
    IDs the WebSocket client was given. Any other run (started over gRPC, or by a direct
    in-process caller) gets an emitter for the runner's own run context.
    """

    def __init__(self, emitters: EmitterFactory) -> None:
        self._emitters = emitters
        self._claims: dict[tuple[str, str], _RunLink] = {}

    @property
    def emitters(self) -> EmitterFactory:
        return self._emitters

    @contextlib.contextmanager
    def claim(self, ctx: UserExecutionContext) -> Iterator[_RunLink]:
        """While active, the next run of ``ctx``'s user and request gets ``ctx``'s run ID.

        The runner derives its run context from the caller's, keeping ``user_id`` and
        ``request_id``; the gateway makes a new request ID for every ``start_agent``, so
        the pair names exactly one start.
        """
        key = (ctx.user_id, ctx.request_id)
        if key in self._claims:
            raise RuntimeError("this request already has a run being started")
        link = _RunLink(gateway_ctx=ctx)
        self._claims[key] = link
        try:
            yield link
        finally:
            self._claims.pop(key, None)

    def __call__(self, run_ctx: UserExecutionContext, agent_name: str) -> RunEventSink:
        link = self._claims.pop((run_ctx.user_id, run_ctx.request_id), None)
        if link is None:
            return self._emitters.create_emitter(run_ctx)
        link.service_run_id = run_ctx.run_id
        link.thread_id = run_ctx.thread_id
        event_ctx = dataclasses.replace(link.gateway_ctx, thread_id=run_ctx.thread_id)
        return _LinkedSink(self._emitters.create_emitter(event_ctx), link)


class LocalAgentRuns(AgentRuns):
    """:class:`AgentRuns` over an in-process :class:`AgentRunner` (see the module doc)."""

    def __init__(
        self,
        runner: AgentRunner,
        sinks: RunEventSinks,
        *,
        credentials: ConnectionCredentials,
        token_auth: TokenAuthenticator,
    ) -> None:
        self._runner = runner
        self._sinks = sinks
        self._credentials = credentials
        self._auth = token_auth
        self._runs: dict[str, _RunLink] = {}
        self._ids = _RunIdHistory()

    def service_run_id(self, user_id: str, run_id: str) -> str | None:
        """The runner's (recorded) run ID of the user's gateway run ``run_id``: for runs in
        progress and the most recent finished ones; ``None`` for anyone else's run."""
        return self._ids.get(user_id, run_id)

    def active(self) -> int:
        """Runs started through the gateway that have not ended yet."""
        return len(self._runs)

    def _forget(self, link: _RunLink) -> None:
        if self._runs.get(link.gateway_ctx.run_id) is link:
            del self._runs[link.gateway_ctx.run_id]

    async def start(
        self, ctx: UserExecutionContext, *, agent_name: str, message: str
    ) -> RunAccepted:
        caller, _ = await _verified_caller(ctx, self._credentials, self._auth)
        with self._sinks.claim(ctx) as link:
            link.caller = caller
            link.on_done = functools.partial(self._forget, link)
            try:
                try:
                    handle = await self._runner.start_run(
                        caller, agent_name, message, thread_id=ctx.thread_id
                    )
                except ThreadNotFoundError:
                    handle = await self._runner.start_run(caller, agent_name, message)
            except AgentError as exc:
                raise _rejection(exc) from None
        self._ids.add(ctx.user_id, ctx.run_id, handle.run_id)
        if not link.done.is_set():
            self._runs[ctx.run_id] = link
        log.info(
            "gateway_run_started",
            run_id=ctx.run_id,
            service_run_id=handle.run_id,
            thread_id=handle.thread_id,
        )
        return RunAccepted(run_id=ctx.run_id, thread_id=handle.thread_id)

    async def cancel(self, ctx: UserExecutionContext, run_id: str) -> bool:
        link = self._runs.get(run_id)
        if link is None or link.user_id != ctx.user_id or link.caller is None:
            return False
        if link.service_run_id is None:
            return False
        return self._runner.cancel_run_nowait(link.caller, link.service_run_id)

    async def wait_idle(self, grace_seconds: float) -> bool:
        pending = [link.done.wait() for link in self._runs.values()]
        if not pending:
            return True
        tasks = [asyncio.ensure_future(wait) for wait in pending]
        _, still = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        return not still


# -- over gRPC ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _RemoteRun:
    user_id: str
    caller: ToolCaller
    token: str = field(repr=False)
    service_run_id: str
    task: asyncio.Task[None] | None = None


class GrpcAgentRuns(AgentRuns):
    """:class:`AgentRuns` over a remote AgentService (see the module doc).

    ``channel`` reaches the dispatch process; each call carries the connection user's
    access token (never a service token: the AgentService acts for the token's user).
    ``token_auth`` verifies that token before a run starts (the remote auth service).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        emitters: EmitterFactory,
        *,
        credentials: ConnectionCredentials,
        token_auth: TokenAuthenticator,
        rpc_timeout_seconds: float = 30.0,
    ) -> None:
        self._channel = channel
        self._emitters = emitters
        self._credentials = credentials
        self._auth = token_auth
        self._rpc_timeout = rpc_timeout_seconds
        self._runs: dict[str, _RemoteRun] = {}
        self._ids = _RunIdHistory()
        self._closed = False

    def _client(self, token: str) -> GrpcAgentClient:
        async def provide() -> str:
            return token

        return GrpcAgentClient(
            self._channel, token_provider=provide, rpc_timeout_seconds=self._rpc_timeout
        )

    def service_run_id(self, user_id: str, run_id: str) -> str | None:
        """The dispatch process's run ID of the user's gateway run ``run_id`` (runs in
        progress and the most recent finished ones; ``None`` for anyone else's run)."""
        return self._ids.get(user_id, run_id)

    def active(self) -> int:
        return len(self._runs)

    async def start(
        self, ctx: UserExecutionContext, *, agent_name: str, message: str
    ) -> RunAccepted:
        if self._closed:
            raise ServiceUnavailableError()
        caller, token = await _verified_caller(ctx, self._credentials, self._auth)
        client = self._client(token)
        try:
            try:
                handle = await client.start_run(
                    caller, agent_name, message, thread_id=ctx.thread_id
                )
            except ThreadNotFoundError:
                handle = await client.start_run(caller, agent_name, message)
        except AgentError as exc:
            raise _rejection(exc) from None
        except grpc.aio.AioRpcError as exc:
            log.error("gateway_remote_start_failed", status=exc.code().name)
            raise ServiceUnavailableError() from None
        event_ctx = dataclasses.replace(ctx, thread_id=handle.thread_id)
        emitter = self._emitters.create_emitter(event_ctx)
        run = _RemoteRun(
            user_id=ctx.user_id, caller=caller, token=token, service_run_id=handle.run_id
        )
        self._runs[ctx.run_id] = run
        self._ids.add(ctx.user_id, ctx.run_id, handle.run_id)
        run.task = asyncio.create_task(
            self._pump(ctx.run_id, run, handle, emitter, agent_name),
            name=f"gateway-run:{ctx.run_id}",
        )
        log.info(
            "gateway_run_started",
            run_id=ctx.run_id,
            service_run_id=handle.run_id,
            thread_id=handle.thread_id,
        )
        return RunAccepted(run_id=ctx.run_id, thread_id=handle.thread_id)

    async def _pump(
        self,
        run_id: str,
        run: _RemoteRun,
        handle: StreamingRunHandle,
        emitter: UserWebSocketEmitter,
        agent_name: str,
    ) -> None:
        """Re-emit the streamed events here, in order; end the run if the stream breaks."""
        ended = False
        reason = "the agent service stopped streaming this run"
        try:
            async for event in handle.events():
                accepted = await emitter.emit(
                    event.type.value, agent_name=event.agent_name, payload=event.payload
                )
                if accepted and emitter.stats().last_seq != event.seq:
                    log.warning(
                        "gateway_run_seq_differs",
                        run_id=run_id,
                        streamed_seq=event.seq,
                        local_seq=emitter.stats().last_seq,
                    )
                if event.type.value in _TERMINAL:
                    ended = True
        except AgentError as exc:
            log.warning("gateway_run_stream_failed", run_id=run_id, error_code=exc.error_code)
        except asyncio.CancelledError:
            reason = "the gateway is shutting down"
            raise
        finally:
            if not ended:
                handle.close()
                await emitter.notify_agent_error(
                    agent_name, "internal_error", reason, recoverable=True
                )
            await emitter.close()
            if self._runs.get(run_id) is run:
                del self._runs[run_id]

    async def cancel(self, ctx: UserExecutionContext, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.user_id != ctx.user_id:
            return False
        if run.task is None or run.task.done():
            return False
        token = self._credentials.token_for(ctx) or run.token
        try:
            await self._client(token).cancel_run(run.caller, run.service_run_id)
        except AgentError as exc:
            if isinstance(exc, AgentUnavailableError):
                raise ServiceUnavailableError() from None
            return False
        return True

    async def wait_idle(self, grace_seconds: float) -> bool:
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if not tasks:
            return True
        _, still = await asyncio.wait(tasks, timeout=grace_seconds)
        return not still

    async def aclose(self) -> None:
        """Stop following the runs still streaming (each ends here with an agent_error)."""
        self._closed = True
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- a process without WebSockets --------------------------------------------------------


class DiscardingSink:
    """The sink of a run in a process that serves no WebSockets (``--role dispatch``):
    its events reach clients through the AgentService stream's own sink instead."""

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        return True


def discarding_sinks(ctx: UserExecutionContext, agent_name: str) -> RunEventSink:
    """An event-sink factory whose sinks drop every event (see :class:`DiscardingSink`)."""
    return DiscardingSink()
