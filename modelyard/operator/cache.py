"""An informer-style cache of the Model and its children, fed by kopf's watch events.

Reconcile reads from here instead of GETting every child on every pass (controller-runtime does
the same). A write's response goes into the cache at once, so the next pass sees it even before
its watch event arrives; an event that is older than what we hold (lower resourceVersion) is
ignored. Staleness is safe: reconcile is level-based and "already exists" / "already gone" are
success.

What is kept is what reconcile reads (compact.py): e.g. a Job's metadata (spec-hash annotation,
uid, owner) and status, not its pod template, nor any object's managedFields, and with the strings
all objects repeat shared (memory per Model: the operator benchmark in docs/benchmarks.md).
"""
from __future__ import annotations

import threading

from modelyard.operator.compact import compact


def _rv(obj: dict | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque on a real server: only compare when numeric
        return 0


class Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._deleted: dict[tuple[str, str, str], int] = {}

    def _key(self, kind: str, obj: dict) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return kind, meta.get("namespace") or "", meta["name"]

    def put(self, kind: str, obj: dict | None) -> bool:
        """Record an object; False when it tells nothing new (e.g. the echo of our own write)."""
        if not obj or not (obj.get("metadata") or {}).get("name"):
            return False
        key = self._key(kind, obj)
        with self._lock:
            held = self._objects.get(key)
            if held is not None and _rv(obj) and _rv(obj) <= _rv(held):
                return False  # the write we already recorded, or an older event
            if _rv(obj) and _rv(obj) <= self._deleted.get(key, 0):
                return False
            self._objects[key] = compact(kind, obj)
            self._deleted.pop(key, None)
            return True

    def forget(self, kind: str, obj: dict) -> None:
        key = self._key(kind, obj)
        with self._lock:
            self._objects.pop(key, None)
            self._deleted[key] = max(_rv(obj), self._deleted.get(key, 0))

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            return self._objects.get((kind, namespace or "", name))

    def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict]:
        labels = labels or {}
        with self._lock:
            items = [o for (k, ns, _), o in self._objects.items() if k == kind and ns == namespace]
        return [o for o in items if all(((o.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    def keys(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every object of this kind held."""
        with self._lock:
            return [(ns, name) for (k, ns, name) in self._objects if k == kind]
