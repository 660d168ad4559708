"""Which replicas are ready and which adapters each has loaded: every replica's ``/v1/models``
asked in turn (both engines list the base model and the adapters loaded there). A replica takes
base-model traffic once it answers, and an adapter's traffic only once it lists that adapter —
so a replica added by scale-up never gets a request for an adapter it has not loaded yet."""
from __future__ import annotations

import asyncio

import httpx

from modelyard.gateway.registry import Registry, Route

PROBE_TIMEOUT_S = 3.0


async def probe(client: httpx.AsyncClient, route: Route, address: str) -> tuple[bool, frozenset[str]]:
    headers = {}
    if route.key_file is not None:
        headers["Authorization"] = f"Bearer {route.key_file.first()}"
    try:
        resp = await client.get(f"{address}/v1/models", headers=headers, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return False, frozenset()
    if resp.status_code != 200:
        return False, frozenset()
    try:
        ids = {m["id"] for m in resp.json().get("data", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return False, frozenset()
    return route.name in ids, frozenset(ids - {route.name})


async def probe_route(client: httpx.AsyncClient, route: Route) -> bool:
    """Refresh every replica of ``route``; True when something changed (held requests are woken)."""
    changed = False
    replicas = list(route.replicas.values())
    answers = await asyncio.gather(*(probe(client, route, r.address) for r in replicas))
    for replica, (ready, adapters) in zip(replicas, answers):
        if (ready, adapters) != (replica.ready, replica.adapters):
            replica.ready, replica.adapters = ready, adapters
            changed = True
    if changed:
        route.notify()
    return changed


class Prober:
    """Probes every route's replicas every ``interval_s`` (every ``fast_s`` while one is loading)."""

    def __init__(self, registry: Registry, client: httpx.AsyncClient | None = None,
                 interval_s: float = 5.0, fast_s: float = 0.25):
        self.registry, self.interval_s, self.fast_s = registry, interval_s, fast_s
        self.client = client or httpx.AsyncClient()
        self.kick = asyncio.Event()
        self.on_change = lambda route: None

    def _loading(self) -> bool:
        return any(route.held or any(not r.ready for r in route.replicas.values())
                   for route in self.registry.routes.values())

    async def once(self) -> None:
        for route in list(self.registry.routes.values()):
            if await probe_route(self.client, route):
                self.on_change(route)

    async def run(self) -> None:
        while True:
            await self.once()
            wait = self.fast_s if self._loading() else self.interval_s
            try:
                await asyncio.wait_for(self.kick.wait(), timeout=wait)
            except TimeoutError:
                pass
            self.kick.clear()
