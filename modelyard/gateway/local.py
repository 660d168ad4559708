"""Replicas as local processes, for `modelyard up` with several Models: a ``Backend`` that calls
``start(name) -> base URL`` (blocking until the server answers) and ``stop(name)``. The callbacks
come from the up command, so the gateway itself never imports the runtime."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modelyard.gateway.registry import Replica, Route

log = logging.getLogger("modelyard.gateway")


class LocalBackend:
    """At most one process per Model: ``scale(route, n >= 1)`` starts it, ``scale(route, 0)`` stops it."""

    def __init__(self, start: Callable[[str], str], stop: Callable[[str], None]):
        self.start, self.stop = start, stop
        self.running: dict[str, str] = {}
        self.starting: dict[str, asyncio.Task] = {}

    async def scale(self, route: Route, replicas: int) -> None:
        name = route.name
        if replicas > 0 and name not in self.running and name not in self.starting:
            self.starting[name] = asyncio.create_task(self._start(route))
        elif replicas == 0 and name in self.running:
            route.set_replicas([])
            url = self.running.pop(name)
            log.info("%s: stopping its server at %s (idle)", name, url)
            await asyncio.to_thread(self.stop, name)

    async def _start(self, route: Route) -> None:
        try:
            url = await asyncio.to_thread(self.start, route.name)
        except Exception as exc:  # the held requests time out with 503; the next request tries again
            log.warning("%s: the server did not start: %s", route.name, exc)
            route.desired = 0
            return
        finally:
            self.starting.pop(route.name, None)
        self.running[route.name] = url
        route.set_replicas([Replica(url)])
