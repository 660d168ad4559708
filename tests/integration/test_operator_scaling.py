"""The real operator with spec.scaling against the emulator: the Deployment starts at
max(replicas, minReplicas), the operator leaves the count to the autoscaler (a scale through
deployments/scale is not undone), and the Model is Ready at zero (ScaledToZero), through a cold
start (ColdStart, status.coldStart) and back."""
from __future__ import annotations

import kubernetes
import pytest

from tests.integration.play import PLAN, condition, finish_job, model
from tests.k8s.operator_thread import run_operator

SCALING = {"minReplicas": 0, "maxReplicas": 3, "targetInFlight": 4, "scaleDownDelaySeconds": 30}


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def status(k8s, ns, name):
    return (k8s.get("Model", ns, name) or {}).get("status") or {}


def ready_reason(k8s, ns, name):
    return condition({"status": status(k8s, ns, name)}, "Ready").get("reason")


def test_autoscaled_model_at_zero_cold_start_and_no_fighting(k8s, namespace, operator, kubeconfig):
    k8s.create(model("lazy", namespace, replicas=0, scaling=SCALING))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "lazy-download"), message="download Job")
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    dep = k8s.wait_for(lambda: k8s.get("Deployment", namespace, "lazy"), message="Deployment")
    assert dep["spec"]["replicas"] == 0
    k8s.wait_for(lambda: (status(k8s, namespace, "lazy").get("phase"), ready_reason(k8s, namespace, "lazy"))
                 == ("Ready", "ScaledToZero"), message=f"phase Ready, reason ScaledToZero: {status(k8s, namespace, 'lazy')}")
    assert condition({"status": status(k8s, namespace, "lazy")}, "Ready")["status"] == "True"

    # the gateway scales up through the scale subresource; the operator must not undo it
    apps = kubernetes.client.AppsV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
    apps.patch_namespaced_deployment_scale("lazy", namespace, {"spec": {"replicas": 2}})
    k8s.wait_for(lambda: ready_reason(k8s, namespace, "lazy") == "ColdStart", message="Ready/ColdStart")
    assert status(k8s, namespace, "lazy")["coldStart"]["startedAt"]
    assert status(k8s, namespace, "lazy")["phase"] == "Ready"

    k8s.patch_status("Deployment", namespace, "lazy", {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2,
                                                      "updatedReplicas": 2, "availableReplicas": 2})
    k8s.wait_for(lambda: "seconds" in (status(k8s, namespace, "lazy").get("coldStart") or {}), message="cold start time")
    assert ready_reason(k8s, namespace, "lazy") == "Ready" and status(k8s, namespace, "lazy")["replicas"] == 2
    assert k8s.get("Deployment", namespace, "lazy")["spec"]["replicas"] == 2  # not reset to spec.replicas (0)
