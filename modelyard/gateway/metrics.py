"""The gateway's Prometheus metrics. Names are a contract: the chart's dashboard queries them.
Every series carries the Model's ``namespace`` and ``model`` (the chart's ServiceMonitor keeps
them with honorLabels, as it does for the operator's)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

IN_FLIGHT = "modelyard_gateway_requests_in_flight"
REQUESTS = "modelyard_gateway_requests_total"
HELD = "modelyard_gateway_held_requests"
QUEUE_WAIT = "modelyard_gateway_queue_wait_seconds"
REJECTED = "modelyard_gateway_rejected_total"
COLD_STARTS = "modelyard_gateway_cold_starts_total"
COLD_START_SECONDS = "modelyard_gateway_cold_start_seconds"
DESIRED = "modelyard_gateway_replicas_desired"
READY = "modelyard_gateway_replicas_ready"

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
COLD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.in_flight = Gauge(IN_FLIGHT, "Requests being answered by a replica, per Model.", ["namespace", "model"], registry=r)
        self.requests = Counter(REQUESTS[:-6], "Requests finished, per Model and HTTP status.", ["namespace", "model", "code"], registry=r)
        self.held = Gauge(HELD, "Requests held while the Model has no ready replica.", ["namespace", "model"], registry=r)
        self.queue_wait = Histogram(QUEUE_WAIT, "Time a request waited for a ready replica (0 when one was ready).",
                                    ["namespace", "model"], buckets=WAIT_BUCKETS, registry=r)
        self.rejected = Counter(REJECTED[:-6], "Requests answered 503 without a replica (queue full or wait timed out).",
                                ["namespace", "model", "reason"], registry=r)
        self.cold_starts = Counter(COLD_STARTS[:-6], "Scale-ups from zero ready replicas.", ["namespace", "model"], registry=r)
        self.cold_start_seconds = Histogram(COLD_START_SECONDS, "From scaling up from zero to the first ready replica.",
                                            ["namespace", "model"], buckets=COLD_BUCKETS, registry=r)
        self.desired = Gauge(DESIRED, "Replicas the autoscaler asks for.", ["namespace", "model"], registry=r)
        self.ready = Gauge(READY, "Replicas ready to take requests.", ["namespace", "model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
