"""Keeps the registry in step with the cluster: routes from Ready Models, replicas from their
EndpointSlices' ready endpoints, the current replica count from their Deployments — all from
watched stores (``informer``), so a change reaches the registry as soon as the API server reports
it, and an idle cluster costs no requests. API keys are read from the Models' Secrets at each
snapshot: on every change, and every ``resync_s`` (a rotated key is honoured within that)."""
from __future__ import annotations

import asyncio
import logging

from modelyard.apikeys import KeyFileError
from modelyard.gateway.kube import SERVICE_LABEL, Cluster, KeyFiles, addresses, route_from_model
from modelyard.gateway.registry import Registry, Replica

log = logging.getLogger("modelyard.gateway")
COALESCE_S = 0.05  # a burst of events (a rollout) becomes one snapshot


def read(stores: dict, cluster: Cluster, keys: KeyFiles) -> dict:
    """One snapshot from the stores: {name: (route, replica addresses, deployment replicas)}."""
    slices: dict[tuple[str, str], list[dict]] = {}
    for s in stores["slices"].items():
        ns = s["metadata"].get("namespace") or ""
        slices.setdefault((ns, (s["metadata"].get("labels") or {}).get(SERVICE_LABEL)), []).append(s)
    deployments = {(d["metadata"].get("namespace") or "", d["metadata"]["name"]): d for d in stores["deployments"].items()}
    out = {}
    for obj in sorted(stores["models"].items(), key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"])):
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
        deployment = deployments.get((route.namespace, route.name))
        replicas = ((deployment.get("spec") or {}).get("replicas", 1)) if deployment else None
        out[route.name] = (route, addresses(slices.get((route.namespace, route.name), [])), replicas)
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


async def run(registry: Registry, cluster: Cluster, on_change, resync_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    stores = cluster.informers(lambda: loop.call_soon_threadsafe(woken.set), resync_s)
    for informer in stores.values():
        informer.start()
    keys = KeyFiles()
    try:
        while not all(i.synced.is_set() for i in stores.values()):  # the first lists
            await asyncio.sleep(COALESCE_S)
        while True:
            woken.clear()
            try:
                snapshot = await asyncio.to_thread(read, stores, cluster, keys)
                for route in apply(registry, snapshot):
                    on_change(route)
            except Exception as exc:  # a Secret unreadable, ...: keep routing to what we know
                log.warning("updating routes from the cluster failed: %s", exc)
            try:
                await asyncio.wait_for(woken.wait(), timeout=resync_s)
            except TimeoutError:
                pass
            await asyncio.sleep(COALESCE_S)
    finally:
        for informer in stores.values():
            informer.stop()
