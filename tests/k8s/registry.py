"""Resource types known to the emulator and the discovery documents built from them."""
from __future__ import annotations

import dataclasses
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclasses.dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: list[str] = dataclasses.field(default_factory=list)
    status: bool = False  # the /status subresource is enabled
    log: bool = False  # pods/log
    crd: dict | None = None  # the CustomResourceDefinition it came from (for validation)
    categories: list[str] = dataclasses.field(default_factory=list)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def has_spec(self) -> bool:
        """Whether metadata.generation tracks this kind (objects with a spec)."""
        return self.kind not in NO_SPEC_KINDS

    def discovery(self) -> list[dict[str, Any]]:
        entry = {
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        out = [entry]
        if self.status:
            out.append({"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced,
                        "kind": self.kind, "verbs": ["get", "patch", "update"]})
        if self.kind == "Deployment":
            out.append({"name": f"{self.plural}/scale", "singularName": "", "namespaced": True, "kind": "Scale",
                        "group": "autoscaling", "version": "v1", "verbs": ["get", "patch", "update"]})
        if self.log:
            out.append({"name": f"{self.plural}/log", "singularName": "", "namespaced": True,
                        "kind": "Pod", "verbs": ["get"]})
        return out


BUILTINS: list[ResourceType] = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=["ns"], status=True),
    ResourceType("", "v1", "pods", "Pod", short_names=["po"], status=True, log=True, categories=["all"]),
    ResourceType("", "v1", "services", "Service", short_names=["svc"], status=True, categories=["all"]),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=["pvc"], status=True),
    ResourceType("", "v1", "events", "Event", short_names=["ev"]),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=["cm"]),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", short_names=["sa"]),
    ResourceType("batch", "v1", "jobs", "Job", status=True, categories=["all"]),
    ResourceType("apps", "v1", "deployments", "Deployment", short_names=["deploy"], status=True, categories=["all"]),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceType("events.k8s.io", "v1", "events", "Event", short_names=["ev"]),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False, short_names=["crd", "crds"], status=True),
]

NO_SPEC_KINDS = {"ConfigMap", "Secret", "Event", "ServiceAccount", "Lease", "Namespace", "EndpointSlice"}


def types_from_crd(crd: dict) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for ver in spec.get("versions") or []:
        if not ver.get("served", True):
            continue
        out.append(ResourceType(
            group=spec.get("group", ""), version=ver["name"], plural=names.get("plural", ""),
            kind=names.get("kind", ""), namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            short_names=list(names.get("shortNames") or []), categories=list(names.get("categories") or []),
            status="status" in (ver.get("subresources") or {}), crd=crd,
        ))
    return out


class Registry:
    """Group/version/plural → ResourceType, plus the discovery documents kubectl and kopf read."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in BUILTINS:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt

    def remove_crd(self, crd: dict) -> None:
        for rt in types_from_crd(crd):
            self._types.pop((rt.group, rt.version, rt.plural), None)

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._types.values():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        return None

    def by_name(self, name: str) -> ResourceType | None:
        """Plural, kind, singular or short name (case-insensitive); core group wins ties."""
        name = name.lower()
        hits = [rt for rt in self._types.values()
                if name in {rt.plural, rt.singular, rt.kind.lower(), *rt.short_names}]
        hits.sort(key=lambda rt: rt.group != "")
        return hits[0] if hits else None

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rt in self._types.values():
            if rt.group and rt.version not in out.setdefault(rt.group, []):
                out[rt.group].append(rt.version)
        return out

    def api_versions(self) -> dict:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}

    def _group_doc(self, group: str, versions: list[str]) -> dict:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def api_group_list(self) -> dict:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_doc(g, vs) for g, vs in sorted(self.groups().items())]}

    def api_group(self, group: str) -> dict | None:
        versions = self.groups().get(group)
        if not versions:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    def resource_list(self, group: str, version: str) -> dict | None:
        rts = [rt for rt in self._types.values() if rt.group == group and rt.version == version]
        if not rts:
            return None
        resources = [entry for rt in sorted(rts, key=lambda r: r.plural) for entry in rt.discovery()]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}
