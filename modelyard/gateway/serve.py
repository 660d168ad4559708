"""Running a gateway: the HTTP app under uvicorn plus its background loops (prober, autoscaler,
a Kubernetes watch), all on one event loop, stopped together."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from modelyard.gateway.prober import Prober
from modelyard.gateway.router import Gateway, create_app
from modelyard.gateway.scaler import Autoscaler, Backend

log = logging.getLogger("modelyard.gateway")


class NoBackend:
    """Fixed replicas: nothing to scale (requests are still held until a replica is ready)."""

    async def scale(self, route, replicas: int) -> None:
        raise RuntimeError("this gateway has no way to start replicas")


def use_uvloop() -> bool:
    """uvloop for the process's event loops when installed (the gateway extra installs it): it
    halves the CPU the gateway spends per relayed chunk (docs/benchmarks.md, gateway)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def run(gw: Gateway, host: str, port: int, backend: Backend | None = None, extra=(),
              probe_interval_s: float = 5.0, tick_s: float = 1.0, started=None) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM, which uvicorn handles).

    ``extra``: callables ``f(on_change) -> coroutine`` run beside the server (a cluster watch);
    they call ``on_change(route)`` when a route's replicas change.
    """
    prober = Prober(gw.registry, interval_s=probe_interval_s)
    scaler = Autoscaler(gw.registry, backend or NoBackend(), gw.metrics, tick_s=tick_s)

    def wake():
        scaler.wake()
        prober.kick.set()

    def on_change(route):
        prober.kick.set()
        scaler.observe_ready(route)

    gw.wake = wake
    prober.on_change = scaler.observe_ready
    config = uvicorn.Config(create_app(gw), host=host, port=port, log_level="warning", access_log=False,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    tasks = [asyncio.create_task(prober.run()), asyncio.create_task(scaler.run())]
    tasks += [asyncio.create_task(f(on_change)) for f in extra]
    try:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if started:
            started()
        await serving
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await prober.client.aclose()
        if gw.client is not None:
            await gw.client.close()
