"""What the gateway can route to: Models (routes), their replicas, and requests held for them.

A ``Route`` is one Model: its declared adapters, its replicas (address → ready + loaded adapters),
the in-flight count per replica, the requests held while no replica can take them, and the
autoscaler's bookkeeping. Everything runs on the gateway's event loop; threads hand updates in
with ``loop.call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from modelyard.gateway import balance, errors
from modelyard.gateway.autoscale import Policy, ScaleState


@dataclass
class Replica:
    address: str                 # base URL, e.g. http://10.0.0.7:8000
    ready: bool = False
    adapters: frozenset[str] = frozenset()


@dataclass
class HoldLimits:
    max_held: int = 256          # requests held per Model before new ones get 503 at once
    max_wait_s: float = 600.0    # how long one request is held before 503 + Retry-After
    retry_after_s: int = 10


@dataclass
class Route:
    name: str
    namespace: str = "default"
    adapters: tuple[str, ...] = ()
    policy: Policy = field(default_factory=Policy)
    autoscaled: bool = False
    load_balancing: str = "LeastLoad"
    key_file: object | None = None      # an apikeys.KeyFile, or None for an open Model
    replicas: dict[str, Replica] = field(default_factory=dict)
    in_flight: Counter = field(default_factory=Counter)
    held: int = 0
    desired: int = 1                    # the Deployment's replicas, as last seen or set
    scale: ScaleState = field(default_factory=ScaleState)
    cold_start_at: float | None = None  # when a scale-up from zero ready replicas began
    turn: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- state --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [self.name, *self.adapters]

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.ready)

    def loading(self) -> int:
        return max(0, self.desired - self.ready_count())

    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())

    def candidates(self, adapter: str | None) -> list[str]:
        return [r.address for r in self.replicas.values()
                if r.ready and (adapter is None or adapter in r.adapters)]

    def notify(self) -> None:
        """Wake every held request to look again (replicas changed)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def set_replicas(self, replicas: list[Replica]) -> None:
        self.replicas = {r.address: r for r in replicas}
        self.notify()

    # -- picking a replica --------------------------------------------------------------------
    def pick(self, adapter: str | None, prompt: str) -> str | None:
        cands = self.candidates(adapter)
        if not cands:
            return None
        if self.load_balancing == "PrefixHash":
            key = balance.prefix_key(adapter or self.name, prompt)
            addr = balance.bounded_load_hash(cands, self.in_flight, key)
        else:
            self.turn += 1
            addr = balance.least_loaded(cands, self.in_flight, self.turn)
        self.in_flight[addr] += 1
        return addr

    def release(self, addr: str) -> None:
        self.in_flight[addr] -= 1
        if self.in_flight[addr] <= 0:
            del self.in_flight[addr]

    async def acquire(self, adapter: str | None, prompt: str, limits: HoldLimits, wake) -> tuple[str, float]:
        """A replica for this request and how long it waited; holds it while none is ready."""
        addr = self.pick(adapter, prompt)
        if addr:
            return addr, 0.0
        model = adapter or self.name
        if self.held >= limits.max_held:
            raise errors.unavailable(model, f"{self.held} requests are already waiting", limits.retry_after_s)
        start = time.monotonic()
        deadline = start + limits.max_wait_s
        self.held += 1
        try:
            wake()
            while True:
                changed = self.changed
                addr = self.pick(adapter, prompt)
                if addr:
                    return addr, time.monotonic() - start
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.unavailable(model, f"none became ready within {limits.max_wait_s:g}s",
                                             limits.retry_after_s)
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(left, 1.0))
                except TimeoutError:
                    pass
        finally:
            self.held -= 1


SPEC_FIELDS = ("namespace", "adapters", "policy", "autoscaled", "load_balancing", "key_file")


class Registry:
    """Routes by Model name, and which Model serves each adapter name."""

    def __init__(self):
        self.routes: dict[str, Route] = {}

    def put(self, route: Route) -> Route:
        """Add a route, or update the spec of the live one in place (held requests keep it)."""
        live = self.routes.get(route.name)
        if live is None:
            self.routes[route.name] = route
            return route
        for attr in SPEC_FIELDS:
            setattr(live, attr, getattr(route, attr))
        return live

    def remove(self, name: str) -> None:
        route = self.routes.pop(name, None)
        if route:
            route.notify()

    def names(self) -> list[str]:
        out: list[str] = []
        for route in sorted(self.routes.values(), key=lambda r: r.name):
            out += [n for n in route.names() if n not in out]
        return out

    def resolve(self, name) -> tuple[Route, str | None]:
        """The route for a request's ``model`` and the adapter it names (None: the base model)."""
        if isinstance(name, str):
            if name in self.routes:
                return self.routes[name], None
            for route in sorted(self.routes.values(), key=lambda r: r.name):
                if name in route.adapters:
                    return route, name
        raise errors.model_not_found(name, self.names())
