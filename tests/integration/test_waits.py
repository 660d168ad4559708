"""Every wait has a reason: a pod that cannot start shows the kubelet's or scheduler's words in
Degraded and a Warning Event, for every step; the pod's own event triggers the pass."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.play import PLAN, condition, finish_job, model, roll_out
from tests.k8s.operator_thread import run_operator


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def stuck_pod(k8s, ns: str, owner: dict, labels: dict, container: str, status: dict) -> dict:
    pod = k8s.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{owner['metadata']['name']}-{uuid.uuid4().hex[:5]}", "namespace": ns, "labels": labels,
                     "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                                          "uid": owner["metadata"]["uid"], "controller": True}]},
        "spec": {"containers": [{"name": container, "image": "x"}]},
    })
    k8s.patch_status("Pod", ns, pod["metadata"]["name"], status)
    return pod


def degraded(k8s, ns, name):
    return condition(k8s.get("Model", ns, name), "Degraded")


def warned(k8s, ns, name, reason):
    return any(e["type"] == "Warning" and e["reason"] == reason and e["involvedObject"]["name"] == name
               for e in k8s.list("Event", ns))


def test_download_pod_missing_secret(k8s, namespace, operator):
    k8s.create(model("nosecret", namespace, source={"uri": "hf://org/tiny", "secretRef": {"name": "hf-token"}}))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "nosecret-download"))
    labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": job["metadata"]["name"]}
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}}
    pod = stuck_pod(k8s, namespace, job, labels, "download",
                    {"phase": "Pending", "containerStatuses": [{"name": "download", "state": waiting}]})
    k8s.wait_for(lambda: degraded(k8s, namespace, "nosecret").get("reason") == "CreateContainerConfigError",
                 message="Degraded with the kubelet's reason")
    msg = degraded(k8s, namespace, "nosecret")["message"]
    assert 'secret "hf-token" not found' in msg and pod["metadata"]["name"] in msg
    assert k8s.get("Model", namespace, "nosecret")["status"]["phase"] == "Downloading"
    k8s.wait_for(lambda: warned(k8s, namespace, "nosecret", "CreateContainerConfigError"), message="a Warning Event")
    # the Secret appears, the pod runs: the wait is over
    k8s.patch_status("Pod", namespace, pod["metadata"]["name"],
                     {"phase": "Running", "containerStatuses": [{"name": "download", "state": {"running": {}}}]})
    k8s.wait_for(lambda: degraded(k8s, namespace, "nosecret").get("status") == "False", message="Degraded cleared")


@pytest.mark.parametrize("status,reason,words", [
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                           "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]},
     "Unschedulable", "Insufficient nvidia.com/gpu"),
    ({"phase": "Pending", "containerStatuses": [{"name": "server", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/x/serve:9"'}}}]},
     "ImagePullBackOff", "Back-off pulling image"),
])
def test_serving_pod_that_cannot_start(k8s, namespace, operator, status, reason, words):
    k8s.create(model("srv", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "srv-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    dep = k8s.wait_for(lambda: k8s.get("Deployment", namespace, "srv"), message="Deployment")
    stuck_pod(k8s, namespace, dep, dep["spec"]["template"]["metadata"]["labels"], "server", status)
    k8s.wait_for(lambda: degraded(k8s, namespace, "srv").get("reason") == reason, message=f"Degraded {reason}")
    assert words in degraded(k8s, namespace, "srv")["message"]
    assert k8s.get("Model", namespace, "srv")["status"]["phase"] == "Deploying"
    k8s.wait_for(lambda: warned(k8s, namespace, "srv", reason), message="a Warning Event")


def test_convert_pod_unbound_claim(k8s, namespace, operator):
    k8s.create(model("conv", namespace, format="pytorch"))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "conv-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    conv = k8s.wait_for(lambda: k8s.get("Job", namespace, "conv-convert"))
    labels = {**conv["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": "conv-convert"}
    stuck_pod(k8s, namespace, conv, labels, "convert", {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]})
    k8s.wait_for(lambda: degraded(k8s, namespace, "conv").get("reason") == "Unschedulable", message="Degraded Unschedulable")
    assert "unbound immediate PersistentVolumeClaims" in degraded(k8s, namespace, "conv")["message"]
    assert k8s.get("Model", namespace, "conv")["status"]["phase"] == "Converting"


def test_second_model_on_a_shared_cache_waits_for_the_first_download(k8s, namespace, operator):
    shared = {"cache": {"claimName": "models"}}
    k8s.create(model("one", namespace, **shared))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "one-download"))
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "one"), "Downloaded").get("reason") == "Downloading")
    k8s.create(model("two", namespace, **shared))
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "two"), "Downloaded").get("reason") == "WaitingForSharedDownload",
                 message="WaitingForSharedDownload")
    assert "Model one" in condition(k8s.get("Model", namespace, "two"), "Downloaded")["message"]
    assert k8s.get("Job", namespace, "two-download") is None  # one download per cache key
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELYARD_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    job2 = k8s.wait_for(lambda: k8s.get("Job", namespace, "two-download"), timeout=15, message="the second Job, after the first")
    assert job2["spec"]["template"]["spec"]["containers"][0]["args"][4] == job["spec"]["template"]["spec"]["containers"][0]["args"][4]
    finish_job(k8s, job2, "download", {"resolvedRevision": "r1", "plan": PLAN})  # "already downloaded" in seconds
    for name in ("one", "two"):
        k8s.wait_for(lambda: k8s.get("Deployment", namespace, name), message=f"Deployment {name}")
        roll_out(k8s, namespace, name)
    k8s.wait_for(lambda: all(k8s.get("Model", namespace, n)["status"]["phase"] == "Ready" for n in ("one", "two")),
                 message="both Ready")


def test_a_step_waiting_on_the_lease_says_so(k8s, namespace, operator):
    from tests.integration.play import pod_for

    k8s.create(model("late", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "late-download"))
    line = '{"event":"waiting","step":"download","reason":"WaitingForSharedDownload","message":"pod-a is downloading the same bytes"}\n'
    pod_for(k8s, job, "download", phase="Running", log=line)
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "late"), "Downloaded").get("reason") == "WaitingForSharedDownload",
                 message="the lease wait in status")


def test_a_convert_waiting_on_the_lease_says_so(k8s, namespace, operator):
    from tests.integration.play import pod_for

    k8s.create(model("cw", namespace, format="pytorch"))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "cw-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    conv = k8s.wait_for(lambda: k8s.get("Job", namespace, "cw-convert"))
    line = '{"event":"waiting","step":"convert","reason":"WaitingForSharedConvert","message":"pod-x is converting into /cache/converted/k"}\n'
    pod_for(k8s, conv, "convert", phase="Running", log=line)
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "cw"), "Converted").get("reason") == "WaitingForSharedConvert",
                 message="the convert lease wait in status")
    assert "pod-x" in condition(k8s.get("Model", namespace, "cw"), "Converted")["message"]
