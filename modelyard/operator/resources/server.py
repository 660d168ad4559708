"""The serving Deployment and Service `<name>`. Pure builders."""
from __future__ import annotations

import json

from modelyard.api import Model
from modelyard.operator.resources.common import (
    BASE_ENV,
    SPEC_HASH,
    Settings,
    cache_mount,
    cache_volume,
    container_security,
    digest,
    metadata,
    pod_security,
    scratch_volumes,
    selector,
    serve_image_key,
)
from modelyard.operator.resources.download import adapter_dir


ADAPTERS_DIR = "/etc/modelyard/adapters"
ADAPTERS_FILE = f"{ADAPTERS_DIR}/adapters.json"
AUTH_DIR = "/etc/modelyard/auth"
API_KEY_FILE = f"{AUTH_DIR}/api-keys"


def served_adapters(model: Model) -> dict[str, str]:
    """Adapters served beside the base (merged ones are baked into the weights), name -> folder."""
    return {a.name: adapter_dir(a) for a in model.spec.adapters if not a.merge}


def build_adapters_configmap(model: Model) -> dict | None:
    """`<name>-adapters`: what every serving pod loads; the server re-reads it and hot-loads changes."""
    adapters = served_adapters(model)
    if not adapters:
        return None
    data = {"adapters.json": json.dumps(adapters, sort_keys=True, indent=2) + "\n"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(model, f"{model.name}-adapters", "server", digest(data)),
        "data": data,
    }


def endpoint(model: Model) -> str:
    return f"http://{model.name}.{model.namespace}.svc:{model.spec.serving.port}/v1"




def serving_engine(model: Model, plan: dict) -> str:
    """The plan's engine; without a plan, the spec's, and for auto: onnxruntime for an ONNX source,
    else vllm on GPUs and accelerate on CPU."""
    spec = model.spec
    if plan.get("engine"):
        return plan["engine"]
    if spec.engine != "auto":
        return spec.engine
    if spec.format == "onnx":
        return "onnxruntime"
    return "vllm" if spec.gpus else "accelerate"


def serve_args(model: Model, plan: dict, model_dir: str) -> list[str]:
    spec = model.spec
    engine = serving_engine(model, plan)
    args = ["serve", "--engine", engine, "--model", model_dir, "--port", str(spec.serving.port),
            "--served-model-name", model.name, "--gpus", str(spec.gpus),
            "--precision", plan.get("precision") or spec.precision]
    max_len = plan.get("maxModelLen") or spec.serving.max_model_len
    if max_len:
        args += ["--max-model-len", str(max_len)]
    if engine == "accelerate" and plan.get("maxMemory"):
        args += ["--max-memory", json.dumps(plan["maxMemory"], sort_keys=True, separators=(",", ":"))]
        if plan.get("offload"):
            args += ["--offload-folder", "/tmp/offload"]
    if plan.get("perGpuBytes") and spec.gpus:
        args += ["--planned-gpu-bytes", str(plan["perGpuBytes"])]
    if served_adapters(model):
        # Not --adapter flags: the file follows the ConfigMap, so adapter changes need no restart.
        args += ["--adapters-file", ADAPTERS_FILE]
    if spec.serving.trust_remote_code:
        args.append("--trust-remote-code")
    if spec.serving.auth:
        # A directory mount (not subPath): the kubelet updates it when the Secret changes, and the
        # server re-reads the file, so keys rotate without a restart.
        args += ["--api-key-file", API_KEY_FILE]
    if spec.serving.args:
        args += ["--", *spec.serving.args]
    return args


def _probes(port: int) -> dict:
    get = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        # Loading a big model takes minutes: up to an hour before liveness starts counting.
        "startupProbe": {**get, "periodSeconds": 10, "failureThreshold": 360, "timeoutSeconds": 5},
        "readinessProbe": {**get, "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 5},
        "livenessProbe": {**get, "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 10},
    }


def _config_volumes(model: Model) -> list[tuple[dict, dict]]:
    """(volume, mount) of the adapters ConfigMap and the API key Secret, when the Model has them."""
    out = []
    if served_adapters(model):
        out.append(({"name": "adapters", "configMap": {"name": f"{model.name}-adapters"}},
                    {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True}))
    if model.spec.serving.auth:
        ref = model.spec.serving.auth.secret_ref
        out.append(({"name": "api-keys", "secret": {"secretName": ref.name, "defaultMode": 0o440,
                                                     "items": [{"key": ref.key, "path": "api-keys"}]}},
                    {"name": "api-keys", "mountPath": AUTH_DIR, "readOnly": True}))
    return out


def server_pod_spec(model: Model, settings: Settings, plan: dict, model_dir: str, *,
                    gpus: int | None = None, args: list[str] | None = None, probes: dict | None = None) -> dict:
    """The serving pod: one `modelyard serve` container with the cache, /dev/shm and GPUs.

    ``gpus`` is what this pod requests (spec.gpus unless a multi-node layout splits it)."""
    spec = model.spec
    gpus = spec.gpus if gpus is None else gpus
    engine = serving_engine(model, plan)
    volumes, mounts = scratch_volumes()
    # vLLM's tensor-parallel workers talk through shared memory.
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi" if gpus > 1 else "1Gi"}}
    resources = {"requests": dict(spec.resources.requests), "limits": dict(spec.resources.limits)}
    if gpus:
        resources["limits"][spec.gpu_resource] = str(gpus)
        resources["requests"][spec.gpu_resource] = str(gpus)
    container = {
        "name": "server",
        "image": settings.images[serve_image_key(engine)],
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["modelyard"],
        "args": args if args is not None else serve_args(model, plan, model_dir),
        "ports": [{"name": "http", "containerPort": spec.serving.port, "protocol": "TCP"}],
        "env": list(BASE_ENV) + [{"name": e.name, "value": e.value} for e in spec.serving.env],
        "volumeMounts": [cache_mount(read_only=True), {"name": "dshm", "mountPath": "/dev/shm"}] + mounts,
        "securityContext": container_security(),
        "resources": {k: v for k, v in resources.items() if v},
        **(_probes(spec.serving.port) if probes is None else probes),
    }
    pod_spec = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        # In-flight requests drain on SIGTERM before the pod goes.
        "terminationGracePeriodSeconds": 120,
        "containers": [container],
        "volumes": [cache_volume(model, read_only=True), shm] + volumes,
    }
    for volume, mount in _config_volumes(model):
        pod_spec["volumes"].append(volume)
        container["volumeMounts"].append(mount)
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    return pod_spec


def build_deployment(model: Model, settings: Settings, plan: dict, model_dir: str) -> dict:
    spec = model.spec
    pod_spec = server_pod_spec(model, settings, plan, model_dir)
    template_hash = digest({"pod": pod_spec})
    meta = metadata(model, model.name, "server", template_hash)
    pod_labels = meta["labels"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas if spec.scaling is None else max(spec.replicas, spec.scaling.min_replicas),
            "selector": {"matchLabels": selector(model, "server")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0 if spec.gpus else 1, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": pod_labels, "annotations": {SPEC_HASH: template_hash}}, "spec": pod_spec},
        },
    }


def build_service(model: Model) -> dict:
    port = model.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(model, "server"),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
