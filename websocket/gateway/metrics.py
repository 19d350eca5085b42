"""Prometheus metrics of the gateway, on a registry the composition root passes in.

Not the global default registry: each gateway (and each test) owns its metrics, and the
server decides what to export on ``--metrics-port``. Label values come from closed sets
(error codes, message types, close reasons), so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    """The gateway's counters and gauges."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.connections = Counter(
            "ssot_ws_connections",
            "Authenticated WebSocket connections opened.",
            registry=self.registry,
        )
        self.active_connections = Gauge(
            "ssot_ws_active_connections",
            "Authenticated WebSocket connections open now.",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "ssot_ws_auth_failures",
            "WebSocket handshakes refused, by error code.",
            ["error_code"],
            registry=self.registry,
        )
        self.messages = Counter(
            "ssot_ws_messages",
            "Client messages received, by type ('invalid' when unparseable).",
            ["type"],
            registry=self.registry,
        )
        self.events_sent = Counter(
            "ssot_ws_events_sent",
            "Run events written to clients (live and replayed).",
            registry=self.registry,
        )
        self.server_closes = Counter(
            "ssot_ws_server_closes",
            "Connections closed by the server, by reason.",
            ["reason"],
            registry=self.registry,
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of a sample (for tests and diagnostics); 0 if absent."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found
