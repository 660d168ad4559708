"""The gateway's view of the cluster against the Kubernetes API emulator: routes only for Ready
Models, replicas from ready EndpointSlice endpoints, the count from deployments/scale, API keys
copied from a Secret into the shared key-file reader (rotation included)."""
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


def test_routes_follow_ready_models_endpoints_and_scale(k8s, namespace, cluster):
    k8s.create(model(namespace))
    k8s.create(deployment(namespace))
    k8s.create(endpoint_slice(namespace, "tiny", 8000, {"10.0.0.1": True, "10.0.0.2": False}))
    registry = Registry()
    assert read(cluster, KeyFiles()) == {}  # not Ready yet: not routed
    k8s.patch_status("Model", namespace, "tiny", {"phase": "Ready"})
    snapshot = read(cluster, KeyFiles())
    route, addrs, replicas = snapshot["tiny"]
    assert (addrs, replicas) == (["http://10.0.0.1:8000"], 0)
    assert route.autoscaled and route.policy.max_replicas == 2 and route.namespace == namespace
    changed = apply(registry, snapshot)
    assert [r.name for r in changed] == ["tiny"] and list(registry.routes["tiny"].replicas) == ["http://10.0.0.1:8000"]

    import asyncio
    asyncio.run(ScaleBackend(cluster).scale(registry.routes["tiny"], 2))
    assert k8s.get("Deployment", namespace, "tiny")["spec"]["replicas"] == 2
    assert read(cluster, KeyFiles())["tiny"][2] == 2

    k8s.patch_status("Model", namespace, "tiny", {"phase": "Failed"})
    apply(registry, read(cluster, KeyFiles()))
    assert registry.routes == {}


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
