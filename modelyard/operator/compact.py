"""What the operator's cache keeps of an object: the fields reconcile reads, in shared strings.

The cache holds every Model and its children for as long as the operator runs, so its size per
object is most of the operator's memory per Model (docs/benchmarks.md, the operator section).
Each watch event and write response is a fresh ``json.loads`` result with its own copy of every
key ("metadata", "app.kubernetes.io/instance", ...) and of the values all objects repeat
("modelyard", "True", a timestamp); ``compact`` rebuilds it with those strings shared (interned),
and leaves out what reconcile never reads:

- ``metadata.managedFields`` (server-side apply bookkeeping; often the largest part of an object);
- the ``kubectl.kubernetes.io/last-applied-configuration`` annotation (a second copy of the spec);
- a Job's pod template (its spec-hash annotation says whether it is the desired one).

The copy is new all the way down, so the watch event's body is not kept alive through it.
"""
from __future__ import annotations

import sys

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SHARED_MAX = 64  # longer strings (messages, logs, certificates) are rarely repeated


def _value(value):
    if isinstance(value, str):
        return sys.intern(value) if len(value) <= _SHARED_MAX else value
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_value(v) for v in value]
    return value


def _metadata(meta: dict) -> dict:
    meta = {k: v for k, v in meta.items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return meta


def compact(kind: str, obj: dict) -> dict:
    """A copy of ``obj`` without the fields above, its repeated strings shared."""
    out = dict(obj)
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = _metadata(out["metadata"])
    if kind == "Job" and isinstance(out.get("spec"), dict) and "template" in out["spec"]:
        out["spec"] = {k: v for k, v in out["spec"].items() if k != "template"}
    return _value(out)
