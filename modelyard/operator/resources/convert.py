"""When a convert step is needed, and the `<name>-convert` Job. Pure builders."""
from __future__ import annotations

from modelyard.api import QUANTIZED, Model
from modelyard.operator.resources.common import (
    BASE_ENV,
    POD_IDENTITY_ENV,
    CACHE_MOUNT,
    Settings,
    cache_mount,
    cache_volume,
    container_security,
    deadline_seconds,
    digest,
    metadata,
    pod_security,
    scratch_volumes,
)
from modelyard.operator.resources.download import adapter_dir, base_dir

SERVABLE_FORMATS = ("safetensors",)


def effective_format(model: Model, detected: str | None) -> str:
    """The format at the source: the spec's, or what the download detected (safetensors if unknown)."""
    return model.spec.format if model.spec.format != "auto" else (detected or "safetensors")


def convert_recipe(model: Model, plan: dict, detected: str | None) -> dict | None:
    """What the convert step must do, or None when the engine can load the download as is.

    Float casts need no step: both engines cast at load time (`--dtype`, `torch_dtype`).
    Quantization does on vLLM (llmcompressor → compressed-tensors); on accelerate it is
    bitsandbytes at load time.
    """
    fmt = effective_format(model, detected)
    precision = plan.get("precision") or model.spec.precision
    engine = plan.get("engine") or model.spec.engine
    merge = sorted(a.name for a in model.spec.adapters if a.merge)
    quantize = engine == "vllm" and precision in QUANTIZED and not plan.get("preQuantized")
    if fmt in SERVABLE_FORMATS and not quantize and not merge:
        return None
    return {
        "format": fmt,
        "precision": precision if quantize else "auto",
        "engine": engine,
        "mergeAdapters": merge,
    }


def converted_dir(model: Model, recipe: dict, resolved_revision: str | None) -> str:
    """Content-addressed: same source bytes + same recipe → same folder, shared by Models."""
    key = digest({"source": base_dir(model), "revision": resolved_revision or "", "recipe": recipe})
    return f"{CACHE_MOUNT}/converted/{key}"


def build_convert_job(model: Model, settings: Settings, recipe: dict, output: str, weight_bytes: int | None = None) -> dict:
    args = ["convert", "--input", base_dir(model), "--output", output,
            "--format", recipe["format"], "--precision", recipe["precision"], "--engine", recipe["engine"]]
    by_name = {a.name: a for a in model.spec.adapters}
    for name in recipe["mergeAdapters"]:
        args += ["--merge-adapter", adapter_dir(by_name[name])]
    volumes, mounts = scratch_volumes()
    container = {
        "name": "convert",
        "image": settings.images["convert"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["modelyard"],
        "args": args + ["--termination-log", "/dev/termination-log"],
        "env": list(BASE_ENV) + POD_IDENTITY_ENV + [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "volumeMounts": [cache_mount()] + mounts,
        "securityContext": container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}},
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [cache_volume(model)] + volumes,
    }
    meta = metadata(model, f"{model.name}-convert", "convert", digest({"pod": pod_spec}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {"backoffLimit": 1, "activeDeadlineSeconds": deadline_seconds(weight_bytes, settings.convert_floor_mib_s, settings),
                 "template": {"metadata": {"labels": meta["labels"]}, "spec": pod_spec}},
    }
