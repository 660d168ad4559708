"""The operator and the onnxruntime engine (kopf against the Kubernetes API emulator): a ready ONNX
folder goes straight to a serve Deployment (no convert Job); a safetensors checkpoint with engine
onnxruntime gets a convert Job that exports it, and the Deployment serves the export."""
from __future__ import annotations

import pytest

from tests.integration.play import condition, finish_job, model
from tests.k8s.operator_thread import run_operator

ORT_PLAN = {"engine": "onnxruntime", "precision": "float32", "tensorParallelSize": 1, "perGpuBytes": 0,
            "maxModelLen": 2048, "fits": True, "reason": "fits on CPU with onnxruntime"}


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def cpu_model(name: str, ns: str, **spec) -> dict:
    body = model(name, ns, gpus=0, **spec)
    del body["spec"]["gpuMemory"]
    return body


def server_container(k8s, ns, name):
    dep = k8s.wait_for(lambda: k8s.get("Deployment", ns, name), message="Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_a_ready_onnx_folder_is_served_without_a_convert_job(k8s, namespace, operator):
    k8s.create(cpu_model("onnxdir", namespace, format="onnx", precision="auto"))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "onnxdir-download"))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--plan-engine") + 1] == "onnxruntime"
    # an onnxruntime-genai export has no config.json: no plan, only the detected format
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": None, "format": "onnx"})
    container = server_container(k8s, namespace, "onnxdir")
    assert container["args"][:3] == ["serve", "--engine", "onnxruntime"]
    assert container["image"].endswith("serve-onnxruntime:0.1.0")
    assert container["args"][container["args"].index("--model") + 1].endswith(
        k8s.get("Job", namespace, "onnxdir-download")["spec"]["template"]["spec"]["containers"][0]["args"][4])
    assert k8s.get("Job", namespace, "onnxdir-convert") is None
    assert condition(k8s.get("Model", namespace, "onnxdir"), "Converted")["reason"] == "NotNeeded"


def test_a_safetensors_checkpoint_for_onnxruntime_is_exported_by_a_convert_job(k8s, namespace, operator):
    k8s.create(cpu_model("ortst", namespace, engine="onnxruntime", precision="int4"))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "ortst-download"))
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "format": "safetensors",
                                      "plan": {**ORT_PLAN, "precision": "int4"}})
    conv = k8s.wait_for(lambda: k8s.get("Job", namespace, "ortst-convert"), message="convert Job")
    args = conv["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--engine") + 1] == "onnxruntime"
    assert args[args.index("--precision") + 1] == "int4" and args[args.index("--device") + 1] == "cpu"
    assert "ONNX" in condition(k8s.get("Model", namespace, "ortst"), "Converted")["message"]
    output = args[args.index("--output") + 1]
    finish_job(k8s, conv, "convert", {"output": output, "files": 8, "bytes": 10})
    container = server_container(k8s, namespace, "ortst")
    assert container["args"][:3] == ["serve", "--engine", "onnxruntime"]
    assert container["args"][container["args"].index("--model") + 1] == output
    assert condition(k8s.get("Model", namespace, "ortst"), "Converted")["reason"] == "Converted"
