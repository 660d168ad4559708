"""The operator against the Kubernetes API emulator for a Model larger than one node: first a
cluster without the LeaderWorkerSet CRD (Degraded, LeaderWorkerSetMissing), then with the real CRD
installed (the emulator validates the LeaderWorkerSet the operator creates against its schema)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.integration.play import condition, finish_job, model
from tests.k8s.fixtures import MODEL_CRD
from tests.k8s.operator_thread import run_operator

LWS_CRD = Path(__file__).parent.parent / "fixtures" / "crds" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
PLAN = {"engine": "vllm", "precision": "bfloat16", "tensorParallelSize": 8, "pipelineParallelSize": 2, "nodes": 2,
        "gpusPerNode": 8, "perGpuBytes": 55 * 2**30, "maxModelLen": 131072, "fits": True,
        "reason": "fits on 16× 80GiB GPU with vllm (TP 8 × PP 2 on 2 nodes × 8 GPUs)"}


@pytest.fixture(scope="module")
def k8s_crds():
    return [MODEL_CRD]  # no LeaderWorkerSet CRD at first


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def test_group_waits_for_the_lws_crd_then_runs_on_it(k8s, namespace, operator):
    k8s.create(model("big", namespace, gpus=16, gpuMemory="80GiB"))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "big-download"), message="download Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--plan-gpus-per-node") + 1] == "8"
    finish_job(k8s, job, "download", {"resolvedRevision": "abc", "plan": PLAN})

    degraded = lambda: condition(k8s.get("Model", namespace, "big"), "Degraded")  # noqa: E731
    k8s.wait_for(lambda: degraded().get("reason") == "LeaderWorkerSetMissing", 30, message="LeaderWorkerSetMissing")
    assert degraded()["status"] == "True" and "helm install lws" in degraded()["message"]
    assert k8s.get("Deployment", namespace, "big") is None

    k8s.create(yaml.safe_load(LWS_CRD.read_text()))
    k8s.patch("Model", namespace, "big", {"metadata": {"labels": {"poke": "1"}}})  # else it looks again within 30 s
    lws = k8s.wait_for(lambda: k8s.get("LeaderWorkerSet", namespace, "big"), 30, message="LeaderWorkerSet big")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    svc = k8s.get("Service", namespace, "big")
    assert svc["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    # the operator creates the group, then writes the Model's status: wait for that write
    k8s.wait_for(lambda: k8s.get("Model", namespace, "big")["status"]["phase"] == "Deploying", 30, message="Deploying")
    status = k8s.get("Model", namespace, "big")["status"]
    assert status["layout"] == "2 × 8 GPUs, TP 8 × PP 2" and status["nodes"] == 2
    assert condition(k8s.get("Model", namespace, "big"), "Degraded")["status"] == "False"

    # what the LWS controller reports once the group's pods are ready
    k8s.patch_status("LeaderWorkerSet", namespace, "big", {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1})
    k8s.wait_for(lambda: k8s.get("Model", namespace, "big")["status"]["phase"] == "Ready", 30, message="Ready")
    assert "1/1 groups of 2 nodes" in condition(k8s.get("Model", namespace, "big"), "Ready")["message"]
