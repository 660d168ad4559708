"""modelyard changes or deletes only what the Model controls (owner uid checked); a same-named
object it did not create gets Degraded NameConflict, naming it, and is left exactly as it was."""
from __future__ import annotations

import pytest

from tests.integration.play import PLAN, condition, finish_job, model
from tests.k8s.operator_thread import run_operator


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def foreign_deployment(ns: str, name: str) -> dict:
    labels = {"app": "someone-else"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}


def test_a_foreign_deployment_is_never_replaced(k8s, namespace, operator):
    theirs = k8s.create(foreign_deployment(namespace, "clash"))
    k8s.create(model("clash", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "clash-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "clash"), "Degraded").get("reason") == "NameConflict",
                 message="Degraded NameConflict")
    assert "Deployment clash" in condition(k8s.get("Model", namespace, "clash"), "Degraded")["message"]
    now = k8s.get("Deployment", namespace, "clash")
    assert now["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"] and now["spec"] == theirs["spec"]
    assert k8s.get("Model", namespace, "clash")["status"]["phase"] != "Ready"
    k8s.wait_for(lambda: any(e["reason"] == "NameConflict" and e["type"] == "Warning" for e in k8s.list("Event", namespace)),
                 message="a Warning Event")
    # the user removes theirs: ours is created, owned by the Model
    k8s.delete("Deployment", namespace, "clash")
    uid = k8s.get("Model", namespace, "clash")["metadata"]["uid"]
    k8s.wait_for(lambda: (d := k8s.get("Deployment", namespace, "clash")) and d["metadata"]["ownerReferences"][0]["uid"] == uid,
                 timeout=30, message="our Deployment after the foreign one is gone")
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "clash"), "Degraded").get("status") == "False", timeout=20,
                 message="NameConflict cleared")


def test_a_job_owned_by_another_model_is_never_deleted(k8s, namespace, operator):
    other = k8s.create(model("other", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "other-download"))
    # a Job named like ours, but controlled by another object (another Model's uid)
    k8s.create({**job, "metadata": {"name": "mine-download", "namespace": namespace, "labels": job["metadata"]["labels"],
                                    "ownerReferences": job["metadata"]["ownerReferences"]}, "status": {}})
    before = k8s.get("Job", namespace, "mine-download")
    k8s.create(model("mine", namespace, precision="float16"))  # a different Job spec: ours would replace it
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "mine"), "Degraded").get("reason") == "NameConflict")
    msg = condition(k8s.get("Model", namespace, "mine"), "Degraded")["message"]
    assert "Job mine-download" in msg and "Model other" in msg
    after = k8s.get("Job", namespace, "mine-download")
    assert after["metadata"]["uid"] == before["metadata"]["uid"] and after["metadata"]["ownerReferences"][0]["uid"] == other["metadata"]["uid"]


def test_delete_and_replace_act_only_on_the_object_meant(k8s, namespace, kubeconfig):
    """Between the cache and the write, someone replaced our child with theirs: the uid precondition
    (delete) and the controller check (replace) leave theirs alone."""
    from modelyard.operator.kube import Kube

    kube = Kube()
    ours = k8s.create(foreign_deployment(namespace, "raced"))
    k8s.delete("Deployment", namespace, "raced")
    theirs = k8s.create(foreign_deployment(namespace, "raced"))
    kube.delete("Deployment", namespace, "raced", uid=ours["metadata"]["uid"])
    assert k8s.get("Deployment", namespace, "raced")["metadata"]["uid"] == theirs["metadata"]["uid"]
    desired = {**foreign_deployment(namespace, "raced")}
    desired["metadata"] = {**desired["metadata"], "ownerReferences": [{"apiVersion": "modelyard.io/v1alpha1", "kind": "Model",
                                                                        "name": "m", "uid": "model-uid", "controller": True}]}
    desired["spec"] = {**desired["spec"], "replicas": 9}
    kube.replace(desired)
    assert k8s.get("Deployment", namespace, "raced")["spec"]["replicas"] == 2
