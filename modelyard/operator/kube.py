"""The one place that talks to the Kubernetes API: plain JSON dicts over the official client.

"Already exists" on create and "not found" on delete are success: reconcile is level-based and
may repeat any step.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from modelyard.api import GROUP, PLURAL, VERSION
from modelyard.uri import scrub

log = logging.getLogger(__name__)

PATHS = {
    "Model": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings"),
    "LeaderWorkerSet": ("/apis/leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
}


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None):
        if api_client is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            api_client = kubernetes.client.ApiClient()
        self.api = api_client

    def _path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    def _call(self, method: str, path: str, body: Any = None, query: dict | None = None,
              content_type: str = "application/json", raw: bool = False):
        _, url, headers, body, _ = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
        if not 200 <= resp.status < 300:
            raise ApiException(http_resp=resp)
        resp.read()
        data = resp.data.decode() if isinstance(resp.data, bytes) else resp.data
        return data if raw else (json.loads(data) if data else None)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_cluster_peering(self, name: str) -> dict | None:
        try:
            return self._call("GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    def serves(self, kind: str) -> bool:
        """Whether the API server serves ``kind`` (e.g. a CRD that may not be installed)."""
        prefix, plural = PATHS[kind]
        try:
            found = self._call("GET", prefix)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])

    def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        return self._call("GET", self._path(kind, namespace), query=query).get("items") or []

    def create(self, obj: dict) -> dict | None:
        ns = obj["metadata"]["namespace"]
        try:
            return self._call("POST", self._path(obj["kind"], ns), body=obj)
        except ApiException as exc:
            if exc.status == 409:
                return None  # already exists: the next pass compares it
            raise

    def replace(self, obj: dict) -> dict | None:
        """PUT the desired object over the current one (optimistic: 409 means retry next pass)."""
        m = obj["metadata"]
        current = self.get(obj["kind"], m["namespace"], m["name"])
        if current is None:
            return self.create(obj)
        if _controller_uid(current) != _controller_uid(obj):  # replaced by someone else since our last look
            log.warning("not replacing %s %s/%s: its controller is no longer this Model", obj["kind"], m["namespace"], m["name"])
            return current
        body = json.loads(json.dumps(obj))
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._call("PUT", self._path(obj["kind"], m["namespace"], m["name"]), body=body)

    def patch(self, kind: str, namespace: str, name: str, patch: dict, sub: str | None = None) -> dict | None:
        try:
            return self._call("PATCH", self._path(kind, namespace, name, sub), body=patch,
                              content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete (in the background); with ``uid``, only that very object (a precondition: a
        same-named object created since by someone else is left alone)."""
        body = {"propagationPolicy": "Background", **({"preconditions": {"uid": uid}} if uid else {})}
        try:
            self._call("DELETE", self._path(kind, namespace, name), body=body)
        except ApiException as exc:
            if exc.status == 409 and uid:
                log.warning("not deleting %s %s/%s: it is no longer the object we meant (uid %s)", kind, namespace, name, uid)
            elif exc.status != 404:
                raise

    def pod_log(self, namespace: str, pod: str, container: str, tail: int = 20) -> str | None:
        try:
            return self._call("GET", self._path("Pod", namespace, pod, "log"),
                              query={"container": container, "tailLines": tail}, raw=True)
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone
                return None
            raise

    def event(self, involved: dict, type_: str, reason: str, message: str, timestamp: str) -> None:
        m = involved["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{m['name']}.", "namespace": m["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": m["name"],
                               "namespace": m["namespace"], "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion")},
            "type": type_,
            "reason": reason,
            "message": scrub(message)[:1024],
            "source": {"component": "modelyard-operator"},
            "reportingComponent": "modelyard.io/operator",
            "reportingInstance": "modelyard-operator",
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{m['namespace']}/events", body=body)
        except ApiException as exc:  # an Event is best effort; never fail a reconcile for it
            log.warning("could not post Event %s for %s/%s: %s", reason, m["namespace"], m["name"], exc.status)


def _controller_uid(obj: dict) -> str | None:
    refs = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")]
    return refs[0].get("uid") if refs else None
