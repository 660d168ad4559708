"""The autoscaler loop (the I/O around ``autoscale.decide``): every tick, and at once when a
request is held, it asks each autoscaled Model's ``Backend`` for the replicas ``decide`` wants.

A ``Backend`` is where replicas come from: the Kubernetes ``deployments/scale`` subresource in a
cluster (``kube.ScaleBackend``), start/stop callbacks in local mode (``LocalBackend``). Cold starts
are timed here: from asking for replicas while none is ready to the first ready one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from modelyard.gateway.autoscale import decide
from modelyard.gateway.metrics import GatewayMetrics
from modelyard.gateway.registry import Registry, Route

log = logging.getLogger("modelyard.gateway")


class Backend(Protocol):
    async def scale(self, route: Route, replicas: int) -> None:
        """Ask for ``replicas`` replicas of ``route``'s Model (returns once asked, not once ready)."""


class Autoscaler:
    def __init__(self, registry: Registry, backend: Backend, metrics: GatewayMetrics, tick_s: float = 1.0):
        self.registry, self.backend, self.metrics, self.tick_s = registry, backend, metrics, tick_s
        self.kick = asyncio.Event()

    def wake(self) -> None:
        self.kick.set()

    def observe_ready(self, route: Route) -> None:
        """Called when a route's replicas change: closes a cold start once one replica is ready."""
        if route.cold_start_at is not None and route.ready_count() > 0:
            seconds = time.monotonic() - route.cold_start_at
            route.cold_start_at = None
            self.metrics.cold_starts.labels(route.namespace, route.name).inc()
            self.metrics.cold_start_seconds.labels(route.namespace, route.name).observe(seconds)
            log.info("%s: cold start took %.1fs", route.name, seconds)

    async def step(self, route: Route, now: float) -> None:
        want = decide(route.policy, route.scale, now, route.total_in_flight(), route.held,
                      current=route.desired, loading=route.loading())
        self.metrics.desired.labels(route.namespace, route.name).set(want)
        self.metrics.ready.labels(route.namespace, route.name).set(route.ready_count())
        if want == route.desired:
            return
        if route.ready_count() == 0 and want > 0 and route.cold_start_at is None:
            route.cold_start_at = time.monotonic()
        log.info("%s: scaling %d -> %d (in flight %d, held %d, loading %d)", route.name, route.desired, want,
                 route.total_in_flight(), route.held, route.loading())
        try:
            await self.backend.scale(route, want)
        except Exception as exc:  # the API refused or the local start failed: retry next tick
            log.warning("%s: scaling to %d failed: %s", route.name, want, exc)
            return
        route.desired = want

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            for route in list(self.registry.routes.values()):
                if route.autoscaled:
                    await self.step(route, now)
            try:
                await asyncio.wait_for(self.kick.wait(), timeout=self.tick_s)
            except TimeoutError:
                pass
            self.kick.clear()
