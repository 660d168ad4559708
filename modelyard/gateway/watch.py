"""Keeps the registry in step with the cluster: routes from Ready Models, replicas from their
EndpointSlices, the current replica count from ``deployments/scale``."""
from __future__ import annotations

import asyncio
import logging

from modelyard.apikeys import KeyFileError
from modelyard.gateway.kube import Cluster, KeyFiles, addresses, route_from_model
from modelyard.gateway.registry import Registry, Replica

log = logging.getLogger("modelyard.gateway")


def read(cluster: Cluster, keys: KeyFiles) -> dict:
    """One snapshot: {name: (route, replica addresses, deployment replicas)} (blocking)."""
    out = {}
    for obj in cluster.models():
        route = route_from_model(obj)
        if route is None:
            continue
        if route.name in out:
            log.warning("Model %s exists in several namespaces; routing to %s", route.name, out[route.name][0].namespace)
            continue
        try:
            route.key_file = keys.get(cluster, obj)
        except KeyFileError as exc:  # never route to a Model whose keys cannot be read: it would be open
            log.warning("%s/%s: not routed: API keys: %s", route.namespace, route.name, exc)
            continue
        out[route.name] = (route, addresses(cluster.slices(route.namespace, route.name)),
                           cluster.replicas(route.namespace, route.name))
    return out


def apply(registry: Registry, snapshot: dict) -> list:
    """Put the snapshot into the registry; returns the routes whose replica set changed."""
    changed = []
    for name in set(registry.routes) - set(snapshot):
        registry.remove(name)
    for name, (route, addrs, replicas) in snapshot.items():
        live = registry.put(route)
        if replicas is not None:
            live.desired = replicas
        if set(addrs) != set(live.replicas):
            live.set_replicas([live.replicas.get(a) or Replica(a) for a in addrs])
            changed.append(live)
    return changed


async def run(registry: Registry, cluster: Cluster, on_change, interval_s: float = 1.0) -> None:
    keys = KeyFiles()
    while True:
        try:
            snapshot = await asyncio.to_thread(read, cluster, keys)
            for route in apply(registry, snapshot):
                on_change(route)
        except Exception as exc:  # the API server is away: keep routing to what we know
            log.warning("reading the cluster failed: %s", exc)
        await asyncio.sleep(interval_s)
