"""Prometheus metrics, one registry per app so tests can run several apps side by side."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """The counters and gauges the service exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.graphql_requests = Counter(
            "tradegraph_graphql_operations_total",
            "GraphQL operations by operation name and type.",
            ["operation", "type"],
            registry=self.registry,
        )
        self.graphql_latency = Histogram(
            "tradegraph_graphql_operation_seconds",
            "GraphQL operation latency by operation name.",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.graphql_errors = Counter(
            "tradegraph_graphql_errors_total",
            "GraphQL errors by operation name and code.",
            ["operation", "code"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "tradegraph_http_requests_total",
            "HTTP requests by route and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.ws_connections = Gauge(
            "tradegraph_websocket_connections",
            "Open websocket connections.",
            registry=self.registry,
        )
        self.active_subscriptions = Gauge(
            "tradegraph_active_subscriptions",
            "GraphQL subscriptions currently streaming.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "tradegraph_rate_limited_total",
            "Requests refused by a rate limit.",
            ["scope"],
            registry=self.registry,
        )

        self.engine_batch_size = Histogram(
            "tradegraph_engine_batch_commands",
            "Commands per sequencer batch (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.engine_commit_seconds = Histogram(
            "tradegraph_engine_commit_seconds",
            "Time to apply and commit one sequencer batch.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=self.registry,
        )
        self.engine_failures = Counter(
            "tradegraph_engine_failed_batches_total",
            "Sequencer batches answered ENGINE_UNAVAILABLE: a failed commit, or a batch "
            "applied on top of one (each failure triggers a rebuild).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
