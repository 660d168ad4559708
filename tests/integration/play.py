"""The test plays the controllers the emulator lacks: the Job controller and the Deployment controller."""
from __future__ import annotations

import json
import uuid

MODEL = {"apiVersion": "modelyard.io/v1alpha1", "kind": "Model"}
PLAN = {"engine": "vllm", "precision": "bfloat16", "tensorParallelSize": 1, "perGpuBytes": 3 * 2**30,
        "maxModelLen": 4096, "fits": True, "reason": "fits: 3.0 GiB of 24 GiB per GPU"}


def model(name: str, ns: str, **spec) -> dict:
    body = {"source": {"uri": "hf://org/tiny"}, "precision": "bfloat16", "gpus": 1, "gpuMemory": "24GiB"}
    body.update(spec)
    return {**MODEL, "metadata": {"name": name, "namespace": ns}, "spec": body}


def pod_for(k8s, job: dict, container: str, *, phase: str, terminated: dict | None = None, log: str | None = None) -> dict:
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    state = {"terminated": terminated} if terminated else {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    pod = k8s.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{name}-{uuid.uuid4().hex[:5]}", "namespace": ns,
            # what the Job controller gives its pods: the template's labels plus the job-name ones
            "labels": {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": name, "job-name": name},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": True}],
        },
        "spec": {"containers": [{"name": container, "image": "x"}]},
    })
    k8s.patch_status("Pod", ns, pod["metadata"]["name"], {"phase": phase, "containerStatuses": [{"name": container, "state": state}]})
    if log is not None:
        k8s.set_pod_log(ns, pod["metadata"]["name"], log)
    return pod


def finish_job(k8s, job: dict, container: str, message: dict, *, ok: bool = True) -> None:
    """A pod that wrote its termination message, then the Job's condition (what the Job controller does)."""
    code = 0 if ok else (3 if (message.get("error") or {}).get("reason") == "DoesNotFit" else 1)
    pod_for(k8s, job, container, phase="Succeeded" if ok else "Failed",
            terminated={"exitCode": code, "message": json.dumps(message), "reason": "Completed" if ok else "Error"})
    cond = {"type": "Complete" if ok else "Failed", "status": "True"}
    k8s.patch_status("Job", job["metadata"]["namespace"], job["metadata"]["name"],
                     {"conditions": [cond], "succeeded" if ok else "failed": 1})


def roll_out(k8s, ns: str, name: str) -> None:
    """What the Deployment controller and kubelet do once pods are ready."""
    dep = k8s.get("Deployment", ns, name)
    n = dep["spec"]["replicas"]
    k8s.patch_status("Deployment", ns, name, {"observedGeneration": dep["metadata"].get("generation", 1),
                                             "replicas": n, "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n})


def condition(obj: dict | None, type_: str) -> dict:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return {}
