"""The cache PVC and the `<name>-download` Job. Pure builders."""
from __future__ import annotations

from modelyard.api import Model
from modelyard.operator.resources.common import (
    gpus_per_node,
    BASE_ENV,
    POD_IDENTITY_ENV,
    CACHE_MOUNT,
    Settings,
    cache_claim,
    cache_mount,
    cache_volume,
    container_security,
    deadline_seconds,
    digest,
    env_from_secret,
    metadata,
    pod_security,
    scratch_volumes,
    source_key,
)

# Exit code of `modelyard download` when the plan says the model does not fit: not retried.
EXIT_DOES_NOT_FIT = 3


def source_dir(uri: str, revision: str | None = None, include=()) -> str:
    return f"{CACHE_MOUNT}/sources/{source_key(uri, revision, include)}"


# The download pod reads a URI that comes from a Secret (uriFrom) from this variable.
URI_ENV = "MODELYARD_SOURCE_URI"


def uri_key(uri: str | None, uri_from) -> str:
    """What names the bytes: the URI, or for a URI kept in a Secret, that Secret's key."""
    if uri is not None:
        return uri
    ref = uri_from.secret_key_ref
    return f"secret:{ref.name}/{ref.key}"


def base_dir(model: Model) -> str:
    src = model.spec.source
    return source_dir(uri_key(src.uri, src.uri_from), src.revision, src.include)


def adapter_dir(adapter) -> str:
    return source_dir(uri_key(adapter.uri, adapter.uri_from), adapter.revision)


def _source_args(uri: str | None, uri_from) -> tuple[list[str], list[dict]]:
    """``--source URI``, or ``--source-env VAR`` with VAR from the Secret: the credential never
    appears in the Job's spec."""
    if uri is not None:
        return ["--source", uri], []
    ref = uri_from.secret_key_ref
    env = {"name": URI_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    return ["--source-env", URI_ENV], [env]


def build_cache_pvc(model: Model, settings: Settings) -> dict | None:
    """`<name>-cache`, unless the Model uses a shared claim (then None)."""
    if model.spec.cache.claim_name:
        return None
    spec = {
        "accessModes": [model.spec.cache.access_mode],
        "resources": {"requests": {"storage": model.spec.cache.size}},
    }
    storage_class = model.spec.cache.storage_class_name or settings.default_storage_class
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(model, cache_claim(model), "cache"),
        "spec": spec,
    }


def plan_args(model: Model, gpu_memory: str | None, per_node: int = 8) -> list[str]:
    """The planner's inputs, passed to the step that first sees config.json."""
    spec = model.spec
    args = ["--plan-precision", spec.precision, "--plan-engine", spec.engine, "--plan-gpus", str(spec.gpus)]
    if gpu_memory:
        args += ["--plan-gpu-memory", gpu_memory]
    if spec.nodes or spec.gpus_per_node or spec.gpus > per_node:  # else a one-node plan, as before
        args += ["--plan-gpus-per-node", str(per_node)]
    if spec.nodes:
        args += ["--plan-nodes", str(spec.nodes)]
    if spec.serving.max_model_len:
        args += ["--plan-max-model-len", str(spec.serving.max_model_len)]
    if not spec.planner.enforce:
        args.append("--no-enforce-plan")
    return args


def _download_container(name: str, image: str, settings: Settings, where, dest: str, revision, include, secret, extra) -> dict:
    source, uri_env = _source_args(where.uri, where.uri_from)
    args = ["download", *source, "--dest", dest]
    if revision:
        args += ["--revision", revision]
    for pattern in include:
        args += ["--include", pattern]
    _, mounts = scratch_volumes()
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["modelyard"],
        "args": args + ["--termination-log", "/dev/termination-log"] + extra,
        "env": list(BASE_ENV) + POD_IDENTITY_ENV + uri_env,
        "envFrom": env_from_secret(secret.name if secret else None),
        "volumeMounts": [cache_mount()] + mounts,
        "securityContext": container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    }


PVC_ROOT = "/mnt/pvc"  # where `modelyard download` looks for pvc://<claim>/... (MODELYARD_PVC_ROOT)


def source_claims(model: Model) -> list[str]:
    """Claims named by pvc:// URIs of the source and the adapters, in order, once each."""
    uris = [model.spec.source.uri] + [a.uri for a in model.spec.adapters]
    claims = [u[len("pvc://"):].split("/", 1)[0] for u in uris if u and u.startswith("pvc://")]
    return list(dict.fromkeys(claims))


def _source_volumes(model: Model) -> tuple[list[dict], list[dict]]:
    """pvc:// sources: each claim mounted read-only at /mnt/pvc/<claim> in the download pod."""
    volumes, mounts = [], []
    for i, claim in enumerate(source_claims(model)):
        volumes.append({"name": f"source-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"source-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def build_download_job(model: Model, settings: Settings, gpu_memory: str | None = None, weight_bytes: int | None = None) -> dict:
    """Fetch config.json, plan, then the weights (main container); adapters first (init containers, no plan)."""
    src, image = model.spec.source, settings.images["download"]
    main = _download_container("download", image, settings, src, base_dir(model), src.revision,
                               src.include, src.secret_ref, plan_args(model, gpu_memory, gpus_per_node(model, settings)))
    inits = [
        _download_container(f"adapter-{a.name}", image, settings, a, adapter_dir(a), a.revision, (), a.secret_ref, ["--no-plan"])
        for a in model.spec.adapters
    ]
    volumes, _ = scratch_volumes()
    source_volumes, source_mounts = _source_volumes(model)
    for container in [main] + inits:
        container["volumeMounts"] += source_mounts
    volumes += source_volumes
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [main],
        "volumes": [cache_volume(model)] + volumes,
    }
    if inits:
        pod_spec["initContainers"] = inits
    job_hash = digest({"pod": pod_spec})
    meta = metadata(model, f"{model.name}-download", "download", job_hash)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 3,
            # weight bytes (from an earlier plan) at the floor throughput; the operator retries with backoff
            "activeDeadlineSeconds": deadline_seconds(weight_bytes, settings.download_floor_mib_s, settings),
            # A model that does not fit fails the Job at once instead of retrying.
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "download", "operator": "In", "values": [EXIT_DOES_NOT_FIT]}}]},
            "template": {"metadata": {"labels": meta["labels"]}, "spec": pod_spec},
        },
    }
