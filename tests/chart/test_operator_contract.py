"""The chart and the operator agree: the PodMonitor and NetworkPolicies select the pods the
operator's real builders (modelyard.operator.resources) create, on the ports they name, and the
images in the chart's config reach those pods."""
from __future__ import annotations

import yaml

from modelyard.api import parse_model
from modelyard.operator.resources import Settings, build_convert_job, build_deployment, build_download_job
from tests.chart.helm import CHART, one, render

ALL_ON = [CHART / "ci" / "all-integrations-values.yaml"]
MODEL = parse_model({
    "apiVersion": "modelyard.io/v1alpha1", "kind": "Model",
    "metadata": {"name": "llama", "namespace": "ml", "uid": "uid-1", "generation": 1},
    "spec": {"source": {"uri": "hf://org/llama"}, "precision": "bfloat16", "gpus": 1, "gpuMemory": "nvidia-l4-24gb"},
})
PLAN = {"engine": "vllm", "precision": "int4", "tensorParallelSize": 1, "maxModelLen": 4096,
        "perGpuBytes": 6 * 2**30, "fits": True}


def _settings() -> Settings:
    cm = one(render(ALL_ON), "ConfigMap", "-config")
    return Settings.from_dict(yaml.safe_load(cm["data"]["config.yaml"]))


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]


def test_podmonitor_and_server_policy_select_serving_pods_on_their_http_port():
    objs = render(ALL_ON)
    pod = _pod(build_deployment(MODEL, _settings(), PLAN, "/cache/converted/x"))
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    pm = one(objs, "PodMonitor")
    assert _selects(pm["spec"]["selector"], pod["metadata"]["labels"])
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
    server = one(objs, "NetworkPolicy", "-server")
    assert _selects(server["spec"]["podSelector"], pod["metadata"]["labels"])
    assert server["spec"]["ingress"][0]["ports"][0]["port"] in ports


def test_convert_policy_selects_convert_pods_only():
    objs = render(ALL_ON)
    settings = _settings()
    convert = _pod(build_convert_job(MODEL, settings, {"format": "safetensors", "precision": "int4",
                                                        "engine": "vllm", "mergeAdapters": []}, "/cache/converted/x"))
    download = _pod(build_download_job(MODEL, settings, "nvidia-l4-24gb"))
    serving = _pod(build_deployment(MODEL, settings, PLAN, "/cache/converted/x"))
    policy = one(objs, "NetworkPolicy", "-convert")["spec"]["podSelector"]
    assert _selects(policy, convert["metadata"]["labels"])
    assert not _selects(policy, download["metadata"]["labels"]), "downloads need the network"
    assert not _selects(policy, serving["metadata"]["labels"])


def test_images_from_the_chart_config_reach_the_pods():
    settings = _settings()
    serving = _pod(build_deployment(MODEL, settings, PLAN, "/cache/converted/x"))
    assert serving["spec"]["containers"][0]["image"] == "ghcr.io/modelyard/serve-vllm:0.1.0"
    download = _pod(build_download_job(MODEL, settings, "nvidia-l4-24gb"))
    assert {c["image"] for c in download["spec"]["containers"]} == {"ghcr.io/modelyard/download:0.1.0"}
