"""One reconcile pass as a pure function: (Model, observed children) → actions + status + events.

Level-based: it looks only at what exists now, never at which handler fired. The executor in
``reconcile`` applies the actions, treating "already exists" and "already gone" as success.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.api import Model
from modelyard.operator import observe as ob
from modelyard.operator.resources import (
    Settings,
    base_dir,
    build_adapters_configmap,
    build_cache_pvc,
    build_convert_job,
    build_deployment,
    build_download_job,
    build_service,
    convert_recipe,
    converted_dir,
    endpoint,
    served_adapters,
)
from modelyard.operator.resources.leaderworkerset import is_multinode, layout_text
from modelyard.operator.status import StatusBuilder

FAILURE_REASONS = {"DoesNotFit", "InvalidSpec", "InvalidSource", "DownloadFailed", "ConvertFailed"}


@dataclass
class Action:
    verb: str  # create | replace | scale | delete
    obj: dict
    replicas: int | None = None

    @property
    def key(self) -> str:
        m = self.obj["metadata"]
        return f"{self.verb} {self.obj['kind']} {m['name']}"


@dataclass
class Decision:
    actions: list[Action] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # {type, reason, message}
    retry_after: float | None = None  # seconds: waiting on a child


def _ensure(decision: Decision, desired: dict, existing: dict | None) -> bool:
    """Create or replace a child so it matches ``desired``; True when it already does."""
    if existing is None:
        decision.actions.append(Action("create", desired))
        return False
    if ob.spec_hash(existing) != ob.spec_hash(desired):
        decision.actions.append(Action("delete" if desired["kind"] == "Job" else "replace", desired))
        return False
    return True


def _fail(sb: StatusBuilder, cond: str, reason: str, message: str) -> str:
    sb.condition(cond, False, reason, message)
    sb.condition("Degraded", True, reason, message)
    sb.condition("Ready", False, reason, message)
    return "Failed"


def _download(model: Model, obs: ob.Observed, settings: Settings, sb: StatusBuilder, d: Decision, gpu_memory: str | None):
    """Returns (phase or None when done, the download's result)."""
    desired = build_download_job(model, settings, gpu_memory)
    if not _ensure(d, desired, obs.download_job):
        sb.condition("Downloaded", False, "Downloading", f"downloading {model.spec.source.uri}")
        sb.set("progress", None)
        return "Downloading", None
    state = ob.job_state(obs.download_job)
    pods = ob.owned_pods(obs.download_job, obs.download_pods)
    result = ob.termination_message(pods, "download") or _remembered(sb, state)
    if result.get("plan"):
        sb.set("plan", _plan_status(result["plan"]))
    if state == "failed":
        init = ob.failed_init(pods)
        err = init or result.get("error") or {"reason": "DownloadFailed", "message": "the download Job failed; see its pod logs"}
        if err.get("reason") == "DoesNotFit":
            plan = result.get("plan") or {}
            sb.condition("Downloaded", False, "DoesNotFit", "no weights were downloaded: the model does not fit")
            return _fail(sb, "Planned", "DoesNotFit", plan.get("reason") or err.get("message", "")), None
        where = f" (adapter {init['container'][len('adapter-'):]})" if init else ""
        return _fail(sb, "Downloaded", err.get("reason") or "DownloadFailed", f"{err.get('message', '')}{where}"), None
    if state == "running":
        sb.condition("Downloaded", False, "Downloading", f"downloading {model.spec.source.uri}")
        sb.set("progress", ob.progress_status("download", ob.last_progress(obs.download_log)))
        return "Downloading", None
    sb.set("progress", None)
    revision = result.get("resolvedRevision")
    source = {"cacheKey": base_dir(model).rsplit("/", 1)[-1], "resolvedRevision": revision, "format": result.get("format")}
    sb.set("source", {k: v for k, v in source.items() if v})
    size = result.get("bytes")
    sb.condition("Downloaded", True, "Downloaded", f"{result.get('files', '?')} files, {size if size is not None else '?'} bytes at revision {revision or 'unknown'}")
    plan = result.get("plan")
    if plan is None:
        sb.condition("Planned", None, "NotPlanned", "the source has no config.json to plan from; serving without a fit check")
    elif plan.get("fits", True):
        sb.condition("Planned", True, "Fits", plan.get("reason") or "the model fits")
    else:
        sb.condition("Planned", False, "DoesNotFit", f"{plan.get('reason', '')} (planner.enforce is false: deploying anyway)")
    return None, result


def _remembered(sb: StatusBuilder, state: str) -> dict:
    """What an earlier pass read from the step's pod, for when the pod is gone (pod GC, TTL)."""
    prev = sb.previous
    if state == "succeeded" and (prev.get("source") or {}).get("resolvedRevision"):
        plan = {k: v for k, v in (prev.get("plan") or {}).items() if k != "perGpu"} or None
        return {"plan": plan, "resolvedRevision": prev["source"]["resolvedRevision"], "format": prev["source"].get("format")}
    cond = next((c for c in prev.get("conditions") or [] if c["type"] == "Downloaded"), None)
    if state == "failed" and cond and cond.get("status") == "False" and cond.get("reason") != "Downloading":
        return {"error": {"reason": cond["reason"], "message": cond["message"]}, "plan": prev.get("plan")}
    return {}


def _plan_status(plan: dict) -> dict:
    out = dict(plan)
    per_gpu = plan.get("perGpuBytes")
    if isinstance(per_gpu, int) and per_gpu > 0:
        out["perGpu"] = f"{per_gpu / 2**30:.1f}GiB"
    return out


def _convert(model: Model, obs: ob.Observed, settings: Settings, sb: StatusBuilder, d: Decision, result: dict):
    """Returns (phase or None when done, the folder the server loads)."""
    plan = result.get("plan") or {}
    recipe = convert_recipe(model, plan, result.get("format"))
    if recipe is None:
        sb.condition("Converted", True, "NotNeeded", "the engine loads the downloaded weights as they are")
        sb.set("convert", None)
        if obs.convert_job:
            d.actions.append(Action("delete", obs.convert_job))
        return None, base_dir(model)
    output = converted_dir(model, recipe, result.get("resolvedRevision"))
    sb.set("convert", {"recipe": recipe, "output": output})
    if obs.convert_job is None and output in obs.converted_elsewhere:
        # Same bytes, same recipe, on the same shared cache: another Model already converted it.
        sb.condition("Converted", True, "Reused", f"{_describe(recipe)}: reusing {output}, converted for Model {obs.converted_elsewhere[output]}")
        return None, output
    desired = build_convert_job(model, settings, recipe, output)
    if not _ensure(d, desired, obs.convert_job):
        sb.condition("Converted", False, "Converting", f"Convert Job started: {_describe(recipe)}")
        return "Converting", None
    state = ob.job_state(obs.convert_job)
    if state == "failed":
        err = (ob.termination_message(ob.owned_pods(obs.convert_job, obs.convert_pods), "convert") or {}).get("error") or {}
        return _fail(sb, "Converted", err.get("reason") or "ConvertFailed", err.get("message") or "the convert Job failed; see its pod logs"), None
    if state == "running":
        sb.condition("Converted", False, "Converting", _describe(recipe))
        sb.set("progress", ob.progress_status("convert", ob.last_progress(obs.convert_log)))
        return "Converting", None
    sb.set("progress", None)
    sb.condition("Converted", True, "Converted", _describe(recipe))
    return None, output


def _describe(recipe: dict) -> str:
    parts = [f"{recipe['format']} → safetensors"]
    if recipe["precision"] != "auto":
        parts.append(f"quantized to {recipe['precision']} for {recipe['engine']}")
    if recipe["mergeAdapters"]:
        parts.append("merged adapters " + ", ".join(recipe["mergeAdapters"]))
    return "; ".join(parts)


def _deploy(model: Model, obs: ob.Observed, settings: Settings, sb: StatusBuilder, d: Decision, plan: dict, model_dir: str) -> str:
    desired = build_deployment(model, settings, plan, model_dir)
    _ensure(d, build_service(model), obs.service)
    adapters_cm = build_adapters_configmap(model)
    if adapters_cm:
        _ensure(d, adapters_cm, obs.adapters_configmap)
    elif obs.adapters_configmap:
        d.actions.append(Action("delete", obs.adapters_configmap))
    if _ensure(d, desired, obs.deployment):
        current = (obs.deployment.get("spec") or {}).get("replicas")
        if current != model.spec.replicas:
            d.actions.append(Action("scale", desired, replicas=model.spec.replicas))
    changing = any(a.obj["kind"] == "Deployment" for a in d.actions)
    ready, rolled = ob.deployment_ready(obs.deployment, model.spec.replicas)
    rolled = rolled and not changing
    sb.set("endpoint", endpoint(model))
    sb.set("replicas", model.spec.replicas)
    sb.set("readyReplicas", ready)
    sb.set("nodes", 1)
    sb.set("layout", layout_text(1, model.spec.gpus, plan))
    if model.spec.replicas == 0:
        sb.condition("Ready", False, "ScaledToZero", "spec.replicas is 0")
        return "Deploying"
    failure = None if rolled else ob.server_failure(obs.server_pods)
    if failure:
        return _fail(sb, "Ready", failure["reason"], failure["message"])
    if rolled:
        sb.condition("Ready", True, "Ready", f"{ready}/{model.spec.replicas} replicas serving at {endpoint(model)}{_adapters(model, obs, sb, d, ready)}")
        return "Ready"
    sb.condition("Ready", False, "Deploying", f"{ready}/{model.spec.replicas} replicas ready; waiting for the model to load")
    return "Deploying"


def _adapters(model: Model, obs: ob.Observed, sb: StatusBuilder, d: Decision, ready: int) -> str:
    """status.adapters from the pods, and a note while some pods have not loaded them yet."""
    wanted = served_adapters(model)
    if not wanted:
        sb.set("adapters", None)
        return ""
    if obs.adapter_pods is None:
        return ""
    sb.set("adapters", [{"name": n, "loadedPods": obs.adapter_pods.get(n, 0)} for n in sorted(wanted)])
    loading = [f"{n} ({obs.adapter_pods.get(n, 0)}/{ready} pods)" for n in sorted(wanted) if obs.adapter_pods.get(n, 0) < ready]
    if loading:
        d.retry_after = 5  # the kubelet refreshes the mounted ConfigMap within about a minute
        return "; loading adapters: " + ", ".join(loading)
    return ""


def decide(model: Model, previous_status: dict | None, obs: ob.Observed, settings: Settings, gpu_memory: str | None = None) -> Decision:
    d = Decision()
    sb = StatusBuilder(previous_status, model.metadata.generation)
    phase = _decide(model, obs, settings, sb, d, gpu_memory)
    if "Degraded" not in sb.touched:
        sb.condition("Degraded", False, "AsExpected", "no problems")
    if sb.get("Ready") is None:
        sb.condition("Ready", False, phase, f"the Model is {phase.lower()}")
    d.status = sb.build(phase)
    for cond in sb.transitions():
        bad = (cond["type"] == "Degraded" and cond["status"] == "True") or cond["reason"] in FAILURE_REASONS
        if not bad and (cond["type"] == "Degraded" or (cond["type"] == "Ready" and cond["status"] != "True")):
            continue  # "not ready yet" is what the other conditions' Events already say
        d.events.append({"type": "Warning" if bad else "Normal", "reason": cond["reason"], "message": f"{cond['type']}: {cond['message']}"})
    if phase in ("Downloading", "Converting", "Deploying"):
        d.retry_after = 5 if phase != "Deploying" else 10
    return d


def _decide(model, obs, settings, sb, d, gpu_memory) -> str:
    if model.spec.source.uri.startswith("file://"):
        return _fail(sb, "Downloaded", "InvalidSource", "file:// sources only work in local mode (`modelyard up`); in a cluster use pvc://, s3://, hf:// or http(s)://")
    pvc = build_cache_pvc(model, settings)
    if pvc is not None and obs.pvc is None:
        d.actions.append(Action("create", pvc))
    if model.spec.replicas > 1 and model.spec.cache.access_mode == "ReadWriteOnce" and model.spec.gpus:
        sb.condition("Degraded", True, "CacheNotShared", "replicas > 1 on different nodes need spec.cache.accessMode ReadWriteMany (or ReadOnlyMany)")
    phase, result = _download(model, obs, settings, sb, d, gpu_memory)
    if phase:
        return phase
    phase, model_dir = _convert(model, obs, settings, sb, d, result)
    if phase:
        return phase
    plan = result.get("plan") or {}
    if is_multinode(model, plan, settings):
        from modelyard.operator.decide_group import deploy_group

        return deploy_group(model, obs, settings, sb, d, plan, model_dir)
    if obs.lws:  # it was a multi-node Model before
        d.actions.append(Action("delete", obs.lws))
    return _deploy(model, obs, settings, sb, d, plan, model_dir)
