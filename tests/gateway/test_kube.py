"""The gateway's view of the cluster against the Kubernetes API emulator: Models, EndpointSlices and
Deployments listed once and then watched; routes only for Ready Models, replicas from ready
EndpointSlice endpoints, the count from the Deployment (written through deployments/scale), API
keys copied from a Secret into the shared key-file reader (rotation included)."""
from __future__ import annotations

import base64

import kubernetes
import pytest

from modelyard.gateway.kube import Cluster, KeyFiles, ScaleBackend, addresses, route_from_model
from modelyard.gateway.registry import Registry
from modelyard.gateway.watch import apply, read
from tests.gateway.test_cluster_scale import deployment, model


@pytest.fixture
def cluster(kubeconfig, namespace):
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    yield Cluster(client, namespace)
    client.close()


def endpoint_slice(ns: str, name: str, port: int, ready: dict[str, bool]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-{port}", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ok}} for ip, ok in ready.items()]}


@pytest.fixture
def stores(cluster):
    events = []
    informers = cluster.informers(lambda: events.append(1), resync_s=300)
    for informer in informers.values():
        informer.start()
    for informer in informers.values():
        assert informer.synced.wait(10)
    informers["events"] = events
    yield informers
    for name, informer in informers.items():
        if name != "events":
            informer.stop()


def test_routes_follow_ready_models_endpoints_and_scale(k8s, namespace, cluster, stores):
    events = stores.pop("events")
    k8s.create(model(namespace))
    k8s.create(deployment(namespace))
    k8s.create(endpoint_slice(namespace, "tiny", 8000, {"10.0.0.1": True, "10.0.0.2": False}))
    k8s.wait_for(lambda: len(events) >= 4, message="the three creations watched")
    registry = Registry()
    assert read(stores, cluster, KeyFiles()) == {}  # not Ready yet: not routed
    k8s.patch_status("Model", namespace, "tiny", {"phase": "Ready"})
    snapshot = k8s.wait_for(lambda: read(stores, cluster, KeyFiles()), message="the Ready Model routed")
    route, addrs, replicas = snapshot["tiny"]
    assert (addrs, replicas) == (["http://10.0.0.1:8000"], 0)
    assert route.autoscaled and route.policy.max_replicas == 2 and route.namespace == namespace
    changed = apply(registry, snapshot)
    assert [r.name for r in changed] == ["tiny"] and list(registry.routes["tiny"].replicas) == ["http://10.0.0.1:8000"]

    import asyncio
    asyncio.run(ScaleBackend(cluster).scale(registry.routes["tiny"], 2))
    assert k8s.get("Deployment", namespace, "tiny")["spec"]["replicas"] == 2
    k8s.wait_for(lambda: read(stores, cluster, KeyFiles())["tiny"][2] == 2, message="the scale watched")
    k8s.patch("EndpointSlice", namespace, "tiny-8000", {"endpoints": [
        {"addresses": [ip], "conditions": {"ready": True}} for ip in ("10.0.0.1", "10.0.0.2")]})
    k8s.wait_for(lambda: read(stores, cluster, KeyFiles())["tiny"][1] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
                 message="the second endpoint ready")

    k8s.patch_status("Model", namespace, "tiny", {"phase": "Failed"})
    k8s.wait_for(lambda: read(stores, cluster, KeyFiles()) == {}, message="the failed Model unrouted")
    apply(registry, read(stores, cluster, KeyFiles()))
    assert registry.routes == {}
    # every change came through the watches: nothing was listed again
    assert {name: i.lists for name, i in stores.items()} == {"models": 1, "slices": 1, "deployments": 1}


def test_a_watch_that_ends_is_followed_by_a_fresh_list(k8s, namespace, cluster):
    events = []
    informer = cluster.informers(lambda: events.append(1), resync_s=1)["models"].start()
    try:
        assert informer.synced.wait(10)
        k8s.create(model(namespace))
        k8s.wait_for(lambda: informer.lists >= 3, timeout=15, message="relists after each watch timeout")
        assert [o["metadata"]["name"] for o in informer.items()] == ["tiny"]
        k8s.delete("Model", namespace, "tiny")
        k8s.wait_for(lambda: informer.items() == [], message="the deletion watched")
    finally:
        informer.stop()


def test_api_keys_come_from_the_models_secret_and_rotate(k8s, namespace, cluster):
    def secret(keys: str):
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tiny-keys", "namespace": namespace},
                "data": {"keys": base64.b64encode(keys.encode()).decode()}}
    obj = {"metadata": {"name": "tiny", "namespace": namespace},
           "spec": {"serving": {"auth": {"secretRef": {"name": "tiny-keys", "key": "keys"}}}}}
    keys = KeyFiles()
    with pytest.raises(ValueError, match="not found"):
        keys.get(cluster, obj)  # no Secret: the watch leaves such a Model unrouted, never open
    k8s.create(secret("first-key\n"))
    key_file = keys.get(cluster, obj)
    assert key_file.check("first-key") and not key_file.check("second-key")
    assert oct(next(keys.dir.iterdir()).stat().st_mode & 0o777) == "0o600"
    k8s.patch("Secret", namespace, "tiny-keys", {"data": {"keys": base64.b64encode(b"second-key\n").decode()}})
    assert keys.get(cluster, obj) is key_file and key_file.check("second-key") and not key_file.check("first-key")
    assert keys.get(cluster, {"metadata": {"name": "open"}, "spec": {}}) is None


def test_addresses_and_routes_from_objects():
    assert addresses([{"ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}],
                       "endpoints": [{"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"], "conditions": {"ready": False}}]},
                      {"ports": [], "endpoints": [{"addresses": ["10.0.0.9"]}]}]) == ["http://10.0.0.3:8000"]
    ready = {"metadata": {"name": "m", "namespace": "ns"}, "status": {"phase": "Ready"},
             "spec": {"adapters": [{"name": "sql", "uri": "hf://a/b"}, {"name": "merged", "uri": "hf://a/c", "merge": True}]}}
    route = route_from_model(ready)
    assert (route.adapters, route.autoscaled, route.policy.max_replicas) == (("sql",), False, 1)
    assert route_from_model({**ready, "status": {"phase": "Deploying"}}) is None
