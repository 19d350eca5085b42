"""Prometheus metrics of one process, exported on ``--metrics-port``.

Everything lives on the process's own :class:`~prometheus_client.CollectorRegistry` (never
the global default), so several platforms in one test process do not collide:

* the gateway's metrics (connections, WebSocket auth failures, events sent, closes),
  registered by :class:`~websocket.gateway.metrics.GatewayMetrics` on this registry;
* ``ssot_auth_failures`` - token verifications refused, by where (``grpc``,
  ``websocket``, ``run``) and error code (:class:`CountingTokenAuthenticator`);
* ``ssot_events_delivered`` - run events handed to live delivery, by type
  (:class:`CountingDelivery`);
* runs and tool calls, read from the runner's and the engine's own counters when scraped
  (:class:`ServiceCollector`): ``ssot_runs_started``, ``ssot_runs_active``,
  ``ssot_runs_finished{state}``, ``ssot_runs_refused{limit}``, ``ssot_tool_calls{status}``.

Label values come from closed sets, so cardinality stays bounded; nothing names a user.
"""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from auth.api import AuthContextKind, AuthResult, TokenAuthenticator
from dispatch.agents.service import AgentRunner
from dispatch.engine.engine import LocalToolExecutionEngine
from websocket.emitter.api import EventDelivery, EventEnvelope

__all__ = [
    "CountingDelivery",
    "CountingTokenAuthenticator",
    "PlatformMetrics",
    "ServiceCollector",
    "serve_metrics",
]


class PlatformMetrics:
    """The process's registry and the counters the composition root owns."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.auth_failures = Counter(
            "ssot_auth_failures",
            "Token verifications refused, by where and error code.",
            ["where", "error_code"],
            registry=self.registry,
        )
        self.events_delivered = Counter(
            "ssot_events_delivered",
            "Run events handed to live delivery (the router), by type.",
            ["type"],
            registry=self.registry,
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of a sample (for tests and diagnostics); 0 if absent."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


class CountingTokenAuthenticator:
    """A :class:`TokenAuthenticator` that counts the refusals of the one it wraps."""

    def __init__(self, inner: TokenAuthenticator, metrics: PlatformMetrics, where: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._where = where

    def _count(self, result: AuthResult) -> AuthResult:
        if not result.success:
            code = result.error_code.value if result.error_code is not None else "UNKNOWN"
            self._metrics.auth_failures.labels(where=self._where, error_code=code).inc()
        return result

    async def authenticate_token(
        self, token: str | None, context_kind: AuthContextKind = AuthContextKind.REST_API
    ) -> AuthResult:
        return self._count(await self._inner.authenticate_token(token, context_kind))

    async def authenticate_service(
        self, token: str | None, service_id: str | None = None
    ) -> AuthResult:
        return self._count(await self._inner.authenticate_service(token, service_id))


class CountingDelivery:
    """An :class:`EventDelivery` that counts what it hands to the one it wraps."""

    def __init__(self, inner: EventDelivery, metrics: PlatformMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        reached = await self._inner.deliver(user_id, envelope)
        self._metrics.events_delivered.labels(type=envelope.type.value).inc()
        return reached


class ServiceCollector(Collector):
    """Runs and tool calls, read from the services' own counters at scrape time."""

    def __init__(
        self,
        *,
        runner: AgentRunner | None = None,
        engine: LocalToolExecutionEngine | None = None,
    ) -> None:
        self._runner = runner
        self._engine = engine

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if self._runner is not None:
            stats = self._runner.stats()
            yield CounterMetricFamily("ssot_runs_started", "Agent runs started.", stats.started)
            yield GaugeMetricFamily(
                "ssot_runs_active", "Agent runs in progress.", stats.active_runs
            )
            finished = CounterMetricFamily(
                "ssot_runs_finished", "Agent runs ended, by state.", labels=["state"]
            )
            for state, count in sorted(stats.finished_by_state.items()):
                finished.add_metric([state], count)
            yield finished
            refused = CounterMetricFamily(
                "ssot_runs_refused", "Agent runs refused at a limit.", labels=["limit"]
            )
            refused.add_metric(["user"], stats.refused_user_limit)
            refused.add_metric(["global"], stats.refused_global_limit)
            yield refused
        if self._engine is not None:
            engine = self._engine.stats()
            calls = CounterMetricFamily(
                "ssot_tool_calls", "Tool calls executed, by status.", labels=["status"]
            )
            for status, count in sorted(engine.calls_by_status.items()):
                calls.add_metric([status], count)
            yield calls


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, int]:
    """Serve ``registry`` over HTTP on ``host:port`` (0 = a free port) in a daemon thread.

    Returns the server (``shutdown()`` stops it) and the bound port.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    del thread
    return server, int(server.server_port)
