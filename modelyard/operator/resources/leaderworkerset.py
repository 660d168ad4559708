"""A replica larger than one node: LeaderWorkerSet `<name>` and the Service selecting its leaders. Pure.

One group per replica, ``size`` = nodes. Every pod runs the same ``modelyard serve ... --nodes N``;
the LWS controller gives each pod ``LWS_LEADER_ADDRESS``, ``LWS_WORKER_INDEX`` and
``LWS_GROUP_SIZE``, from which the leader (index 0) runs vLLM's OpenAI server as node rank 0 and the
workers run ``--headless`` with their index as node rank (runtime/engines/vllm_group.py).

- ``restartPolicy: RecreateGroupOnPodRestart``: a vLLM pipeline cannot take back a node that left
  it, so one pod restarting recreates the whole group.
- ``startupPolicy: LeaderCreated``: the workers start with the leader (the leader's engine waits
  for them; ``LeaderReady`` would deadlock).
- ``subdomainPolicy: UniquePerReplica``: the headless Service the LWS controller creates for pod DNS
  is then ``<name>-<group>``; with ``Shared`` it would be ``<name>`` and collide with the Model's
  own ClusterIP Service ``<name>`` (the endpoint contract).
- Probes: the leader has the single-pod probes (/health covers the workers: it answers 503 when
  one is gone); a worker's readiness is ``/health`` (its vLLM process alive and the leader ready),
  its liveness ``/live`` (its own process).
"""
from __future__ import annotations

from modelyard.api import Model
from modelyard.operator.resources.common import SPEC_HASH, Settings, digest, gpus_per_node, metadata, selector
from modelyard.operator.resources.server import serve_args, server_pod_spec

LWS_API = "leaderworkerset.x-k8s.io/v1"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
MASTER_PORT = 29501  # vLLM's default --master-port, on the leader
INSTALL_HINT = ("install the LeaderWorkerSet controller and its CRD (kubernetes-sigs/lws): "
                "kubectl apply --server-side -f https://github.com/kubernetes-sigs/lws/releases/download/"
                "VERSION/manifests.yaml, or helm install lws oci://registry.k8s.io/lws/charts/lws "
                "--namespace lws-system --create-namespace")


def group_layout(model: Model, plan: dict, settings: Settings) -> tuple[int, int]:
    """(nodes, GPUs per node) of one replica, from the plan, else the spec and settings."""
    spec = model.spec
    per_node_max = gpus_per_node(model, settings)
    nodes = int(plan.get("nodes") or spec.nodes or -(-spec.gpus // per_node_max) or 1)
    return nodes, spec.gpus // nodes if spec.gpus else 0


def is_multinode(model: Model, plan: dict, settings: Settings) -> bool:
    return group_layout(model, plan, settings)[0] > 1


def group_serve_args(model: Model, plan: dict, model_dir: str, nodes: int) -> list[str]:
    args = serve_args(model, plan, model_dir)
    extra = ["--nodes", str(nodes), "--master-port", str(MASTER_PORT)]
    if model.spec.gpus:
        extra += ["--pipeline-parallel-size", str(plan.get("pipelineParallelSize") or nodes)]
    cut = args.index("--") if "--" in args else len(args)
    return args[:cut] + extra + args[cut:]


def _worker_probes() -> dict:
    def get(path: str) -> dict:
        return {"httpGet": {"path": path, "port": "http"}}
    return {
        "startupProbe": {**get("/live"), "periodSeconds": 10, "failureThreshold": 360, "timeoutSeconds": 5},
        "readinessProbe": {**get("/health"), "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 5},
        "livenessProbe": {**get("/live"), "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 10},
    }


def build_leaderworkerset(model: Model, settings: Settings, plan: dict, model_dir: str) -> dict:
    spec = model.spec
    nodes, per_node = group_layout(model, plan, settings)
    args = group_serve_args(model, plan, model_dir, nodes)
    leader = server_pod_spec(model, settings, plan, model_dir, gpus=per_node, args=args)
    leader["containers"][0]["ports"].append({"name": "dist", "containerPort": MASTER_PORT, "protocol": "TCP"})
    worker = server_pod_spec(model, settings, plan, model_dir, gpus=per_node, args=args, probes=_worker_probes())
    template_hash = digest({"leader": leader, "worker": worker, "size": nodes})
    meta = metadata(model, model.name, "server", template_hash)
    pod_meta = {"labels": meta["labels"], "annotations": {SPEC_HASH: template_hash}}
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "startupPolicy": "LeaderCreated",
            "networkConfig": {"subdomainPolicy": "UniquePerReplica"},
            "rolloutStrategy": {"type": "RollingUpdate",
                                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0}},
            "leaderWorkerTemplate": {
                "size": nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"metadata": pod_meta, "spec": leader},
                "workerTemplate": {"metadata": pod_meta, "spec": worker},
            },
        },
    }


def build_leader_service(model: Model) -> dict:
    """Service `<name>`: the OpenAI endpoint on the leaders only (workers serve no API)."""
    port = model.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector(model, "server"), WORKER_INDEX_LABEL: "0"},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def group_ready(lws: dict | None, replicas: int) -> tuple[int, bool]:
    """(ready groups, whether the current template is rolled out), from the LWS status."""
    if not lws:
        return 0, False
    status = lws.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    return ready, ready >= replicas and updated >= replicas


def layout_text(nodes: int, per_node: int, plan: dict) -> str:
    """status.layout: e.g. ``2 × 8 GPUs, TP 8 × PP 2``."""
    where = f"{nodes} × {per_node} GPUs" if per_node else f"{nodes} × CPU"
    tp, pp = plan.get("tensorParallelSize") or 1, plan.get("pipelineParallelSize") or 1
    return f"{where}, TP {tp} × PP {pp}"
