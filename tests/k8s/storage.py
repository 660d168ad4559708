"""In-memory object store with kube-apiserver semantics.

One global resourceVersion counter; uid, creationTimestamp, generateName, generation (bumped on
spec changes only); 409 on stale resourceVersions; status subresources; finalizers; a bounded
event history that watches replay from. All methods are synchronous and run on the server's
event loop thread, so a watch registers in the same step as it reads: no event can fall between.
"""
from __future__ import annotations

import collections
import copy
import datetime
import random
import uuid
from collections.abc import Callable
from typing import Any

from tests.k8s import errors, validation
from tests.k8s.registry import Registry, ResourceType, types_from_crd

HISTORY = 100_000  # events kept for watches resuming from a resourceVersion
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"

PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
Key = tuple[str, str]  # (group, plural): versions of a kind share storage


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Event:
    __slots__ = ("rv", "key", "type", "obj", "old")

    def __init__(self, rv: int, key: Key, type: str, obj: dict, old: dict | None) -> None:
        self.rv, self.key, self.type, self.obj, self.old = rv, key, type, obj, old


class Watcher:
    def __init__(self, key: Key, namespace: str | None, pred: Callable[[dict], bool], push) -> None:
        self.key, self.namespace, self.pred, self.push = key, namespace, pred, push

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return False
        return self.pred(obj)

    def translate(self, ev: Event) -> tuple[str, dict] | None:
        """The event this (filtered) watcher sees: objects moving out of a selector are DELETED."""
        new_ok = self.matches(ev.obj)
        if ev.type == "ADDED":
            return ("ADDED", ev.obj) if new_ok else None
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if new_ok else None
        old_ok = self.matches(ev.old)
        if new_ok:
            return ("MODIFIED" if old_ok else "ADDED", ev.obj)
        return ("DELETED", ev.obj) if old_ok else None


class Store:
    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        self.rv = 0
        self.objects: dict[Key, dict[tuple[str | None, str], dict]] = collections.defaultdict(dict)
        self.by_uid: dict[str, tuple[Key, str | None, str]] = {}
        self.history: collections.deque[Event] = collections.deque(maxlen=HISTORY)
        self.compacted_rv = 0
        self.watchers: set[Watcher] = set()
        self.logs: dict[tuple[str, str], str] = {}
        self.schedule: Callable[[Callable[[], Any]], Any] = lambda fn: fn()  # set by the server
        self.on_remove: list[Callable[[Store, ResourceType, dict], None]] = []

    # --- reading -------------------------------------------------------------------------
    @staticmethod
    def key(rt: ResourceType) -> Key:
        return (rt.group, rt.plural)

    def get(self, rt: ResourceType, ns: str | None, name: str) -> dict:
        obj = self.objects[self.key(rt)].get((ns if rt.namespaced else None, name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    def find(self, rt: ResourceType, ns: str | None, name: str) -> dict | None:
        return self.objects[self.key(rt)].get((ns if rt.namespaced else None, name))

    def list(self, rt: ResourceType, ns: str | None, pred=lambda o: True) -> tuple[list[dict], str]:
        items = [o for (ons, _), o in self.objects[self.key(rt)].items()
                 if (ns is None or ons == ns) and pred(o)]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return items, str(self.rv)

    # --- writing -------------------------------------------------------------------------
    def _emit(self, key: Key, type: str, obj: dict, old: dict | None) -> None:
        ev = Event(self.rv, key, type, obj, old)
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv
        self.history.append(ev)
        for w in list(self.watchers):
            if w.key == key:
                seen = w.translate(ev)
                if seen is not None:
                    w.push(seen[0], seen[1])

    def _store(self, rt: ResourceType, obj: dict, type: str, old: dict | None) -> dict:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        ref = (meta.get("namespace"), meta["name"])
        self.objects[self.key(rt)][ref] = obj
        self.by_uid[meta["uid"]] = (self.key(rt), *ref)
        self._emit(self.key(rt), type, obj, old)
        return obj

    def _check_namespace(self, rt: ResourceType, ns: str | None) -> None:
        if not rt.namespaced:
            return
        nsrt = self.registry.get("", "v1", "namespaces")
        namespace = self.find(nsrt, None, ns or "")
        if namespace is None:
            raise errors.not_found(nsrt, ns or "")
        if namespace["metadata"].get("deletionTimestamp"):
            raise errors.ApiError(403, "Forbidden", f'{errors.qualified(rt)} is forbidden: unable to create '
                                  f'new content in namespace {ns} because it is being terminated')

    def _validate(self, rt: ResourceType, obj: dict, old: dict | None, strict: bool = True) -> None:
        if rt.crd is None:
            return
        if not strict:  # fieldValidation=Ignore|Warn: unknown fields are dropped, not refused
            validation.prune_unknown(validation.version_schema(rt.crd, rt.version), obj)
        validation.apply_crd_defaults(rt.crd, obj, rt.version)
        found = validation.validate_against_crd(rt.crd, obj, old)
        if found:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), found)

    def create(self, rt: ResourceType, ns: str | None, body: dict, strict: bool = True) -> dict:
        obj = copy.deepcopy(body)
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise errors.bad_request("the namespace of the provided object does not match the "
                                         "namespace sent on the request")
            ns = ns or meta.get("namespace") or "default"
            meta["namespace"] = ns
        else:
            ns = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(rt, "", [("metadata.name", "Required value: name or generateName is required")])
            meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_CHARS, k=5))
        self._check_namespace(rt, ns)
        if self.find(rt, ns, meta["name"]) is not None:
            raise errors.already_exists(rt, meta["name"])
        obj["apiVersion"], obj["kind"] = rt.group_version, rt.kind
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if rt.has_spec:
            meta["generation"] = 1
        if rt.status and rt.kind != "CustomResourceDefinition":
            obj.pop("status", None)
        self._kind_defaults(rt, obj)
        self._validate(rt, obj, None, strict)
        if rt.kind == "CustomResourceDefinition":
            self._register_crd(obj)
        return self._store(rt, obj, "ADDED", None)

    def _kind_defaults(self, rt: ResourceType, obj: dict) -> None:
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif rt.kind == "Pod" and rt.group == "":
            obj.setdefault("status", {"phase": "Pending"})
        elif rt.kind == "Service" and rt.group == "":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}")

    def _register_crd(self, crd: dict) -> None:
        names = (crd.get("spec") or {}).get("names") or {}
        crd["status"] = {"acceptedNames": names, "storedVersions": [
            v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")],
            "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                            "lastTransitionTime": now()}]}
        for rt in types_from_crd(crd):
            self.registry.add(rt)

    def update(self, rt: ResourceType, ns: str | None, name: str, body: dict,
               subresource: str | None = None, strict: bool = True) -> dict:
        """PUT semantics for the main resource or its /status; patches land here too."""
        old = self.get(rt, ns, name)
        new = copy.deepcopy(body)
        if not isinstance(new, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        meta, om = new.setdefault("metadata", {}), old["metadata"]
        if meta.get("resourceVersion") not in (None, "", om["resourceVersion"]):
            raise errors.conflict(rt, name)
        if meta.get("name") not in (None, name):
            raise errors.bad_request(f'the name of the object ({meta.get("name")}) does not match the '
                                     f'name on the URL ({name})')
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
            meta = new["metadata"]
        elif rt.status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        for field in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "resourceVersion"):
            if field in om:
                meta[field] = om[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        self._validate(rt, new, old, strict)
        if new == old:
            return old  # a no-op write changes nothing, not even resourceVersion
        if rt.has_spec and _spec_part(new) != _spec_part(old):
            meta["generation"] = om.get("generation", 1) + 1
        if rt.kind == "CustomResourceDefinition":
            self._register_crd(new)
        stored = self._store(rt, new, "MODIFIED", old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.remove(rt, stored)
        return stored

    def remove(self, rt: ResourceType, obj: dict) -> dict:
        """Actually drop an object (finalizers done): DELETED event, then garbage collection."""
        meta = obj["metadata"]
        self.objects[self.key(rt)].pop((meta.get("namespace"), meta["name"]), None)
        self.by_uid.pop(meta["uid"], None)
        self.rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(self.key(rt), "DELETED", gone, obj)
        if rt.kind == "CustomResourceDefinition":
            for crt in types_from_crd(obj):  # its custom resources go with it
                for cr in list(self.objects[self.key(crt)].values()):
                    self.remove(crt, cr)
            self.registry.remove_crd(obj)
        if rt.kind == "Pod":
            self.logs.pop((meta.get("namespace"), meta["name"]), None)
        for hook in self.on_remove:
            self.schedule(lambda h=hook: h(self, rt, gone))
        return gone

    def mark_deleted(self, rt: ResourceType, obj: dict) -> dict:
        """Deletion with finalizers pending: set deletionTimestamp; the object stays."""
        new = copy.deepcopy(obj)
        new["metadata"]["deletionTimestamp"] = now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        if rt.has_spec and rt.crd is not None:
            new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        return self._store(rt, new, "MODIFIED", obj)

    def delete(self, rt: ResourceType, ns: str | None, name: str, options: dict | None = None) -> dict:
        obj = self.get(rt, ns, name)
        pre = (options or {}).get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise errors.conflict(rt, name, f'Precondition failed: UID in precondition: {pre["uid"]}, '
                                            f'UID in object meta: {obj["metadata"]["uid"]}')
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        if rt.kind == "Namespace" and name in PROTECTED_NAMESPACES:
            raise errors.ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted')
        if (options or {}).get("propagationPolicy") == "Orphan":
            self.orphan(obj["metadata"]["uid"])
        if obj["metadata"].get("finalizers") or rt.kind == "Namespace":
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            marked = self.mark_deleted(rt, obj)
            if rt.kind == "Namespace":
                return self._terminate_namespace(rt, marked)
            return marked
        return self.remove(rt, obj)

    def orphan(self, uid: str) -> None:
        for key, objs in self.objects.items():
            rt = self._rt_for(key)
            for obj in list(objs.values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    self.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], new)

    def _rt_for(self, key: Key) -> ResourceType:
        for rt in self.registry._types.values():
            if (rt.group, rt.plural) == key:
                return rt
        raise KeyError(key)

    def _terminate_namespace(self, rt: ResourceType, ns_obj: dict) -> dict:
        name = ns_obj["metadata"]["name"]
        new = copy.deepcopy(ns_obj)
        new["status"] = {"phase": "Terminating"}
        stored = self._store(rt, new, "MODIFIED", ns_obj)
        for key, objs in list(self.objects.items()):
            crt = self._rt_for(key) if objs else None
            for (ons, oname), obj in list(objs.items()):
                if ons == name and not obj["metadata"].get("deletionTimestamp"):
                    self.delete(crt, ons, oname)
        self.sweep_namespace(name)
        return stored

    def sweep_namespace(self, name: str | None) -> None:
        """Drop a terminating namespace once nothing is left in it."""
        nsrt = self.registry.get("", "v1", "namespaces")
        ns_obj = self.find(nsrt, None, name or "")
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return
        if any(ons == name for objs in self.objects.values() for (ons, _) in objs):
            return
        self.remove(nsrt, ns_obj)

    # --- watching ------------------------------------------------------------------------
    def subscribe(self, rt: ResourceType, ns: str | None, pred, since: str | None, push) -> Watcher:
        """Register a watcher and push its initial events in the same synchronous step."""
        w = Watcher(self.key(rt), ns, pred, push)
        if since in (None, "", "0"):
            items, _ = self.list(rt, ns, pred)
            for obj in items:
                push("ADDED", obj)
        else:
            try:
                start = int(since)
            except ValueError:
                raise errors.bad_request(f'invalid resourceVersion "{since}"')
            if start < self.compacted_rv:
                raise errors.gone(f"too old resource version: {start} ({self.compacted_rv})")
            for ev in self.history:
                if ev.rv > start and ev.key == w.key:
                    seen = w.translate(ev)
                    if seen is not None:
                        push(*seen)
        self.watchers.add(w)
        return w


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
