"""The gateway's own small view of the cluster (it never imports the operator): Models, their
EndpointSlices and their Deployments, each listed once and then watched (``informer.Informer``,
re-listed every ``resync_s``); ``ScaleBackend``, which writes ``deployments/scale``; and the Models'
API keys, read from their Secrets.

Routes come and go with the Models' phase: a Model is routable when ``status.phase`` is Ready (a
Model scaled to zero by the gateway stays Ready, with reason ScaledToZero).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from pathlib import Path

from modelyard.api import GROUP, PLURAL, VERSION
from modelyard.api.types import Scaling
from modelyard.apikeys import KeyFile, KeyFileError
from modelyard.gateway.autoscale import Policy
from modelyard.gateway.registry import Replica, Route

log = logging.getLogger("modelyard.gateway")
SERVICE_LABEL = "kubernetes.io/service-name"
SERVER_SELECTOR = "app.kubernetes.io/component=server"  # the operator's serving Deployments


def route_from_model(obj: dict) -> Route | None:
    """The route for a Model object, or None when it is not routable (not Ready, or invalid)."""
    if ((obj.get("status") or {}).get("phase")) != "Ready":
        return None
    meta, spec = obj["metadata"], obj.get("spec") or {}
    try:
        scaling = Scaling.model_validate(spec["scaling"]) if spec.get("scaling") else None
    except ValueError as exc:
        log.warning("%s/%s: spec.scaling ignored: %s", meta.get("namespace"), meta["name"], exc)
        scaling = None
    adapters = tuple(a["name"] for a in spec.get("adapters") or [] if isinstance(a, dict) and not a.get("merge"))
    return Route(name=meta["name"], namespace=meta.get("namespace") or "default", adapters=adapters,
                 policy=Policy.from_spec(scaling), autoscaled=scaling is not None,
                 load_balancing=scaling.load_balancing if scaling else "LeastLoad")


def addresses(slices: list[dict]) -> list[str]:
    """http://ip:port of every ready endpoint in a Service's EndpointSlices."""
    out = []
    for s in slices:
        ports = [p for p in s.get("ports") or [] if p.get("port")]
        port = next((p["port"] for p in ports if p.get("name") == "http"), ports[0]["port"] if ports else None)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            out += [f"http://{a}:{port}" for a in ep.get("addresses") or []]
    return sorted(set(out))


class Cluster:
    """Blocking reads and writes through the kubernetes client (run in a thread)."""

    def __init__(self, api_client, namespace: str | None):
        import kubernetes

        self.ns = namespace
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.disc = kubernetes.client.DiscoveryV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.api = api_client

    def informers(self, on_change, resync_s: float = 60.0) -> dict:
        """Unstarted informers for Models, EndpointSlices and serving Deployments (``Informer.start``)."""
        from modelyard.gateway.informer import Informer

        if self.ns:
            models = (self.custom.list_namespaced_custom_object, {"group": GROUP, "version": VERSION,
                                                                   "namespace": self.ns, "plural": PLURAL})
            slices = (self.disc.list_namespaced_endpoint_slice, {"namespace": self.ns})
            deployments = (self.apps.list_namespaced_deployment, {"namespace": self.ns})
        else:
            models = (self.custom.list_cluster_custom_object, {"group": GROUP, "version": VERSION, "plural": PLURAL})
            slices = (self.disc.list_endpoint_slice_for_all_namespaces, {})
            deployments = (self.apps.list_deployment_for_all_namespaces, {})
        return {
            "models": Informer("models", models[0], on_change, resync_s, **models[1]),
            "slices": Informer("endpointslices", slices[0], on_change, resync_s, label_selector=SERVICE_LABEL, **slices[1]),
            "deployments": Informer("deployments", deployments[0], on_change, resync_s,
                                    label_selector=SERVER_SELECTOR, **deployments[1]),
        }

    def scale(self, ns: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": replicas}})

    def secret_value(self, ns: str, name: str, key: str) -> bytes | None:
        import kubernetes

        try:
            data = self.core.read_namespaced_secret(name, ns).data or {}
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return base64.b64decode(data[key]) if key in data else None


class ScaleBackend:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    async def scale(self, route: Route, replicas: int) -> None:
        await asyncio.to_thread(self.cluster.scale, route.namespace, route.name, replicas)


class KeyFiles:
    """API keys of Models with ``spec.serving.auth.secretRef``, copied from their Secret into
    private files the shared ``apikeys.KeyFile`` reads (so rotation works the same everywhere)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="modelyard-gateway-keys-"))
        os.chmod(self.dir, 0o700)
        self.files: dict[tuple[str, str], KeyFile] = {}

    def get(self, cluster: Cluster, obj: dict) -> KeyFile | None:
        ref = (((obj.get("spec") or {}).get("serving") or {}).get("auth") or {}).get("secretRef")
        if not ref:
            return None
        ns, name = obj["metadata"].get("namespace") or "default", obj["metadata"]["name"]
        value = cluster.secret_value(ns, ref["name"], ref.get("key", "api-keys"))
        if value is None:
            raise KeyFileError(f"Secret {ref['name']} (key {ref.get('key', 'api-keys')}) not found")
        path = self.dir / f"{ns}.{name}"
        if not path.exists() or path.read_bytes() != value:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(value)
            os.chmod(tmp, 0o600)
            tmp.replace(path)
        if (ns, name) not in self.files:
            self.files[(ns, name)] = KeyFile(path)
        return self.files[(ns, name)]


def connect(registry, namespace: str | None, resync_s: float = 60.0):
    """(backend, watch factory) for ``serve.run`` from the in-cluster config (or $KUBECONFIG)."""
    import kubernetes

    from modelyard.gateway import watch

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    cluster = Cluster(kubernetes.client.ApiClient(), namespace)
    return ScaleBackend(cluster), lambda on_change: watch.run(registry, cluster, on_change, resync_s)
