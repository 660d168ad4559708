"""Server-side `Table` output (what `kubectl get` asks for), with a CRD's printer columns."""
from __future__ import annotations

import datetime
import re
from typing import Any

from tests.k8s.registry import ResourceType


def wants_table(headers) -> bool:
    return "as=Table" in (headers.get("Accept") or headers.get("accept") or "")


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    secs = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    secs = max(secs, 0)
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h" if secs < 172800 else f"{secs // 86400}d"


def json_path(obj: Any, path: str) -> Any:
    """The simple JSONPath subset printer columns use: `.a.b`, `.a[0].b`, `.a[?(@.k=="v")].b`."""
    cur = obj
    for token in re.findall(r'\[\?\(@\.\w+=="[^"]*"\)\]|\[\d+\]|[^.\[\]]+', path):
        if token.startswith("[?"):
            key, val = re.match(r'\[\?\(@\.(\w+)=="([^"]*)"\)\]', token).groups()
            cur = next((i for i in cur or [] if isinstance(i, dict) and i.get(key) == val), None)
        elif token.startswith("["):
            idx = int(token[1:-1])
            cur = cur[idx] if isinstance(cur, list) and idx < len(cur) else None
        else:
            cur = cur.get(token) if isinstance(cur, dict) else None
        if cur is None:
            return None
    return cur


BUILTIN_COLUMNS = {  # a few of kubectl's familiar columns for built-in kinds
    "Namespace": [("Status", ".status.phase")],
    "Pod": [("Status", ".status.phase")],
    "PersistentVolumeClaim": [("Status", ".status.phase")],
    "Service": [("Type", ".spec.type"), ("Cluster-IP", ".spec.clusterIP")],
    "Job": [("Succeeded", ".status.succeeded"), ("Failed", ".status.failed")],
    "Deployment": [("Ready", ".status.readyReplicas"), ("Replicas", ".spec.replicas")],
}


def _columns(rt: ResourceType) -> list[dict]:
    if rt.crd is None:
        return [{"name": n, "type": "string", "jsonPath": p} for n, p in BUILTIN_COLUMNS.get(rt.kind, [])]
    for ver in (rt.crd.get("spec") or {}).get("versions") or []:
        if ver.get("name") == rt.version:
            return list(ver.get("additionalPrinterColumns") or [])
    return []


def table(rt: ResourceType, items: list[dict], rv: str) -> dict:
    cols = _columns(rt)
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    defs += [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
              "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in cols]
    if not any(c["jsonPath"] == ".metadata.creationTimestamp" for c in cols):
        defs.append({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0})
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for c in cols:
            value = json_path(obj, c["jsonPath"])
            if c.get("type") == "date":
                value = age(value)
            cells.append("<none>" if value is None else value)
        if len(defs) > len(cells):
            cells.append(age(obj["metadata"].get("creationTimestamp")))
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                                                "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": defs, "rows": rows}
