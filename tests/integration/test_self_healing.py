"""A Ready Model is looked after: deleted or edited children are put back within seconds, and
status never says Ready while the Deployment is gone."""
from __future__ import annotations

import pytest

from tests.integration.play import PLAN, finish_job, model, roll_out
from tests.k8s.operator_thread import run_operator


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def ready_model(k8s, ns, name):
    k8s.create(model(name, ns))
    job = k8s.wait_for(lambda: k8s.get("Job", ns, f"{name}-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    k8s.wait_for(lambda: k8s.get("Deployment", ns, name))
    roll_out(k8s, ns, name)
    k8s.wait_for(lambda: k8s.get("Model", ns, name)["status"]["phase"] == "Ready", message="Ready")


def test_deleted_children_of_a_ready_model_come_back(k8s, namespace, operator):
    ready_model(k8s, namespace, "heal")
    for kind, name in [("Deployment", "heal"), ("Service", "heal"), ("PersistentVolumeClaim", "heal-cache")]:
        old = k8s.get(kind, namespace, name)
        k8s.delete(kind, namespace, name)
        back = k8s.wait_for(lambda: (o := k8s.get(kind, namespace, name)) and o["metadata"]["uid"] != old["metadata"]["uid"] and o,
                            timeout=5, message=f"{kind} {name} recreated")
        assert back["metadata"]["ownerReferences"][0]["name"] == "heal"
        if kind == "Deployment":  # a new Deployment has no ready pods: not Ready until it rolls out
            k8s.wait_for(lambda: k8s.get("Model", namespace, "heal")["status"]["phase"] == "Deploying", timeout=5)
            roll_out(k8s, namespace, "heal")
            k8s.wait_for(lambda: k8s.get("Model", namespace, "heal")["status"]["phase"] == "Ready", timeout=5)


def test_an_edited_deployment_is_put_back(k8s, namespace, operator):
    ready_model(k8s, namespace, "edit")
    image = k8s.get("Deployment", namespace, "edit")["spec"]["template"]["spec"]["containers"][0]["image"]
    k8s.patch("Deployment", namespace, "edit", {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:1"}]}}}})
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "edit")["spec"]["template"]["spec"]["containers"][0]["image"] == image,
                 timeout=5, message="the image put back")
    k8s.patch("Service", namespace, "edit", {"spec": {"selector": {"app": "elsewhere"}}})
    k8s.wait_for(lambda: "app" not in k8s.get("Service", namespace, "edit")["spec"]["selector"], timeout=5,
                 message="the Service selector put back")
