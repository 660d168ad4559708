"""Names, labels, owner references, hashes and pod pieces shared by the builders. Pure."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from modelyard import __version__
from modelyard.api import API_VERSION, KIND, Model

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SPEC_HASH = "modelyard.io/spec-hash"
CACHE_MOUNT = "/cache"
RUNTIME_UID = 1000
# The images the operator puts into pods, by the stem of their images/<name>.Dockerfile (`make
# images` builds one image per Dockerfile as <registry>/<name>:<package version>). The chart's
# values (config.images.<key>) use the same names, camelCased; tests/unit/test_image_names.py
# proves the three agree. A serving engine's image is serve-<engine>.
IMAGE_REGISTRY = "ghcr.io/modelyard"
STEP_IMAGES = ("download", "convert", "serve-vllm", "serve-accelerate", "serve-onnxruntime")


def image_key(name: str) -> str:
    """Settings/chart key of an image: ``serve-vllm`` -> ``serveVllm``."""
    first, *rest = name.split("-")
    return first + "".join(part.capitalize() for part in rest)


def serve_image_key(engine: str) -> str:
    return image_key(f"serve-{engine}")


def default_images() -> dict[str, str]:
    return {image_key(name): f"{IMAGE_REGISTRY}/{name}:{__version__}" for name in STEP_IMAGES}


@dataclass(frozen=True)
class Settings:
    """Operator configuration (from the chart's ConfigMap, MODELYARD_CONFIG)."""

    images: dict[str, str] = field(default_factory=default_images)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_storage_class: str | None = None
    image_pull_policy: str = "IfNotPresent"
    # Who scales Models with spec.scaling: "gateway" (modelyard gateway, scale to zero with held
    # requests) or "keda" (a KEDA ScaledObject per Model, Prometheus trigger).
    autoscaler: str = "gateway"
    keda: dict[str, Any] = field(default_factory=dict)           # {prometheusAddress, pollingInterval}
    inference_pool: dict[str, Any] = field(default_factory=dict)  # {enabled, endpointPicker: {name, port}}
    # failed steps: runs before giving up, first backoff (doubles per failure), backoff cap
    retry_max_attempts: int = 5
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 1800.0
    # step Jobs' activeDeadlineSeconds: weight bytes at these floor throughputs plus a fixed allowance
    download_floor_mib_s: float = 10.0
    convert_floor_mib_s: float = 5.0
    deadline_minimum_seconds: int = 900
    deadline_default_seconds: int = 86400  # before the first plan says how big the weights are
    gpus_per_node: int = 8  # GPUs on each node: spec.gpus above it spans nodes (spec.gpusPerNode overrides)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Settings":
        data = data or {}
        base = cls()
        if data.get("autoscaler", base.autoscaler) not in ("gateway", "keda"):
            raise ValueError(f"autoscaler: {data.get('autoscaler')!r}; valid values: gateway, keda")
        return cls(
            images={**base.images, **(data.get("images") or {})},
            profiles=dict(data.get("profiles") or {}),
            default_storage_class=(data.get("cache") or {}).get("defaultStorageClass"),
            image_pull_policy=data.get("imagePullPolicy", base.image_pull_policy),
            autoscaler=data.get("autoscaler", base.autoscaler),
            keda=dict(data.get("keda") or {}),
            inference_pool=dict(data.get("inferencePool") or {}),
            gpus_per_node=int(data.get("gpusPerNode") or base.gpus_per_node),
            **_retry_settings(data.get("retry") or {}, data.get("deadlines") or {}),
        )


def _retry_settings(retry: dict, deadlines: dict) -> dict:
    pairs = {"retry_max_attempts": (retry, "maxAttempts", int), "retry_base_seconds": (retry, "baseSeconds", float),
             "retry_max_seconds": (retry, "maxSeconds", float),
             "download_floor_mib_s": (deadlines, "downloadFloorMiBps", float),
             "convert_floor_mib_s": (deadlines, "convertFloorMiBps", float),
             "deadline_minimum_seconds": (deadlines, "minimumSeconds", int),
             "deadline_default_seconds": (deadlines, "defaultSeconds", int)}
    return {attr: cast(src[key]) for attr, (src, key, cast) in pairs.items() if src.get(key) is not None}


def deadline_seconds(weight_bytes: int | None, floor_mib_s: float, settings: "Settings") -> int:
    """A step Job's activeDeadlineSeconds: its bytes at the slowest throughput still healthy, plus a
    fixed allowance; the default while the size is not known yet (before the first plan)."""
    if not weight_bytes:
        return settings.deadline_default_seconds
    return int(settings.deadline_minimum_seconds + weight_bytes / (floor_mib_s * 2**20))


def gpus_per_node(model: Model, settings: Settings) -> int:
    """spec.gpusPerNode, else the gpusPerNode of the profile spec.gpuMemory names, else the setting."""
    profile = settings.profiles.get(model.spec.gpu_memory or "") or {}
    return int(model.spec.gpus_per_node or profile.get("gpusPerNode") or settings.gpus_per_node)


def labels(model: Model, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: "modelyard",
        INSTANCE_LABEL: model.name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: "modelyard-operator",
    }


def selector(model: Model, component: str) -> dict[str, str]:
    return {INSTANCE_LABEL: model.name, COMPONENT_LABEL: component}


def owner_reference(model: Model) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": model.name,
        "uid": model.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(model: Model, name: str, component: str, spec_hash: str | None = None) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": model.namespace,
        "labels": labels(model, component),
        "ownerReferences": [owner_reference(model)],
    }
    if spec_hash:
        meta["annotations"] = {SPEC_HASH: spec_hash}
    return meta


def digest(obj: Any, length: int = 16) -> str:
    """Stable short sha256 of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def source_key(uri: str, revision: str | None, include: list[str] | tuple = ()) -> str:
    """Content key of a download: two Models asking for the same bytes share them."""
    return digest({"uri": uri, "revision": revision or "", "include": sorted(include)})


def cache_claim(model: Model) -> str:
    return model.spec.cache.claim_name or f"{model.name}-cache"


def cache_volume(model: Model, read_only: bool = False) -> dict:
    return {"name": "cache", "persistentVolumeClaim": {"claimName": cache_claim(model), "readOnly": read_only}}


def cache_mount(read_only: bool = False) -> dict:
    return {"name": "cache", "mountPath": CACHE_MOUNT, "readOnly": read_only}


def scratch_volumes() -> tuple[list[dict], list[dict]]:
    """A writable /tmp (also HOME) so the root filesystem can stay read-only."""
    return [{"name": "tmp", "emptyDir": {}}], [{"name": "tmp", "mountPath": "/tmp"}]


def container_security() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID, "fsGroup": RUNTIME_UID}


BASE_ENV = [
    {"name": "HOME", "value": "/tmp"},
    {"name": "HF_HOME", "value": "/tmp/hf"},
    {"name": "PYTHONUNBUFFERED", "value": "1"},
]


# Who a step's pod is (downward API): the shared cache's lease names its owner, and staging folders
# are named after the pod's UID so that two pods never write into one another's.
POD_IDENTITY_ENV = [
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "MODELYARD_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
]


def env_from_secret(secret_name: str | None) -> list[dict]:
    """Credentials only ever reach a pod this way: the Secret's keys become env vars."""
    return [{"secretRef": {"name": secret_name}}] if secret_name else []
