"""The real operator (kopf, in its own thread) against the Kubernetes API emulator."""
from __future__ import annotations

import pytest

from tests.integration.play import PLAN, condition, finish_job, model, pod_for, roll_out
from tests.k8s.operator_thread import run_operator

COMPONENT = "app.kubernetes.io/component"


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def phase(k8s, ns, name):
    return ((k8s.get("Model", ns, name) or {}).get("status") or {}).get("phase")


def wait_phase(k8s, ns, name, want, timeout=30):
    k8s.wait_for(lambda: phase(k8s, ns, name) == want, timeout, message=f"phase {want} (now {phase(k8s, ns, name)})")


def events(k8s, ns, name):
    return [e for e in k8s.list("Event", ns) if e["involvedObject"]["name"] == name]


def test_create_to_ready(k8s, namespace, operator):
    created = k8s.create(model("tiny", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "tiny-download"), message="download Job")
    assert job["metadata"]["labels"][COMPONENT] == "download"
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert k8s.get("PersistentVolumeClaim", namespace, "tiny-cache")
    wait_phase(k8s, namespace, "tiny", "Downloading")

    # progress from the running pod's structured log lines
    pod_for(k8s, job, "download", phase="Running",
            log='{"event":"progress","step":"download","bytesDone":300,"bytesTotal":1200,"bytesPerSecond":100,"etaSeconds":9}\n')
    k8s.wait_for(lambda: (k8s.get("Model", namespace, "tiny")["status"].get("progress") or {}).get("percent") == 25,
                 message="download progress in status")

    finish_job(k8s, job, "download", {"resolvedRevision": "0123abc", "plan": PLAN, "files": 4, "bytes": 1200})
    dep = k8s.wait_for(lambda: k8s.get("Deployment", namespace, "tiny"), message="Deployment")
    assert k8s.get("Service", namespace, "tiny")["spec"]["ports"][0]["port"] == 8000
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["serve", "--engine", "vllm"]
    assert k8s.get("Job", namespace, "tiny-convert") is None  # safetensors at bfloat16: nothing to convert
    wait_phase(k8s, namespace, "tiny", "Deploying")

    roll_out(k8s, namespace, "tiny")
    wait_phase(k8s, namespace, "tiny", "Ready")
    status = k8s.get("Model", namespace, "tiny")["status"]
    assert status["endpoint"] == f"http://tiny.{namespace}.svc:8000/v1"
    assert status["source"]["resolvedRevision"] == "0123abc"
    assert status["plan"]["perGpu"] == "3.0GiB"
    assert "progress" not in status
    assert condition({"status": status}, "Ready")["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    k8s.wait_for(lambda: {"Downloading", "Downloaded", "Fits", "Ready"} <= {e["reason"] for e in events(k8s, namespace, "tiny")},
                 message="Events for every transition")


def test_failed_download_reports_the_pods_reason(k8s, namespace, operator):
    k8s.create(model("locked", namespace, source={"uri": "hf://org/private", "secretRef": {"name": "hf-token"}}))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "locked-download"))
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    finish_job(k8s, job, "download", {"error": {"reason": "Unauthorized", "message": "401: check the token in the Model's secretRef (key HF_TOKEN)"}}, ok=False)
    wait_phase(k8s, namespace, "locked", "Failed")
    m = k8s.get("Model", namespace, "locked")
    assert condition(m, "Degraded")["reason"] == "Unauthorized"
    assert "secretRef" in condition(m, "Degraded")["message"]
    k8s.wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "Unauthorized" for e in events(k8s, namespace, "locked")),
                 message="a Warning Event with the reason")
    assert k8s.get("Deployment", namespace, "locked") is None


def test_does_not_fit_stops_before_serving(k8s, namespace, operator):
    k8s.create(model("huge", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "huge-download"))
    plan = {**PLAN, "fits": False, "reason": "needs 140.2 GiB per GPU but 24 GiB is available; use gpus: 8 or precision: int4"}
    finish_job(k8s, job, "download", {"error": {"reason": "DoesNotFit", "message": plan["reason"]}, "plan": plan}, ok=False)
    wait_phase(k8s, namespace, "huge", "Failed")
    m = k8s.get("Model", namespace, "huge")
    assert condition(m, "Planned") == {**condition(m, "Planned"), "status": "False", "reason": "DoesNotFit"}
    assert "precision: int4" in condition(m, "Planned")["message"]
    assert m["status"]["plan"]["fits"] is False
    assert k8s.get("Deployment", namespace, "huge") is None


def test_convert_then_serve_the_converted_weights(k8s, namespace, operator):
    k8s.create(model("pt", namespace, format="pytorch"))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "pt-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    conv = k8s.wait_for(lambda: k8s.get("Job", namespace, "pt-convert"), message="convert Job")
    assert conv["metadata"]["labels"][COMPONENT] == "convert"
    wait_phase(k8s, namespace, "pt", "Converting")
    output = conv["spec"]["template"]["spec"]["containers"][0]["args"][4]
    finish_job(k8s, conv, "convert", {"output": output, "files": 2, "bytes": 10})
    dep = k8s.wait_for(lambda: k8s.get("Deployment", namespace, "pt"))
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == output
    # The Deployment is created before the same pass patches the status: wait for the patch.
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "pt"), "Converted").get("reason") == "Converted",
                 message="Converted=True (reason Converted) in the Model's status")


def test_spec_changes_replan_or_just_scale(k8s, namespace, operator):
    k8s.create(model("chg", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "chg-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "chg"))
    roll_out(k8s, namespace, "chg")
    wait_phase(k8s, namespace, "chg", "Ready")
    template = k8s.get("Deployment", namespace, "chg")["spec"]["template"]

    # replicas only: scaled, nothing re-downloaded, same pod template
    k8s.patch("Model", namespace, "chg", {"spec": {"replicas": 3}})
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "chg")["spec"]["replicas"] == 3, message="scaled")
    assert k8s.get("Job", namespace, "chg-download")["metadata"]["uid"] == job["metadata"]["uid"]
    assert k8s.get("Deployment", namespace, "chg")["spec"]["template"] == template

    # a new precision: re-plan (new download Job), quantize (convert Job), roll the Deployment
    k8s.patch("Model", namespace, "chg", {"spec": {"precision": "int4"}})
    new_job = k8s.wait_for(lambda: (j := k8s.get("Job", namespace, "chg-download")) and j["metadata"]["uid"] != job["metadata"]["uid"] and j,
                           message="a new download Job")
    finish_job(k8s, new_job, "download", {"resolvedRevision": "r1", "plan": {**PLAN, "precision": "int4"}})
    conv = k8s.wait_for(lambda: k8s.get("Job", namespace, "chg-convert"), message="convert Job for int4")
    assert "int4" in conv["spec"]["template"]["spec"]["containers"][0]["args"]
    finish_job(k8s, conv, "convert", {"output": "x"})
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "chg")["spec"]["template"] != template, message="rolled Deployment")
    args = k8s.get("Deployment", namespace, "chg")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--precision") + 1] == "int4"
    k8s.wait_for(lambda: k8s.get("Model", namespace, "chg")["status"].get("observedGeneration") == 3,
                 message="observedGeneration 3 (the status patch follows the rolled Deployment)")


def test_delete_cleans_up_through_owner_references(k8s, namespace, operator):
    k8s.create(model("gone", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "gone-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "gone"))
    k8s.delete("Model", namespace, "gone")
    for kind, name in [("Job", "gone-download"), ("Deployment", "gone"), ("Service", "gone"), ("PersistentVolumeClaim", "gone-cache")]:
        k8s.wait_gone(kind, namespace, name)


def test_second_model_reuses_the_conversion_on_a_shared_cache(k8s, namespace, operator):
    shared = {"format": "pytorch", "cache": {"claimName": "models"}}
    k8s.create(model("first", namespace, **shared))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "first-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    conv = k8s.wait_for(lambda: k8s.get("Job", namespace, "first-convert"))
    finish_job(k8s, conv, "convert", {"output": "x"})
    wait_phase(k8s, namespace, "first", "Deploying")
    assert k8s.get("PersistentVolumeClaim", namespace, "first-cache") is None  # the shared claim is used

    k8s.create(model("second", namespace, **shared))
    job2 = k8s.wait_for(lambda: k8s.get("Job", namespace, "second-download"))
    finish_job(k8s, job2, "download", {"resolvedRevision": "r1", "plan": PLAN})
    dep = k8s.wait_for(lambda: k8s.get("Deployment", namespace, "second"), message="second Deployment")
    assert k8s.get("Job", namespace, "second-convert") is None
    converted = k8s.wait_for(lambda: (c := condition(k8s.get("Model", namespace, "second"), "Converted"))
                             .get("reason") == "Reused" and c, message="Converted: Reused in the second Model's status")
    assert "first" in converted["message"]
    first_args = k8s.get("Deployment", namespace, "first")["spec"]["template"]["spec"]["containers"][0]["args"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == first_args[first_args.index("--model") + 1]
