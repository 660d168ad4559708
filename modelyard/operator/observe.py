"""Reading what the children say: Job state, pod termination messages, progress lines. Pure."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from modelyard.operator.resources import SPEC_HASH


@dataclass
class Observed:
    """The Model's children as last read from the API."""

    pvc: dict | None = None
    download_job: dict | None = None
    download_pods: list[dict] = field(default_factory=list)
    download_log: str | None = None
    convert_job: dict | None = None
    convert_pods: list[dict] = field(default_factory=list)
    convert_log: str | None = None
    deployment: dict | None = None
    service: dict | None = None
    adapters_configmap: dict | None = None
    # adapter name -> serving pods that report it loaded (None: not probed)
    adapter_pods: dict[str, int] | None = None
    # the serving Deployment's pods (crash reasons)
    server_pods: list[dict] = field(default_factory=list)
    # a replica over several nodes: its LeaderWorkerSet, and whether the cluster has that CRD (None: not asked)
    lws: dict | None = None
    lws_installed: bool | None = None
    # converted folders on this Model's (shared) cache claim that other Models finished: output -> Model
    converted_elsewhere: dict[str, str] = field(default_factory=dict)
    # source folders on this Model's shared claim that other Models are downloading now: folder -> Model
    downloading_elsewhere: dict[str, str] = field(default_factory=dict)


def spec_hash(obj: dict | None) -> str | None:
    if not obj:
        return None
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH)


def job_state(job: dict | None) -> str:
    """missing | running | succeeded | failed, from the Job's status like kubectl reads it."""
    if not job:
        return "missing"
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    if status.get("succeeded"):
        return "succeeded"
    return "running"


def job_failure(job: dict | None) -> dict | None:
    """The Job controller's own reason when it failed the Job (e.g. its deadline passed)."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True" and cond.get("reason") == "DeadlineExceeded":
            limit = ((job or {}).get("spec") or {}).get("activeDeadlineSeconds")
            return {"reason": "DeadlineExceeded", "message": f"the step ran longer than its deadline of {limit} s "
                    "(its weights at the floor throughput): a stalled transfer or a slow volume"}
    return None


def owned_pods(job: dict | None, pods: list[dict]) -> list[dict]:
    """Pods of this Job (not of an earlier Job with the same name), newest first."""
    if not job:
        return []
    uid = (job.get("metadata") or {}).get("uid")
    mine = [p for p in pods if any(r.get("uid") == uid for r in (p.get("metadata") or {}).get("ownerReferences") or [])]
    return sorted(mine, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "", reverse=True)


def termination_message(pods: list[dict], container: str) -> dict | None:
    """The JSON a step wrote to /dev/termination-log, from the newest pod that has one."""
    for pod in pods:
        statuses = ((pod.get("status") or {}).get("containerStatuses") or []) + ((pod.get("status") or {}).get("initContainerStatuses") or [])
        for cs in statuses:
            if cs.get("name") != container:
                continue
            for key in ("state", "lastState"):
                term = (cs.get(key) or {}).get("terminated") or {}
                if term.get("message"):
                    try:
                        return json.loads(term["message"])
                    except ValueError:
                        return {"error": {"reason": "StepFailed", "message": term["message"][-500:]}}
                if term and term.get("exitCode"):
                    return {"error": {"reason": term.get("reason") or "StepFailed", "message": f"exit code {term['exitCode']}"}}
    return None


def failed_init(pods: list[dict]) -> dict | None:
    """An init container (adapter download) that failed, with its message."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("exitCode"):
                msg = termination_message([pod], cs["name"]) or {}
                err = msg.get("error") or {"reason": "AdapterDownloadFailed", "message": f"exit code {term['exitCode']}"}
                return {"container": cs["name"], **err}
    return None


def last_progress(log: str | None) -> dict | None:
    """The last structured progress line a step printed."""
    for line in reversed((log or "").splitlines()):
        line = line.strip()
        if '"progress"' not in line or not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if data.get("event") == "progress":
            return data
    return None


def waiting_for(log: str | None) -> dict | None:
    """The step's last word, when it is that it waits for another pod (a shared cache's lease)."""
    for line in reversed((log or "").splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if data.get("event") == "waiting":
            return data
        if data.get("event") == "progress":
            return None
    return None


def progress_status(step: str, data: dict | None) -> dict | None:
    if not data:
        return None
    done, total = int(data.get("bytesDone") or 0), int(data.get("bytesTotal") or 0)
    out = {"step": step, "bytesDone": done, "bytesTotal": total}
    if total:
        out["percent"] = min(100, int(done * 100 / total))
    if data.get("etaSeconds") is not None:
        out["etaSeconds"] = int(data["etaSeconds"])
    return out


def deployment_ready(dep: dict | None, replicas: int) -> tuple[int, bool]:
    """(ready replicas, whether the rollout of the current template is complete)."""
    if not dep:
        return 0, False
    status = dep.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = (status.get("observedGeneration") or 0) >= ((dep.get("metadata") or {}).get("generation") or 0)
    return ready, current and ready >= replicas and updated >= replicas


def server_failure(pods: list[dict]) -> dict | None:
    """Why serving pods keep failing, from the termination message `modelyard serve` wrote
    (e.g. InvalidAdapter), once a container has restarted or is backing off."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
            if not (cs.get("restartCount") or waiting == "CrashLoopBackOff"):
                continue
            term = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated") or {}
            if not term.get("exitCode"):
                continue
            try:
                err = json.loads(term.get("message") or "").get("error") or {}
            except (ValueError, AttributeError):
                err = {}
            restarts = cs.get("restartCount") or 0
            return {"reason": err.get("reason") or "ServerCrashed",
                    "message": f"{err.get('message') or term.get('message') or 'exit code ' + str(term['exitCode'])}"
                               f" (pod {pod['metadata']['name']}, {restarts} restarts)"}
    return None


# Waiting reasons of a container that will not start without someone acting (not ContainerCreating).
STUCK_WAITING = {"CreateContainerConfigError", "CreateContainerError", "ImagePullBackOff", "ErrImagePull",
                 "InvalidImageName", "ErrImageNeverPull", "RunContainerError", "PreCreateHookError"}


def pod_wait(pods: list[dict]) -> dict | None:
    """Why a step's pod does not run, in the kubelet's or scheduler's own words:
    {"reason": "ImagePullBackOff", "message": "...(pod x, container y)"}, or None."""
    for pod in pods:
        status = pod.get("status") or {}
        name = (pod.get("metadata") or {}).get("name")
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING:
                text = waiting.get("message") or "the container cannot start"
                return {"reason": waiting["reason"], "message": f"{waiting['reason']}: {text} (pod {name}, container {cs.get('name')})"}
        if status.get("phase") not in (None, "Pending"):
            continue
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
                text = cond.get("message") or "no node fits the pod"
                return {"reason": cond["reason"], "message": f"{cond['reason']}: {text} (pod {name})"}
    return None


CHILD_FIELDS = {"pvc": "PersistentVolumeClaim", "download_job": "Job", "convert_job": "Job", "deployment": "Deployment",
                "service": "Service", "adapters_configmap": "ConfigMap", "lws": "LeaderWorkerSet"}


def controlled_by(obj: dict, uid: str | None) -> bool:
    """Whether ``obj``'s controller owner is the object with this uid."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)


def foreign_children(obs: Observed, uid: str | None) -> dict[str, str]:
    """Children with our names that this Model does not control: field -> "Kind name (owner)"."""
    if not uid:
        return {}
    out = {}
    for attr, kind in CHILD_FIELDS.items():
        obj = getattr(obs, attr)
        if obj and obj.get("metadata") and not controlled_by(obj, uid):
            refs = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")]
            owner = f"controlled by {refs[0].get('kind')} {refs[0].get('name')}" if refs else "not created by this Model"
            out[attr] = f"{kind} {obj['metadata']['name']} ({owner})"
    return out


# What modelyard sets on a child and puts back when someone edits it (replicas are scaled apart).
DRIFT_PATHS = {"Deployment": (("spec", "template"), ("spec", "selector")), "Service": (("spec", "selector"), ("spec", "ports")),
               "ConfigMap": (("data",),), "PersistentVolumeClaim": ()}


def _covers(have, want) -> bool:
    """``have`` holds everything ``want`` sets (the server may add defaults around it)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_covers(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(_covers(h, w) for h, w in zip(have, want))
    return have == want or (want is not None and str(have) == str(want) and not isinstance(want, bool))


def drifted(desired: dict, existing: dict) -> bool:
    """Someone edited the fields modelyard owns (same spec-hash annotation, different content)."""
    for path in DRIFT_PATHS.get(desired["kind"], ()):
        want, have = desired, existing
        for key in path:
            want, have = (want or {}).get(key), (have or {}).get(key)
        exact = path[-1] == "selector"  # an extra selector key changes what it selects
        if want is not None and not (have == want if exact else _covers(have, want)):
            return True
    return False
