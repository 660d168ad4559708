"""One reconcile pass as a pure function: (Model, observed children) → actions + status + events.

Level-based: it looks only at what exists now, never at which handler fired. The executor in
``reconcile`` applies the actions, treating "already exists" and "already gone" as success.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

from modelyard.api import Model
from modelyard.operator import observe as ob
from modelyard.operator import retry
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
from modelyard.uri import has_userinfo

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
    blocked: set[tuple[str, str]] = field(default_factory=set)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))  # retries are due against it  # (kind, name) of objects we do not control


def _ensure(decision: Decision, desired: dict, existing: dict | None) -> bool:
    """Create or replace a child so it matches ``desired``; True when it already does.
    An object with that name that this Model does not control is never touched."""
    if (desired["kind"], desired["metadata"]["name"]) in decision.blocked:
        return False
    return _ensure_owned(decision, desired, existing)


def _ensure_owned(decision: Decision, desired: dict, existing: dict | None) -> bool:
    if existing is None:
        decision.actions.append(Action("create", desired))
        return False
    if ob.spec_hash(existing) != ob.spec_hash(desired):
        # a Job's template cannot change: delete this one (by uid) and create the new one next pass
        decision.actions.append(Action("delete", existing) if desired["kind"] == "Job" else Action("replace", desired))
        return False
    if ob.drifted(desired, existing):  # edited by hand: put back what the Model says
        decision.actions.append(Action("replace", desired))
        return False
    return True


def _fail(sb: StatusBuilder, cond: str, reason: str, message: str) -> str:
    sb.condition(cond, False, reason, message)
    sb.condition("Degraded", True, reason, message)
    sb.condition("Ready", False, reason, message)
    return "Failed"


def _download(model: Model, obs: ob.Observed, settings: Settings, sb: StatusBuilder, d: Decision, gpu_memory: str | None):
    """Returns (phase or None when done, the download's result)."""
    other = obs.downloading_elsewhere.get(base_dir(model)) if obs.download_job is None else None
    if other:  # one download per cache key: the Job starts (and finds the bytes there) once it is done
        sb.condition("Downloaded", False, "WaitingForSharedDownload", f"Model {other} is downloading the same bytes into "
                     f"the shared cache {model.spec.cache.claim_name}; this download starts when it is done")
        return "Downloading", None
    desired = build_download_job(model, settings, gpu_memory, (sb.previous.get("plan") or {}).get("weightBytes"))
    if not _ensure(d, desired, obs.download_job):
        sb.condition("Downloaded", False, "Downloading", f"downloading {model.spec.source.described()}")
        sb.set("progress", None)
        return "Downloading", None
    state = ob.job_state(obs.download_job)
    pods = ob.owned_pods(obs.download_job, obs.download_pods)
    result = ob.termination_message(pods, "download") or _remembered(sb, state)
    if result.get("plan"):
        sb.set("plan", _plan_status(result["plan"]))
    if state == "failed":
        init = ob.failed_init(pods)
        err = init or result.get("error") or ob.job_failure(obs.download_job) or \
            {"reason": "DownloadFailed", "message": "the download Job failed; see its pod logs"}
        if err.get("reason") == "DoesNotFit":
            plan = result.get("plan") or {}
            sb.condition("Downloaded", False, "DoesNotFit", "no weights were downloaded: the model does not fit")
            return _failed_step(model, settings, sb, d, obs.download_job, "Planned", "DoesNotFit",
                                plan.get("reason") or err.get("message", "")), None
        where = f" (adapter {init['container'][len('adapter-'):]})" if init else ""
        return _failed_step(model, settings, sb, d, obs.download_job, "Downloaded", err.get("reason") or "DownloadFailed",
                            f"{err.get('message', '')}{where}"), None
    waiting = ob.waiting_for(obs.download_log) if state == "running" else None
    if waiting:
        sb.condition("Downloaded", False, waiting.get("reason") or "WaitingForSharedDownload", waiting.get("message") or "")
        return "Downloading", None
    if state == "running":
        sb.condition("Downloaded", False, "Downloading", f"downloading {model.spec.source.described()}")
        sb.set("progress", ob.progress_status("download", ob.last_progress(obs.download_log)))
        _waiting(sb, pods, "download")
        return "Downloading", None
    sb.set("progress", None)
    _succeeded(sb, "download")
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


def _failed_step(model: Model, settings: Settings, sb: StatusBuilder, d: Decision, job: dict, cond: str, reason: str, message: str) -> str:
    """A failed step Job: Failed with its reason, and a bounded retry (status.retry) or the annotation's."""
    policy = retry.Policy(settings.retry_max_attempts, settings.retry_base_seconds, settings.retry_max_seconds)
    step = job["metadata"]["name"].rsplit("-", 1)[-1]
    verdict = retry.on_failure(sb.previous.get("retry"), step, model.metadata.generation, job["metadata"].get("uid"), reason,
                               model.metadata.annotations.get(retry.RETRY_ANNOTATION), policy, d.now)
    sb.set("retry", {k: v for k, v in verdict.status.items() if v is not None})
    if verdict.delete_job:
        d.actions.append(Action("delete", job))
        d.events.append({"type": "Normal", "reason": "Retrying", "message": f"{step} failed ({reason}){verdict.message}"})
    if verdict.wait:
        d.retry_after = min(d.retry_after or verdict.wait, verdict.wait)
    return _fail(sb, cond, reason, message + verdict.message)


def _succeeded(sb: StatusBuilder, step: str) -> None:
    if (sb.previous.get("retry") or {}).get("step") == step:
        sb.set("retry", None)


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
    desired = build_convert_job(model, settings, recipe, output, plan.get("weightBytes"))
    if not _ensure(d, desired, obs.convert_job):
        sb.condition("Converted", False, "Converting", f"Convert Job started: {_describe(recipe)}")
        return "Converting", None
    state = ob.job_state(obs.convert_job)
    if state == "failed":
        err = (ob.termination_message(ob.owned_pods(obs.convert_job, obs.convert_pods), "convert") or {}).get("error") \
            or ob.job_failure(obs.convert_job) or {}
        return _failed_step(model, settings, sb, d, obs.convert_job, "Converted", err.get("reason") or "ConvertFailed",
                            err.get("message") or "the convert Job failed; see its pod logs"), None
    waiting = ob.waiting_for(obs.convert_log) if state == "running" else None
    if waiting:
        sb.condition("Converted", False, waiting.get("reason") or "WaitingForSharedConvert", waiting.get("message") or "")
        return "Converting", None
    if state == "running":
        _waiting(sb, ob.owned_pods(obs.convert_job, obs.convert_pods), "convert")
        sb.condition("Converted", False, "Converting", _describe(recipe))
        sb.set("progress", ob.progress_status("convert", ob.last_progress(obs.convert_log)))
        return "Converting", None
    sb.set("progress", None)
    _succeeded(sb, "convert")
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
    _waiting(sb, obs.server_pods, "serving")
    return "Deploying"


def _waiting(sb: StatusBuilder, pods: list[dict], step: str) -> None:
    """A pod that cannot start (missing Secret, image pull, unschedulable, unbound claim) says why."""
    stuck = ob.pod_wait(pods)
    if stuck:
        sb.condition("Degraded", True, stuck["reason"], f"the {step} pod is not running: {stuck['message']}")


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


def decide(model: Model, previous_status: dict | None, obs: ob.Observed, settings: Settings, gpu_memory: str | None = None,
           now: dt.datetime | None = None) -> Decision:
    d = Decision(now=now) if now else Decision()
    sb = StatusBuilder(previous_status, model.metadata.generation)
    foreign = ob.foreign_children(obs, model.metadata.uid)
    if foreign:  # decide as if they were missing, but never create, replace or delete them
        obs = dataclasses.replace(obs, **{attr: None for attr in foreign})
        d.blocked = {tuple(desc.split(" ", 2)[:2]) for desc in foreign.values()}
    phase = _decide(model, obs, settings, sb, d, gpu_memory)
    if foreign:
        message = "; ".join(sorted(foreign.values()))
        sb.condition("Degraded", True, "NameConflict", f"{message} already exists: modelyard changes only objects this "
                     "Model controls; delete or rename it")
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


def _uris(model: Model) -> list[tuple[str, str | None]]:
    return [("spec.source.uri", model.spec.source.uri)] + [(f"spec.adapters[{i}].uri", a.uri) for i, a in enumerate(model.spec.adapters)]


def _local_uris(model: Model) -> list[str]:
    """Fields holding a file:// URI, which only local mode can read."""
    return [field for field, uri in _uris(model) if (uri or "").startswith("file://")]


def _credential_uris(model: Model) -> list[str]:
    """Fields whose URI carries a credential: a Model stored before the CRD refused them (CEL
    rules ratchet) must not have it copied into a Job."""
    return [field for field, uri in _uris(model) if uri and (has_userinfo(uri) or "?" in uri)]


def _decide(model, obs, settings, sb, d, gpu_memory) -> str:
    secret = _credential_uris(model)
    if secret:
        return _fail(sb, "Downloaded", "InvalidSpec", f"{secret[0]} carries credentials (userinfo or a query string): put "
                     "them in a Secret (secretRef), or the whole URI with uriFrom.secretKeyRef; nothing was started")
    local = _local_uris(model)
    if local:
        return _fail(sb, "Downloaded", "InvalidSource", f"{local[0]}: file:// URIs only work in local mode (`modelyard up`); "
                     "in a cluster use pvc://, s3://, hf:// or http(s)://")
    pvc = build_cache_pvc(model, settings)
    if pvc is not None and obs.pvc is None and ("PersistentVolumeClaim", pvc["metadata"]["name"]) not in d.blocked:
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
