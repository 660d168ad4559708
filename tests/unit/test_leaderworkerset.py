"""The LeaderWorkerSet builder, its Service and the multi-node reconcile step (pure), with the LWS
checked against the real CRD schema and the built-in kinds with kubernetes-validate."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelyard.api import parse_model
from modelyard.operator import observe as ob
from modelyard.operator.decide import decide
from modelyard.operator.resources import Settings, build_download_job
from modelyard.operator.resources.leaderworkerset import (
    build_leader_service,
    build_leaderworkerset,
    group_serve_args,
)

CRD = Path(__file__).parent.parent / "fixtures" / "crds" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
S = Settings()
PLAN = {"engine": "vllm", "precision": "bfloat16", "tensorParallelSize": 8, "pipelineParallelSize": 2,
        "nodes": 2, "gpusPerNode": 8, "perGpuBytes": 55 * 2**30, "maxModelLen": 131072, "fits": True,
        "reason": "fits on 16× 80GiB GPU"}
DOC = {
    "apiVersion": "modelyard.io/v1alpha1", "kind": "Model",
    "metadata": {"name": "big", "namespace": "ml", "uid": "u1", "generation": 1},
    "spec": {"source": {"uri": "hf://meta-llama/Llama-3.1-405B"}, "precision": "bfloat16", "gpus": 16,
             "gpuMemory": "80GiB", "adapters": [{"name": "sql", "uri": "hf://someone/sql-lora"}]},
}


def model(**spec):
    doc = copy.deepcopy(DOC)
    doc["spec"].update(spec)
    return parse_model(doc)


@pytest.fixture(scope="module")
def lws_schema():
    crd = yaml.safe_load(CRD.read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def test_leaderworkerset_reads_like_the_group_it_runs(lws_schema):
    lws = build_leaderworkerset(model(), S, PLAN, "/cache/sources/k")
    jsonschema.validate(lws, lws_schema)
    assert (lws["apiVersion"], lws["kind"], lws["metadata"]["name"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "big")
    assert lws["metadata"]["ownerReferences"][0]["uid"] == "u1"
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["size"] == 2 and t["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"
    assert lws["spec"]["networkConfig"] == {"subdomainPolicy": "UniquePerReplica"}  # no clash with Service big
    leader, worker = t["leaderTemplate"]["spec"]["containers"][0], t["workerTemplate"]["spec"]["containers"][0]
    # the same command in every pod: the rank comes from LWS_WORKER_INDEX, the master from LWS_LEADER_ADDRESS
    assert leader["args"] == worker["args"]
    args = leader["args"]
    assert args[:2] == ["serve", "--engine"] and args[args.index("--nodes") + 1] == "2"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2" and args[args.index("--gpus") + 1] == "16"
    assert args[args.index("--master-port") + 1] == "29501"
    assert "--adapters-file" in args
    for c in (leader, worker):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["nvidia.com/gpu"] == "8"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dist", "containerPort": 29501, "protocol": "TCP"} in leader["ports"]
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health" and leader["livenessProbe"]["httpGet"]["path"] == "/health"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health" and worker["livenessProbe"]["httpGet"]["path"] == "/live"
    shm = next(v for v in t["workerTemplate"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_extra_args_stay_after_the_separator():
    m = model(serving={"args": ["--max-num-seqs", "8"]})
    args = group_serve_args(m, PLAN, "/m", 2)
    assert args[-3:] == ["--", "--max-num-seqs", "8"] and args.index("--nodes") < args.index("--")


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_service_selects_leaders_and_pod_templates_validate(version):
    svc = build_leader_service(model())
    assert svc["metadata"]["name"] == "big"
    assert svc["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    kubernetes_validate.validate(svc, version, strict=True)
    lws = build_leaderworkerset(model(), S, PLAN, "/m")
    for role in ("leaderTemplate", "workerTemplate"):
        tmpl = lws["spec"]["leaderWorkerTemplate"][role]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **tmpl["metadata"]}, "spec": tmpl["spec"]}
        kubernetes_validate.validate(pod, version, strict=True)


def test_cpu_group_asks_for_no_gpus(lws_schema):
    m = model(gpus=0, nodes=2, gpuMemory=None, adapters=[])
    plan = {**PLAN, "tensorParallelSize": 1, "gpusPerNode": 0}
    lws = build_leaderworkerset(m, S, plan, "/m")
    jsonschema.validate(lws, lws_schema)
    c = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(c["resources"]) and "--pipeline-parallel-size" not in c["args"]


def _downloaded(m, plan):
    job = copy.deepcopy(build_download_job(m, S, "80GiB"))
    job["metadata"]["uid"] = "j"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    pod = {"metadata": {"name": "p", "ownerReferences": [{"uid": "j"}], "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"containerStatuses": [{"name": "download", "state": {"terminated": {
               "exitCode": 0, "message": json.dumps({"resolvedRevision": "abc", "plan": plan})}}}]}}
    return ob.Observed(download_job=job, download_pods=[pod], pvc={"kind": "PersistentVolumeClaim"})


def test_download_plans_with_the_node_layout():
    args = build_download_job(model(), S, "80GiB")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--plan-gpus-per-node") + 1] == "8" and "--plan-nodes" not in args
    one = build_download_job(model(gpus=2, adapters=[]), S, "80GiB")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--plan-gpus-per-node" not in one  # a one-node Model's Job is what it was before


def test_without_the_crd_the_model_is_degraded_with_how_to_install():
    m = model()
    obs = _downloaded(m, PLAN)
    obs.lws_installed = False
    d = decide(m, None, obs, S, "80GiB")
    degraded = next(c for c in d.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "LeaderWorkerSetMissing")
    assert "kubernetes-sigs/lws" in degraded["message"] and "helm install lws" in degraded["message"]
    assert not [a for a in d.actions if a.obj["kind"] in ("LeaderWorkerSet", "Deployment")]
    assert any(e["reason"] == "LeaderWorkerSetMissing" and e["type"] == "Warning" for e in d.events)
    assert d.retry_after == 30  # looks again: installing LWS is enough


def test_group_is_created_then_ready_with_layout_in_status():
    m = model()
    obs = _downloaded(m, PLAN)
    obs.lws_installed = True
    d = decide(m, None, obs, S, "80GiB")
    kinds = {(a.verb, a.obj["kind"]) for a in d.actions}
    assert ("create", "LeaderWorkerSet") in kinds and ("create", "Service") in kinds and ("create", "Deployment") not in kinds
    assert d.status["layout"] == "2 × 8 GPUs, TP 8 × PP 2" and d.status["nodes"] == 2 and d.status["phase"] == "Deploying"
    lws = next(a.obj for a in d.actions if a.obj["kind"] == "LeaderWorkerSet")
    obs.lws = {**lws, "status": {"readyReplicas": 1, "updatedReplicas": 1, "replicas": 1}}
    obs.service = next(a.obj for a in d.actions if a.obj["kind"] == "Service")
    obs.adapters_configmap = next(a.obj for a in d.actions if a.obj["kind"] == "ConfigMap")
    obs.adapter_pods = {"sql": 1}
    d2 = decide(m, d.status, obs, S, "80GiB")
    assert d2.actions == [] and d2.status["phase"] == "Ready" and d2.retry_after == 30
    ready = next(c for c in d2.status["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("1/1 groups of 2 nodes (2 × 8 GPUs, TP 8 × PP 2) serving at http://big.ml.svc:8000/v1")


def test_switching_between_one_node_and_a_group_deletes_the_other_workload():
    m = model()
    obs = _downloaded(m, PLAN)
    obs.lws_installed = True
    mine = [{"kind": "Model", "name": "big", "uid": "u1", "controller": True}]  # only what the Model controls is deleted
    obs.deployment = {"kind": "Deployment", "metadata": {"name": "big", "namespace": "ml", "ownerReferences": mine}}
    d = decide(m, None, obs, S, "80GiB")
    assert ("delete", "Deployment") in {(a.verb, a.obj["kind"]) for a in d.actions}
    small = model(gpus=2, adapters=[])
    obs = _downloaded(small, {**PLAN, "nodes": 1, "pipelineParallelSize": 1, "tensorParallelSize": 2})
    obs.lws = {"kind": "LeaderWorkerSet", "metadata": {"name": "big", "namespace": "ml", "ownerReferences": mine}}
    d = decide(small, None, obs, S, "80GiB")
    assert ("delete", "LeaderWorkerSet") in {(a.verb, a.obj["kind"]) for a in d.actions}
    assert d.status["layout"] == "1 × 2 GPUs, TP 2 × PP 1"


def test_node_size_from_spec_then_profile_then_setting():
    from modelyard.operator.resources.common import gpus_per_node
    from modelyard.operator.resources.leaderworkerset import group_layout, is_multinode

    settings = Settings.from_dict({"gpusPerNode": 4, "profiles": {"l4x2": {"gpusPerNode": 2, "memory": "24GiB"}}})
    assert gpus_per_node(model(gpus=8, adapters=[]), settings) == 4
    assert group_layout(model(gpus=8, adapters=[]), {}, settings) == (2, 4)
    assert gpus_per_node(model(gpus=8, gpuMemory="l4x2", adapters=[]), settings) == 2
    assert gpus_per_node(model(gpus=8, gpuMemory="l4x2", gpusPerNode=8, adapters=[]), settings) == 8
    assert not is_multinode(model(gpus=8, adapters=[]), {}, S)  # 8 GPUs fit the default 8-GPU node
