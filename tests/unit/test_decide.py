"""One reconcile pass as a pure function: observed children in, actions and status out."""
from __future__ import annotations

import copy
import json

from modelyard.api import parse_model
from modelyard.operator.decide import decide
from modelyard.operator.observe import Observed
from modelyard.operator.resources import Settings, base_dir, build_deployment, build_download_job, build_service, build_cache_pvc

DOC = {
    "apiVersion": "modelyard.io/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "tiny", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {"source": {"uri": "hf://org/tiny"}, "precision": "bfloat16", "gpus": 1, "gpuMemory": "24GiB"},
}
S = Settings()
PLAN = {"engine": "vllm", "precision": "bfloat16", "perGpuBytes": 2 * 2**30, "fits": True, "reason": "fits with 20 GiB to spare", "maxModelLen": 4096}


def model(**spec):
    doc = copy.deepcopy(DOC)
    doc["spec"].update(spec)
    return parse_model(doc)


def done_job(job, message: dict, failed=False, uid="job-uid"):
    job = copy.deepcopy(job)
    job["metadata"]["uid"] = uid
    job["status"] = {"conditions": [{"type": "Failed" if failed else "Complete", "status": "True"}]}
    pod = {"metadata": {"name": "p", "ownerReferences": [{"uid": uid}], "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"containerStatuses": [{"name": "download", "state": {"terminated": {"exitCode": 3 if failed else 0, "message": json.dumps(message)}}}]}}
    return job, [pod]


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_new_model_creates_pvc_and_download_job():
    d = decide(model(), None, Observed(), S)
    assert [a.key for a in d.actions] == ["create PersistentVolumeClaim tiny-cache", "create Job tiny-download"]
    assert d.status["phase"] == "Downloading"
    assert cond(d.status, "Downloaded")["status"] == "False"
    assert d.retry_after


def test_running_download_shows_progress():
    m = model()
    job = build_download_job(m, S, "24GiB")
    job["metadata"]["uid"] = "j"
    log = 'starting\n{"event":"progress","step":"download","bytesDone":50,"bytesTotal":200,"etaSeconds":3}\n'
    d = decide(m, None, Observed(pvc={}, download_job=job, download_log=log), S, "24GiB")
    assert d.actions == []
    assert d.status["progress"] == {"step": "download", "bytesDone": 50, "bytesTotal": 200, "percent": 25, "etaSeconds": 3}


def test_finished_download_deploys_with_the_plan():
    m = model()
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN, "files": 3, "bytes": 100})
    d = decide(m, None, Observed(pvc={}, download_job=job, download_pods=pods), S, "24GiB")
    assert [a.key for a in d.actions] == ["create Service tiny", "create Deployment tiny"]
    assert d.status["phase"] == "Deploying"
    assert d.status["source"]["resolvedRevision"] == "abc"
    assert d.status["plan"]["perGpu"] == "2.0GiB"
    assert d.status["endpoint"] == "http://tiny.ns.svc:8000/v1"
    assert cond(d.status, "Planned")["reason"] == "Fits"
    assert cond(d.status, "Converted")["reason"] == "NotNeeded"


def test_ready_when_deployment_rolled_out_and_lasttransition_stable():
    m = model()
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN})
    dep = build_deployment(m, S, PLAN, base_dir(m))
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}
    obs = Observed(pvc={}, download_job=job, download_pods=pods, deployment=dep, service=build_service(m))
    d = decide(m, None, obs, S, "24GiB")
    assert d.actions == [] and d.status["phase"] == "Ready"
    assert any(e["reason"] == "Ready" for e in d.events)
    again = decide(m, d.status, obs, S, "24GiB")
    assert again.status == d.status and again.events == []  # nothing changed: no patch, no Event


def test_does_not_fit_stops_before_weights():
    m = model()
    plan = {**PLAN, "fits": False, "reason": "needs 40.1 GiB per GPU, 24 GiB available: use gpus: 2 or precision: int4"}
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"error": {"reason": "DoesNotFit", "message": "x"}, "plan": plan}, failed=True)
    d = decide(m, None, Observed(pvc={}, download_job=job, download_pods=pods), S, "24GiB")
    assert d.status["phase"] == "Failed"
    planned = cond(d.status, "Planned")
    assert planned["status"] == "False" and planned["reason"] == "DoesNotFit" and "gpus: 2" in planned["message"]
    assert cond(d.status, "Degraded")["status"] == "True"
    assert not any(a.obj["kind"] == "Deployment" for a in d.actions)
    assert any(e["type"] == "Warning" and e["reason"] == "DoesNotFit" for e in d.events)


def test_failed_download_reason_from_the_pod():
    m = model()
    err = {"error": {"reason": "Unauthorized", "message": "401 from the Hub: check the token in the Model's secretRef (key HF_TOKEN)"}}
    job, pods = done_job(build_download_job(m, S, "24GiB"), err, failed=True)
    d = decide(m, None, Observed(pvc={}, download_job=job, download_pods=pods), S, "24GiB")
    assert d.status["phase"] == "Failed"
    assert cond(d.status, "Downloaded")["reason"] == "Unauthorized"
    assert "secretRef" in cond(d.status, "Degraded")["message"]


def test_spec_change_replaces_the_stale_job_and_scaling_only_scales():
    m = model()
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN})
    changed = model(precision="int4")
    d = decide(changed, None, Observed(pvc={}, download_job=job, download_pods=pods), S, "24GiB")
    assert [a.key for a in d.actions] == ["delete Job tiny-download"]
    dep = build_deployment(m, S, PLAN, base_dir(m))
    scaled = model(replicas=3)
    d = decide(scaled, None, Observed(pvc={}, download_job=job, download_pods=pods, deployment=dep, service=build_service(m)), S, "24GiB")
    kinds = [(a.verb, a.obj["kind"]) for a in d.actions]
    assert kinds == [("scale", "Deployment")] and d.actions[0].replicas == 3


def test_file_source_is_refused_in_cluster():
    d = decide(model(source={"uri": "file:///models/x"}), None, Observed(), S)
    assert d.status["phase"] == "Failed" and d.actions == []
    assert "local mode" in cond(d.status, "Degraded")["message"]


def test_shared_claim_creates_no_pvc():
    d = decide(model(cache={"claimName": "shared"}), None, Observed(), S)
    assert [a.obj["kind"] for a in d.actions] == ["Job"]
    assert build_cache_pvc(model(cache={"claimName": "shared"}), S) is None


def test_result_survives_pod_garbage_collection():
    """Once read, the plan and the failure reason stay even when the Job's pods are gone."""
    m = model()
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN, "format": "safetensors"})
    first = decide(m, None, Observed(pvc={}, download_job=job, download_pods=pods), S, "24GiB")
    later = decide(m, first.status, Observed(pvc={}, download_job=job, download_pods=[]), S, "24GiB")
    assert later.status["plan"] == first.status["plan"] and later.status["source"] == first.status["source"]
    assert [a.key for a in later.actions] == [a.key for a in first.actions]
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"error": {"reason": "DiskFull", "message": "needs 16 GiB, 2 GiB free"}}, failed=True)
    first = decide(m, None, Observed(pvc={}, download_job=job, download_pods=pods), S, "24GiB")
    later = decide(m, first.status, Observed(pvc={}, download_job=job, download_pods=[]), S, "24GiB")
    assert cond(later.status, "Degraded")["reason"] == "DiskFull" and later.events == []


def test_second_model_on_a_shared_cache_reuses_the_conversion():
    m = model(format="pytorch", cache={"claimName": "models"})
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN})
    first = decide(m, None, Observed(download_job=job, download_pods=pods), S, "24GiB")
    (convert,) = [a for a in first.actions if a.obj["metadata"]["name"] == "tiny-convert"]
    output = first.status["convert"]["output"]
    reused = decide(m, None, Observed(download_job=job, download_pods=pods, converted_elsewhere={output: "other"}), S, "24GiB")
    assert not any(a.obj["kind"] == "Job" for a in reused.actions)
    assert cond(reused.status, "Converted")["reason"] == "Reused" and "Model other" in cond(reused.status, "Converted")["message"]
    dep = next(a.obj for a in reused.actions if a.obj["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == output


def test_crash_looping_server_says_why_in_status():
    m = model()
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN})
    dep = build_deployment(m, S, PLAN, base_dir(m))
    msg = json.dumps({"error": {"reason": "InvalidAdapter", "message": "adapter 'sql' was trained on hidden_size=4096, the model has 2048"}})
    crashing = {"metadata": {"name": "tiny-abc"}, "status": {"containerStatuses": [{
        "name": "server", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "message": msg}}}]}}
    obs = Observed(pvc={}, download_job=job, download_pods=pods, deployment=dep, service=build_service(m), server_pods=[crashing])
    d = decide(m, None, obs, S, "24GiB")
    assert d.status["phase"] == "Failed"
    degraded = cond(d.status, "Degraded")
    assert degraded["reason"] == "InvalidAdapter" and "hidden_size" in degraded["message"] and "3 restarts" in degraded["message"]
    assert any(e["type"] == "Warning" and e["reason"] == "InvalidAdapter" for e in d.events)
    healthy = {"metadata": {"name": "tiny-abc"}, "status": {"containerStatuses": [{"name": "server", "restartCount": 0, "state": {"running": {}}}]}}
    assert decide(m, None, Observed(pvc={}, download_job=job, download_pods=pods, deployment=dep, service=build_service(m),
                                    server_pods=[healthy]), S, "24GiB").status["phase"] == "Deploying"
