"""The composition root: every service of the platform wired together.

Four entry points, all used by ``server.main`` and by the integration tests:

* :func:`build_platform` - the embedded, in-process platform: auth, data, the tool engine,
  LLM access, the tool dispatcher and agent factories, the agent runner, the WebSocket
  event plumbing (router, replay buffer, emitters) and the gateway. Each service is exposed
  by its api Protocol type; :meth:`Platform.aclose` shuts everything down in order.
* :func:`serve_grpc` / :func:`serve_services` - one ``grpc.aio`` server with the services
  (AuthService, DataAccess, ToolService, LLMService, AgentService) behind
  :class:`~auth.interceptors.AuthServerInterceptor`, plus grpc health and reflection.
* :func:`connect_grpc` - the same Protocol-typed handles over gRPC clients, so a scenario
  runs in process and over gRPC unchanged.
* :func:`build_gateway_stack` - a WebSocket gateway with its own router, replay buffer and
  emitters whose runs go to a remote AgentService (``--role gateway``; also two gateway
  nodes sharing Redis).

Per-user gRPC clients: tokens are per user, so a client connection is per user too::

    anon = await connect_grpc(host.address)              # register / login only
    await anon.auth.register("a@example.com", "password-1")
    pair = await anon.auth.login("a@example.com", "password-1")
    alice = await connect_grpc(host.address, access_token=pair.access_token)
    caller = await alice.caller()                         # ToolCaller from the token
    handle = await alice.agents.start_run(caller, "assistant", "what is 6*7?")
    async for event in handle.events(): ...
    await alice.aclose(); await anon.aclose()

In process the same scenario uses ``platform.agents`` and ``await platform.caller(token)``.

Run IDs through the gateway: see :mod:`server.runs` - the WebSocket client's run ID is
the gateway's; the agent service records its own (``platform.runs.service_run_id``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from auth import auth_pb2_grpc
from auth.api import (
    AuthContextKind,
    AuthError,
    TokenAuthenticator,
    UnifiedAuthenticationService,
)
from auth.grpc_client import GrpcAuthClient
from auth.grpc_server import AUTH_SERVICE_NAME, PUBLIC_METHODS, AuthServicer
from auth.interceptors import AuthServerInterceptor, TokenProvider, auth_client_interceptors
from auth.service import LocalAuthService
from auth.settings import AuthSettings
from context.api import UserExecutionContext
from context.proto_codec import GRPC_SERVER_METADATA_OPTIONS
from data import data_pb2
from data.api import DataAccessFactory, UserDataAccessProvider
from data.factory import DataAccessConfig, SqlDataAccessFactory
from data.grpc_client import GrpcDataAccessClient
from data.grpc_server import add_data_access_servicer
from data.migrate import upgrade_schema
from dispatch.agents.api import AgentService, AgentSettings, LLMManagerProvider
from dispatch.agents.factory import AgentInstanceFactory
from dispatch.agents.grpc_client import GrpcAgentClient
from dispatch.agents.grpc_server import AGENT_SERVICE_NAME, add_agent_service
from dispatch.agents.service import AgentRunner
from dispatch.engine import engine_pb2
from dispatch.engine.api import ToolCaller, ToolExecutionEngine
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.grpc_client import GrpcToolEngineClient
from dispatch.engine.grpc_server import add_tool_service
from dispatch.engine.rate_limits import ToolRateLimiter
from dispatch.engine.registry import Tool, ToolRegistry
from dispatch.llm import llm_pb2
from dispatch.llm.clock import Clock as LLMClock
from dispatch.llm.grpc_client import GrpcLLMClient
from dispatch.llm.grpc_server import add_llm_servicer
from dispatch.llm.manager import LLMManagerFactory
from dispatch.llm.settings import LLMSettings
from dispatch.tools.api import EventSinkFactory, ToolDispatcherProvider
from dispatch.tools.service import ToolDispatcherFactory
from server.credentials import ConnectionCredentials
from server.metrics import (
    CountingDelivery,
    CountingTokenAuthenticator,
    PlatformMetrics,
    ServiceCollector,
)
from server.runs import GrpcAgentRuns, LocalAgentRuns, RunEventSinks, discarding_sinks
from server.settings import ServerSettings
from websocket.auth.api import UnifiedWebSocketAuth
from websocket.auth.authenticator import WebSocketAuthenticator
from websocket.auth.expiry import Clock as WebSocketClock
from websocket.auth.settings import WebSocketAuthSettings
from websocket.emitter.api import EmitterFactory, ReplayBuffer
from websocket.emitter.emitter import RequestEmitterFactory
from websocket.emitter.replay import MemoryReplayBuffer, RedisReplayBuffer
from websocket.gateway.runs import AgentRuns
from websocket.gateway.server import WebSocketGateway
from websocket.gateway.settings import GatewaySettings
from websocket.router.api import WebSocketEventRouter
from websocket.router.redis_fanout import RedisFanoutRouter
from websocket.router.router import InProcessEventRouter

__all__ = [
    "DispatchServices",
    "GatewayStack",
    "GrpcHost",
    "Platform",
    "PlatformInternals",
    "RemoteServices",
    "build_data_factory",
    "build_dispatch_services",
    "build_gateway_stack",
    "build_platform",
    "connect_grpc",
    "grpc_address",
    "serve_grpc",
    "serve_services",
]

log = structlog.get_logger(__name__)

DATA_SERVICE_NAME: str = data_pb2.DESCRIPTOR.services_by_name["DataAccess"].full_name
TOOL_SERVICE_NAME: str = engine_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name
LLM_SERVICE_NAME: str = llm_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name
_HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def grpc_address(host: str, port: int) -> str:
    """``host:port`` for gRPC (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _caller_from_token(
    auth: TokenAuthenticator, access_token: str, ctx: UserExecutionContext | None
) -> ToolCaller:
    result = await auth.authenticate_token(access_token, AuthContextKind.REST_API)
    if not result.success or result.user_id is None:
        code = result.error_code.value if result.error_code is not None else "INVALID_TOKEN"
        raise AuthError(f"the access token was refused ({code})")
    ctx = ctx if ctx is not None else UserExecutionContext.from_request(result.user_id)
    return ToolCaller.from_auth_result(ctx, result)


# -- the WebSocket side, shared by the platform and the gateway-only stack -----------------


@dataclass(eq=False, slots=True)
class _EventPlumbing:
    router: InProcessEventRouter | RedisFanoutRouter
    replay: MemoryReplayBuffer | RedisReplayBuffer
    emitters: RequestEmitterFactory


async def _event_plumbing(
    stack: AsyncExitStack,
    *,
    redis_url: str | None,
    max_connections_per_user: int,
    metrics: PlatformMetrics,
) -> _EventPlumbing:
    local = InProcessEventRouter(max_connections_per_user=max_connections_per_user)
    router: InProcessEventRouter | RedisFanoutRouter
    replay: MemoryReplayBuffer | RedisReplayBuffer
    if redis_url:
        fanout = RedisFanoutRouter.from_url(redis_url, local=local)
        stack.push_async_callback(fanout.close)
        await fanout.start()
        router = fanout
        redis_replay = RedisReplayBuffer.from_url(redis_url)
        stack.push_async_callback(redis_replay.close)
        replay = redis_replay
    else:
        stack.push_async_callback(local.close)
        router = local
        memory = MemoryReplayBuffer()
        stack.push_async_callback(memory.close)
        replay = memory
    emitters = RequestEmitterFactory(delivery=CountingDelivery(router, metrics), replay=replay)
    return _EventPlumbing(router=router, replay=replay, emitters=emitters)


def _ws_auth_settings(settings: ServerSettings) -> WebSocketAuthSettings:
    return WebSocketAuthSettings(
        allowed_origins=settings.allowed_origins,
        max_connections_per_user=settings.max_connections_per_user,
    )


def _gateway_settings(settings: ServerSettings) -> GatewaySettings:
    return GatewaySettings(
        host=settings.host,
        port=settings.ws_port,
        path=settings.ws_path,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )


# -- the embedded platform -----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class PlatformInternals:
    """The concrete objects behind a :class:`Platform`'s Protocol-typed handles (for
    serving them over gRPC, for statistics and for tests that check clean-up)."""

    auth: LocalAuthService
    data: SqlDataAccessFactory
    engine: LocalToolExecutionEngine
    rate_limiter: ToolRateLimiter
    llm: LLMManagerFactory
    dispatchers: ToolDispatcherFactory
    agent_factory: AgentInstanceFactory
    runner: AgentRunner
    sinks: RunEventSinks
    router: InProcessEventRouter | RedisFanoutRouter
    replay: MemoryReplayBuffer | RedisReplayBuffer
    emitters: RequestEmitterFactory
    ws_auth: ConnectionCredentials
    runs: LocalAgentRuns
    gateway: WebSocketGateway


@dataclass(eq=False)
class Platform:
    """Every service of one embedded process, by its api Protocol type.

    ``agents`` is the agent service (the runner); ``runs`` is what the gateway uses to
    start runs for WebSocket clients. ``gateway`` listens at :attr:`ws_url` once started
    (:func:`build_platform` starts it unless told not to).
    """

    settings: ServerSettings
    auth: UnifiedAuthenticationService
    token_auth: TokenAuthenticator
    data: DataAccessFactory
    engine: ToolExecutionEngine
    llm: LLMManagerProvider
    tools: ToolDispatcherProvider
    agents: AgentService
    router: WebSocketEventRouter
    replay: ReplayBuffer
    emitters: EmitterFactory
    ws_auth: UnifiedWebSocketAuth
    runs: AgentRuns
    gateway: WebSocketGateway
    metrics: PlatformMetrics
    internals: PlatformInternals
    _stack: AsyncExitStack = field(repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def ws_url(self) -> str:
        """``ws://host:port/ws`` of the started gateway."""
        return self.gateway.url

    async def caller(
        self, access_token: str, ctx: UserExecutionContext | None = None
    ) -> ToolCaller:
        """The verified caller of ``access_token`` (for ``ctx``, or a new root context)."""
        return await _caller_from_token(self.auth, access_token, ctx)

    def leftovers(self) -> dict[str, int]:
        """What is still held: runs, gateway runs, dispatchers, data scopes and
        connections, WebSocket connections and their credentials (all 0 when idle)."""
        internals = self.internals
        data = internals.data.stats()
        return {
            "runs": internals.runner.stats().active_runs,
            "gateway_runs": internals.runs.active(),
            "dispatchers": internals.dispatchers.stats().live_dispatchers,
            "data_scopes": data.live_scopes,
            "db_connections_checked_out": data.connections_checked_out,
            "ws_connections": internals.router.stats().connections,
            "ws_credentials": len(internals.ws_auth),
        }

    async def aclose(self, grace_seconds: float | None = None) -> None:
        """Shut down in order: the gateway (stop accepting, let runs finish up to
        ``grace_seconds`` - default the settings' - then close connections with 1001),
        the runner (cancel what still runs), dispatchers, LLM, engine, event plumbing,
        data (scopes, cache, engine pool) and auth. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.gateway.shutdown(grace_seconds)
        finally:
            await self._stack.aclose()
        log.info("platform_closed")


async def _open_gateway(
    settings: ServerSettings,
    gateway_settings: GatewaySettings | None,
    *,
    ws_auth: ConnectionCredentials,
    ws_conf: WebSocketAuthSettings,
    plumbing: _EventPlumbing,
    runs: AgentRuns,
    metrics: PlatformMetrics,
    ws_clock: WebSocketClock | None,
    start: bool,
) -> WebSocketGateway:
    """The WebSocket gateway over one process's router, replay buffer and run adapter
    (the same for the embedded platform and a split-role gateway node)."""
    gateway = WebSocketGateway(
        authenticator=ws_auth,
        router=plumbing.router,
        replay=plumbing.replay,
        runs=runs,
        settings=gateway_settings or _gateway_settings(settings),
        metrics_registry=metrics.registry,
        expiry_policy=ws_conf.expiry_policy(),
        clock=ws_clock,
    )
    if start:
        await gateway.start()
    return gateway


async def build_platform(
    settings: ServerSettings | None = None,
    *,
    data_dir: Path | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    auth_settings: AuthSettings | None = None,
    auth_overrides: Mapping[str, Any] | None = None,
    llm_settings: LLMSettings | None = None,
    llm_factory: LLMManagerFactory | None = None,
    agent_settings: AgentSettings | None = None,
    ws_auth_settings: WebSocketAuthSettings | None = None,
    gateway_settings: GatewaySettings | None = None,
    extra_tools: Iterable[Tool[Any]] = (),
    auth_clock: Callable[[], float] | None = None,
    llm_clock: LLMClock | None = None,
    ws_clock: WebSocketClock | None = None,
    metrics_registry: CollectorRegistry | None = None,
    start_gateway: bool = True,
) -> Platform:
    """Build (and start the gateway of) the embedded platform.

    ``settings`` defaults to ephemeral ports (``grpc_port=0, ws_port=0``) and the
    environment (``SSOT_*``); ``data_dir``, ``database_url`` and ``redis_url`` override
    it. Per-user limits, the run timeout and Origins come from ``settings``
    (``max_runs_per_user``, ``max_runs_total``, ``run_timeout_seconds``,
    ``max_connections_per_user``, ``max_data_scopes_per_user``, ``allowed_origins``)
    unless ``agent_settings`` / ``ws_auth_settings`` / ``gateway_settings`` are given.

    Auth: ``auth_settings`` (default: keys and SQLite under ``<data_dir>/auth``), updated
    with ``auth_overrides`` (e.g. ``{"argon2": FAST_ARGON2, "access_ttl_seconds": 5}``).
    LLM: ``llm_factory`` as given, else from ``llm_settings`` (e.g. an OpenAI-compatible
    ``openai_base_url`` of a test stub); default the offline ``local`` provider. Clocks:
    ``auth_clock`` (``time.time``-like, token times), ``llm_clock`` (budgets, cache,
    cooldowns), ``ws_clock`` (token-expiry protocol on connections).
    """
    settings = _resolve_settings(settings, data_dir, database_url, redis_url)
    metrics = PlatformMetrics(metrics_registry)
    async with AsyncExitStack() as stack:
        await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True)

        auth_conf = _auth_settings(settings, auth_settings, auth_overrides)
        auth = await LocalAuthService.create(auth_conf, clock=auth_clock or time.time)
        stack.push_async_callback(auth.close)

        plumbing = await _event_plumbing(
            stack,
            redis_url=settings.redis_url,
            max_connections_per_user=settings.max_connections_per_user,
            metrics=metrics,
        )
        sinks = RunEventSinks(plumbing.emitters)
        core = await _dispatch_core(
            stack,
            settings,
            event_sinks=sinks,
            llm_settings=llm_settings,
            llm_factory=llm_factory,
            llm_clock=llm_clock,
            agent_settings=agent_settings,
            extra_tools=extra_tools,
        )
        data, engine, limiter, llm = core.data, core.engine, core.rate_limiter, core.llm
        dispatchers, agent_factory, runner = core.dispatchers, core.agent_factory, core.runner

        ws_conf = ws_auth_settings or _ws_auth_settings(settings)
        ws_auth = ConnectionCredentials(
            WebSocketAuthenticator(
                CountingTokenAuthenticator(auth, metrics, "websocket"), settings=ws_conf
            ),
            max_token_bytes=ws_conf.max_token_bytes,
        )
        runs = LocalAgentRuns(
            runner,
            sinks,
            credentials=ws_auth,
            token_auth=CountingTokenAuthenticator(auth, metrics, "run"),
        )
        gateway = await _open_gateway(
            settings,
            gateway_settings,
            ws_auth=ws_auth,
            ws_conf=ws_conf,
            plumbing=plumbing,
            runs=runs,
            metrics=metrics,
            ws_clock=ws_clock,
            start=start_gateway,
        )
        metrics.registry.register(ServiceCollector(runner=runner, engine=engine))

        internals = PlatformInternals(
            auth=auth,
            data=data,
            engine=engine,
            rate_limiter=limiter,
            llm=llm,
            dispatchers=dispatchers,
            agent_factory=agent_factory,
            runner=runner,
            sinks=sinks,
            router=plumbing.router,
            replay=plumbing.replay,
            emitters=plumbing.emitters,
            ws_auth=ws_auth,
            runs=runs,
            gateway=gateway,
        )
        platform = Platform(
            settings=settings,
            auth=auth,
            token_auth=CountingTokenAuthenticator(auth, metrics, "grpc"),
            data=data,
            engine=engine,
            llm=llm,
            tools=dispatchers,
            agents=runner,
            router=plumbing.router,
            replay=plumbing.replay,
            emitters=plumbing.emitters,
            ws_auth=ws_auth,
            runs=runs,
            gateway=gateway,
            metrics=metrics,
            internals=internals,
            _stack=stack.pop_all(),
        )
    log.info(
        "platform_built",
        data_dir=str(settings.data_dir),
        redis=bool(settings.redis_url),
        ws_url=gateway.url if start_gateway else None,
    )
    return platform


@dataclass(eq=False, slots=True)
class DispatchServices:
    """What a dispatch process runs: data, the tool engine, LLM access, the dispatcher and
    agent factories and the agent runner (concrete objects; ``aclose`` ends them)."""

    data: SqlDataAccessFactory
    engine: LocalToolExecutionEngine
    rate_limiter: ToolRateLimiter
    llm: LLMManagerFactory
    dispatchers: ToolDispatcherFactory
    agent_factory: AgentInstanceFactory
    runner: AgentRunner
    _stack: AsyncExitStack | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        """Cancel runs still going, then close dispatchers, LLM, engine and data."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


async def build_data_factory(settings: ServerSettings) -> SqlDataAccessFactory:
    """The data factory of ``settings`` (SQLite under ``data_dir`` unless a database URL
    is set; Redis cache with ``redis_url``), its schema migrated first. Shut it down with
    ``await factory.shutdown()``."""
    await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    await upgrade_schema(
        settings.database_migration_url or url, app_role=settings.database_app_role
    )
    return SqlDataAccessFactory.from_config(
        DataAccessConfig(
            database_url=url,
            cache_url=settings.redis_url,
            max_scopes_per_user=settings.max_data_scopes_per_user,
        )
    )


async def _dispatch_core(
    stack: AsyncExitStack,
    settings: ServerSettings,
    *,
    event_sinks: EventSinkFactory,
    llm_settings: LLMSettings | None = None,
    llm_factory: LLMManagerFactory | None = None,
    llm_clock: LLMClock | None = None,
    agent_settings: AgentSettings | None = None,
    extra_tools: Iterable[Tool[Any]] = (),
) -> DispatchServices:
    data = await build_data_factory(settings)
    stack.push_async_callback(data.shutdown)

    registry = register_builtin_tools(ToolRegistry())
    registry.register_all(list(extra_tools))
    limiter = ToolRateLimiter(settings.redis_url or "memory://")
    stack.push_async_callback(limiter.aclose)
    engine = LocalToolExecutionEngine(registry=registry, data=data, rate_limiter=limiter)
    stack.push_async_callback(engine.aclose)

    llm = llm_factory or LLMManagerFactory.from_settings(llm_settings, clock=llm_clock)
    stack.push_async_callback(llm.aclose)
    dispatchers = ToolDispatcherFactory(engine)
    stack.push_async_callback(dispatchers.aclose)

    agent_factory = AgentInstanceFactory().configure(
        llm_factory=llm,
        tool_dispatcher_factory=dispatchers,
        data_factory=data,
        event_sink_factory=event_sinks,
        settings=agent_settings or _agent_settings(settings),
    )
    runner = AgentRunner(agent_factory)
    stack.push_async_callback(runner.aclose)
    return DispatchServices(
        data=data,
        engine=engine,
        rate_limiter=limiter,
        llm=llm,
        dispatchers=dispatchers,
        agent_factory=agent_factory,
        runner=runner,
    )


async def build_dispatch_services(
    settings: ServerSettings,
    *,
    llm_settings: LLMSettings | None = None,
    llm_factory: LLMManagerFactory | None = None,
    agent_settings: AgentSettings | None = None,
    extra_tools: Iterable[Tool[Any]] = (),
) -> DispatchServices:
    """The dispatch role's services (data migrated first). The runs' own sinks drop their
    events: clients follow a run through the AgentService stream (a gateway node
    re-emits it to its WebSocket clients)."""
    async with AsyncExitStack() as stack:
        services = await _dispatch_core(
            stack,
            settings,
            event_sinks=discarding_sinks,
            llm_settings=llm_settings,
            llm_factory=llm_factory,
            agent_settings=agent_settings,
            extra_tools=extra_tools,
        )
        services._stack = stack.pop_all()
    return services


def _resolve_settings(
    settings: ServerSettings | None,
    data_dir: Path | None,
    database_url: str | None,
    redis_url: str | None,
) -> ServerSettings:
    if settings is None:
        settings = ServerSettings(grpc_port=0, ws_port=0)
    updates: dict[str, Any] = {}
    if data_dir is not None:
        updates["data_dir"] = data_dir
    if database_url is not None:
        updates["database_url"] = database_url
    if redis_url is not None:
        updates["redis_url"] = redis_url
    return settings.model_copy(update=updates) if updates else settings


def _auth_settings(
    settings: ServerSettings,
    given: AuthSettings | None,
    overrides: Mapping[str, Any] | None,
) -> AuthSettings:
    values: dict[str, Any] = (
        dict(given) if given is not None else {"data_dir": settings.data_dir / "auth"}
    )
    if given is None and settings.auth_database_url:
        values["database_url"] = settings.auth_database_url
    values.update(overrides or {})
    return AuthSettings(**values)


def _agent_settings(settings: ServerSettings) -> AgentSettings:
    return AgentSettings(
        max_runs_per_user=settings.max_runs_per_user,
        max_runs_total=settings.max_runs_total,
        run_timeout_seconds=settings.run_timeout_seconds,
    )


# -- gRPC serving ------------------------------------------------------------------------------


@dataclass(eq=False)
class GrpcHost:
    """A started gRPC server: ``address`` (``host:port``), ``port`` and :meth:`stop`."""

    server: grpc.aio.Server
    host: str
    port: int
    health: Any
    services: tuple[str, ...]
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        return grpc_address(self.host, self.port)

    async def stop(self, grace: float | None = 2.0) -> None:
        """Health turns NOT_SERVING, then the server stops (in-flight calls get ``grace``)."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def serve_services(
    *,
    token_auth: TokenAuthenticator,
    host: str = "127.0.0.1",
    port: int = 0,
    auth: LocalAuthService | None = None,
    data: UserDataAccessProvider | None = None,
    engine: ToolExecutionEngine | None = None,
    llm: LLMManagerFactory | None = None,
    runner: AgentRunner | None = None,
) -> GrpcHost:
    """Start one gRPC server with the given services, health and reflection.

    Every method but auth's own public ones (register, login, refresh, token validation,
    JWKS ...), health and reflection needs ``authorization: Bearer <token>``, verified by
    ``token_auth``; the caller's context comes from ``x-ssot-context``.
    """
    interceptor = AuthServerInterceptor(
        token_auth, public_methods=PUBLIC_METHODS if auth is not None else ()
    )
    server = grpc.aio.server(interceptors=[interceptor], options=GRPC_SERVER_METADATA_OPTIONS)
    names: list[str] = []
    if auth is not None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
        names.append(AUTH_SERVICE_NAME)
    if data is not None:
        add_data_access_servicer(server, data)
        names.append(DATA_SERVICE_NAME)
    if engine is not None:
        add_tool_service(server, engine)
        names.append(TOOL_SERVICE_NAME)
    if llm is not None:
        add_llm_servicer(server, llm)
        names.append(LLM_SERVICE_NAME)
    if runner is not None:
        add_agent_service(server, runner)
        names.append(AGENT_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*names, _HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = grpc_address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}") from exc
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("grpc_listening", address=grpc_address(host, bound), services=names)
    return GrpcHost(
        server=server, host=host, port=bound, health=health_servicer, services=tuple(names)
    )


async def serve_grpc(platform: Platform, host: str = "127.0.0.1", port: int = 0) -> GrpcHost:
    """All of the platform's services on one gRPC server (port 0 = a free port)."""
    internals = platform.internals
    return await serve_services(
        token_auth=platform.token_auth,
        host=host,
        port=port,
        auth=internals.auth,
        data=internals.data,
        engine=internals.engine,
        llm=internals.llm,
        runner=internals.runner,
    )


# -- gRPC clients ------------------------------------------------------------------------------


@dataclass(eq=False)
class RemoteServices:
    """The platform's services over gRPC, acting with one user's token (or none).

    ``auth`` needs no token for register/login/refresh/validation. The others act for the
    token's user: ``data`` (a UserDataAccessProvider), ``engine`` (ToolExecutionEngine),
    ``llm`` (an LLMManager of the token's user; the request context is the current one
    when bound, else a new one) and ``agents`` (AgentService, streaming run events).
    """

    address: str
    channel: grpc.aio.Channel
    auth: GrpcAuthClient
    data: GrpcDataAccessClient
    engine: GrpcToolEngineClient
    llm: GrpcLLMClient
    agents: GrpcAgentClient
    access_token: str | None = field(default=None, repr=False)

    async def caller(self, ctx: UserExecutionContext | None = None) -> ToolCaller:
        """The verified caller of this connection's access token (``ctx`` or a new one)."""
        if self.access_token is None:
            raise AuthError("this connection was opened without an access token")
        return await _caller_from_token(self.auth, self.access_token, ctx)

    async def aclose(self) -> None:
        await self.channel.close()
        await self.auth.close()


async def connect_grpc(
    address: str,
    *,
    access_token: str | None = None,
    token_provider: TokenProvider | None = None,
    ready_timeout: float | None = 5.0,
) -> RemoteServices:
    """Clients of every service at ``address``, authenticated as ``access_token``'s user
    (or by ``token_provider``, e.g. one that refreshes). Waits for the channel to be ready
    unless ``ready_timeout`` is ``None``."""
    provider = token_provider
    if provider is None and access_token is not None:
        token = access_token

        async def fixed() -> str:
            return token

        provider = fixed
    channel = grpc.aio.insecure_channel(address, interceptors=auth_client_interceptors(provider))
    auth_client = GrpcAuthClient(address)
    services = RemoteServices(
        address=address,
        channel=channel,
        auth=auth_client,
        data=GrpcDataAccessClient(channel),
        engine=GrpcToolEngineClient(channel),
        llm=GrpcLLMClient(channel),
        agents=GrpcAgentClient(channel),
        access_token=access_token,
    )
    if ready_timeout is not None:
        try:
            async with asyncio.timeout(ready_timeout):
                await channel.channel_ready()
        except BaseException:
            await services.aclose()
            raise
    return services


# -- a gateway whose runs are remote ------------------------------------------------------------


@dataclass(eq=False)
class GatewayStack:
    """A WebSocket gateway node: its router, replay buffer, emitters, credentials and an
    :class:`AgentRuns` over a remote AgentService."""

    settings: ServerSettings
    gateway: WebSocketGateway
    router: WebSocketEventRouter
    replay: ReplayBuffer
    emitters: EmitterFactory
    ws_auth: ConnectionCredentials
    runs: GrpcAgentRuns
    metrics: PlatformMetrics
    _stack: AsyncExitStack = field(repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def ws_url(self) -> str:
        return self.gateway.url

    def leftovers(self) -> dict[str, int]:
        """What the node still holds: runs it follows, WebSocket connections and their
        credentials (all 0 when idle)."""
        return {
            "gateway_runs": self.runs.active(),
            "ws_connections": self.router.stats().connections,
            "ws_credentials": len(self.ws_auth),
        }

    async def aclose(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let runs finish up to the grace, close connections with 1001,
        stop following remote runs, close the plumbing and channels. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.gateway.shutdown(grace_seconds)
        finally:
            await self._stack.aclose()


async def build_gateway_stack(
    settings: ServerSettings,
    *,
    token_auth: TokenAuthenticator,
    dispatch_address: str,
    ws_auth_settings: WebSocketAuthSettings | None = None,
    gateway_settings: GatewaySettings | None = None,
    ws_clock: WebSocketClock | None = None,
    metrics_registry: CollectorRegistry | None = None,
    on_close: Iterable[Callable[[], Awaitable[None]]] = (),
    start_gateway: bool = True,
) -> GatewayStack:
    """A gateway node whose runs go to the AgentService at ``dispatch_address``.

    ``token_auth`` verifies handshake and run-start tokens (the remote auth service's
    :class:`GrpcAuthClient`, or an in-process service in tests). With
    ``settings.redis_url`` the router fans out over Redis and the replay buffer is shared,
    so several such nodes serve one user's connections together. ``on_close`` callbacks
    run last when the stack closes (e.g. closing ``token_auth``'s channel).
    """
    metrics = PlatformMetrics(metrics_registry)
    async with AsyncExitStack() as stack:
        for callback in on_close:
            stack.push_async_callback(callback)
        plumbing = await _event_plumbing(
            stack,
            redis_url=settings.redis_url,
            max_connections_per_user=settings.max_connections_per_user,
            metrics=metrics,
        )
        channel = grpc.aio.insecure_channel(dispatch_address)
        stack.push_async_callback(channel.close)
        ws_conf = ws_auth_settings or _ws_auth_settings(settings)
        ws_auth = ConnectionCredentials(
            WebSocketAuthenticator(
                CountingTokenAuthenticator(token_auth, metrics, "websocket"), settings=ws_conf
            ),
            max_token_bytes=ws_conf.max_token_bytes,
        )
        runs = GrpcAgentRuns(
            channel,
            plumbing.emitters,
            credentials=ws_auth,
            token_auth=CountingTokenAuthenticator(token_auth, metrics, "run"),
        )
        stack.push_async_callback(runs.aclose)
        gateway = await _open_gateway(
            settings,
            gateway_settings,
            ws_auth=ws_auth,
            ws_conf=ws_conf,
            plumbing=plumbing,
            runs=runs,
            metrics=metrics,
            ws_clock=ws_clock,
            start=start_gateway,
        )
        result = GatewayStack(
            settings=settings,
            gateway=gateway,
            router=plumbing.router,
            replay=plumbing.replay,
            emitters=plumbing.emitters,
            ws_auth=ws_auth,
            runs=runs,
            metrics=metrics,
            _stack=stack.pop_all(),
        )
    return result
