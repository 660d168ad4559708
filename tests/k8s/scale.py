"""The `scale` subresource of Deployments (autoscaling/v1 Scale), as a real API server serves it:
GET answers a Scale built from the Deployment; PATCH/PUT change only spec.replicas (and bump the
Deployment's generation like any spec change)."""
from __future__ import annotations

import copy
import json

from tests.k8s import errors, patching

SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}


def scale_of(obj: dict) -> dict:
    meta = obj["metadata"]
    labels = ((obj["spec"].get("selector") or {}).get("matchLabels")) or {}
    return {
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta},
        "spec": {"replicas": obj["spec"].get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
    }


def get(store, rt, ns: str, name: str) -> dict:
    return scale_of(store.get(rt, ns, name))


def write(store, rt, ns: str, name: str, text: str, ctype: str | None) -> dict:
    """PATCH (``ctype`` set) or PUT (``ctype`` None) of the Scale; returns the new Scale."""
    current = store.get(rt, ns, name)
    scale = scale_of(current)
    try:
        body = json.loads(text or "null")
    except ValueError as exc:
        raise errors.bad_request(f"error decoding patch: {exc}")
    new = patching.apply_patch(scale, body, ctype, custom=False) if ctype is not None else body
    replicas = ((new or {}).get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: '
                              f"Invalid value: {replicas!r}: must be greater than or equal to 0")
    rv = ((new.get("metadata") or {}).get("resourceVersion"))
    if rv not in (None, "", current["metadata"]["resourceVersion"]):
        raise errors.conflict(rt, name)
    updated = copy.deepcopy(current)
    updated["spec"]["replicas"] = replicas
    return scale_of(store.update(rt, ns, name, updated, None, False))
