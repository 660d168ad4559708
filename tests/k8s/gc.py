"""Garbage collection after an object is gone: owner references (background, cascading) and
terminating namespaces. Hooked into `Store.on_remove`; the server runs hooks after answering."""
from __future__ import annotations

import copy

from tests.k8s import errors
from tests.k8s.registry import ResourceType
from tests.k8s.storage import Store


def collect_dependents(store: Store, rt: ResourceType, gone: dict) -> None:
    """Delete objects whose only live owner was `gone`; drop the dangling reference otherwise."""
    uid = gone["metadata"]["uid"]
    for key, objs in list(store.objects.items()):
        if not objs:
            continue
        dep_rt = store._rt_for(key)
        for obj in list(objs.values()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            ns, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
            alive = [r for r in refs if r.get("uid") != uid and r.get("uid") in store.by_uid]
            try:
                if alive:
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    store.update(dep_rt, ns, name, new)
                elif not obj["metadata"].get("deletionTimestamp"):
                    store.delete(dep_rt, ns, name, {"propagationPolicy": "Background"})
            except errors.ApiError:
                pass  # already gone or changed meanwhile: the next removal retries


def sweep_namespace(store: Store, rt: ResourceType, gone: dict) -> None:
    if rt.namespaced:
        store.sweep_namespace(gone["metadata"].get("namespace"))


def install(store: Store) -> None:
    store.on_remove.extend([collect_dependents, sweep_namespace])
