"""What a user does with no cluster: the standalone emulator, `modelyard operator`, and kubectl.

Also the operator restarting mid-flight: nothing duplicated, the pipeline carries on.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.play import PLAN, finish_job, model, roll_out
from tests.k8s.operator_thread import run_operator

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(fn, timeout=20.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standalone")
    kubeconfig = tmp / "kubeconfig"
    emu = subprocess.Popen([sys.executable, "-m", "tests.k8s", "--port", str(free_port()), "--kubeconfig", str(kubeconfig)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    poll(lambda: kubeconfig.exists(), what="the emulator's kubeconfig")
    metrics_port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    op = subprocess.Popen([str(BIN / "modelyard"), "operator", "--metrics-port", str(metrics_port)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield kubeconfig, env, metrics_port, tmp
    finally:
        for proc in (op, emu):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def kubectl(env, *args, check=True) -> str:
    proc = subprocess.run([str(BIN / "kubectl"), *args], env=env, capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def test_kubectl_apply_creates_the_download_job(cluster):
    kubeconfig, env, metrics_port, tmp = cluster
    manifest = tmp / "model.yaml"
    manifest.write_text(json.dumps(model("demo", "default")))
    started = time.monotonic()
    kubectl(env, "apply", "--validate=false", "-f", str(manifest))
    jobs = poll(lambda: json.loads(kubectl(env, "get", "jobs", "-l", "app.kubernetes.io/component=download", "-o", "json"))["items"],
                what="the download Job")
    assert jobs[0]["metadata"]["name"] == "demo-download"
    assert jobs[0]["metadata"]["ownerReferences"][0]["kind"] == "Model"
    phase = poll(lambda: kubectl(env, "get", "model", "demo", "-o", "jsonpath={.status.phase}") or None, what="a phase")
    assert phase == "Downloading"
    assert time.monotonic() - started < 10
    table = kubectl(env, "get", "models")
    assert "PHASE" in table and "Downloading" in table and "VRAM/GPU" in table
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert 'modelyard_operator_models{phase="Downloading"} 1.0' in metrics


def test_kubectl_rejects_an_invalid_model_naming_the_field(cluster):
    _, env, _, tmp = cluster
    bad = tmp / "bad.yaml"
    bad.write_text(json.dumps(model("bad", "default", precision="int3")))
    proc = subprocess.run([str(BIN / "kubectl"), "apply", "--validate=false", "-f", str(bad)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "spec.precision" in proc.stderr


def test_operator_restart_mid_flight_duplicates_nothing(k8s, namespace):
    with run_operator(k8s.kubeconfig):
        k8s.create(model("resume", namespace))
        job = k8s.wait_for(lambda: k8s.get("Job", namespace, "resume-download"), timeout=30)
    # the operator is down while the download finishes
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
    with run_operator(k8s.kubeconfig):
        k8s.wait_for(lambda: k8s.get("Deployment", namespace, "resume"), timeout=30, message="Deployment after restart")
        roll_out(k8s, namespace, "resume")
        k8s.wait_for(lambda: (k8s.get("Model", namespace, "resume")["status"] or {}).get("phase") == "Ready", timeout=30)
    with run_operator(k8s.kubeconfig):  # and once more, with everything done
        time.sleep(1.5)  # give a restarted operator the chance to (wrongly) act; nothing should change
    assert [j["metadata"]["uid"] for j in k8s.list("Job", namespace)] == [job["metadata"]["uid"]]
    assert len(k8s.list("Deployment", namespace)) == 1 and len(k8s.list("Service", namespace)) == 1
    assert len(k8s.list("PersistentVolumeClaim", namespace)) == 1
