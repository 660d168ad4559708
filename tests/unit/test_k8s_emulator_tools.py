"""kubectl (standalone emulator, subprocess) and a real kopf operator against the emulator."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import kopf
import kubernetes
import pytest
import yaml

from tests.k8s.operator_thread import run_operator
from tests.unit.k8s_testdata import MODEL_CRD, WIDGET_CRD, configmap

REPO = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"
MANIFESTS = """\
apiVersion: modelyard.io/v1alpha1
kind: Model
metadata: {name: llama}
spec:
  source: {uri: "hf://org/llama"}
  gpus: 2
---
apiVersion: batch/v1
kind: Job
metadata:
  name: llama-download
  labels: {app.kubernetes.io/component: download}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox}]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: llama-convert
  labels: {app.kubernetes.io/component: convert}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox}]
"""


@pytest.fixture(scope="module")
def k8s_crds():
    return [MODEL_CRD, WIDGET_CRD]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"emulator exited: {proc.stdout.read() if proc.stdout else ''}"
        try:
            urllib.request.urlopen(url + "/version", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the standalone emulator did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standalone")
    crd = tmp / "models.yaml"
    crd.write_text(yaml.safe_dump(MODEL_CRD))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.k8s", "--port", str(port), "--kubeconfig", str(tmp / "kubeconfig"),
         "--crd", str(crd)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_http(f"http://127.0.0.1:{port}", proc)
        yield tmp
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def kubectl(tmp: pathlib.Path, *args: str, ok: bool = True) -> str:
    done = subprocess.run([str(KUBECTL), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "KUBECONFIG": str(tmp / "kubeconfig")})
    if ok:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout + done.stderr


def test_kubectl_against_the_standalone_emulator(standalone):
    assert "kube-system" in kubectl(standalone, "get", "ns")
    (standalone / "all.yaml").write_text(MANIFESTS)
    out = kubectl(standalone, "apply", "--validate=false", "-f", str(standalone / "all.yaml"))
    assert "model.modelyard.io/llama created" in out and "job.batch/llama-download created" in out
    models = kubectl(standalone, "get", "models").splitlines()
    assert models[0].split() == ["NAME", "PHASE", "GPUS", "AGE"] and models[1].split()[:3] == ["llama", "<none>", "2"]
    jobs = kubectl(standalone, "get", "jobs", "-l", "app.kubernetes.io/component=download", "-o", "name")
    assert jobs.split() == ["job.batch/llama-download"]
    out = kubectl(standalone, "apply", "--validate=false", "-f", str(standalone / "all.yaml"))
    assert "model.modelyard.io/llama unchanged" in out
    crds = standalone / "crds"
    crds.mkdir()
    (crds / "widgets.yaml").write_text(yaml.safe_dump(WIDGET_CRD))
    kubectl(standalone, "apply", "--validate=false", "-f", str(crds))
    (standalone / "w.yaml").write_text(yaml.safe_dump(widget("w", "default")))
    assert "widget.emulator.test/w created" in kubectl(standalone, "apply", "--validate=false", "-f",
                                                        str(standalone / "w.yaml"))
    assert kubectl(standalone, "get", "widgets", "-o", "name").split() == ["widget.emulator.test/w"]
    kubectl(standalone, "run", "p", "--image=busybox")
    server = yaml.safe_load((standalone / "kubeconfig").read_text())["clusters"][0]["cluster"]["server"]
    req = urllib.request.Request(f"{server}/emulator/logs/default/p", data=b"hello from p\n", method="PUT")
    urllib.request.urlopen(req, timeout=5).close()
    assert kubectl(standalone, "logs", "p") == "hello from p\n"
    bad = MANIFESTS.split("---")[0].replace("gpus: 2", "gpus: 2\n  precision: int3")
    (standalone / "bad.yaml").write_text(bad)
    out = kubectl(standalone, "apply", "--validate=false", "-f", str(standalone / "bad.yaml"), ok=False)
    assert 'spec.precision: Unsupported value: "int3"' in out


# --- a real kopf operator -------------------------------------------------------------------

widgets = kopf.OperatorRegistry()  # own registries: nothing leaks into kopf's default one
configmaps = kopf.OperatorRegistry()


@kopf.on.login(registry=widgets)
@kopf.on.login(registry=configmaps)
def login(**kwargs):
    return kopf.login_via_client(**kwargs)


@kopf.on.create("emulator.test", "v1", "widgets", registry=widgets)
def make_child(name, namespace, body, memo, **_):
    child = configmap(f"{name}-child", namespace)
    kopf.adopt(child, owner=body)
    api = kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    kubernetes.client.CoreV1Api(api).create_namespaced_config_map(namespace, child)
    kopf.info(body, reason="ChildCreated", message=f"created ConfigMap {name}-child")  # a POSTed Event
    return {"child": child["metadata"]["name"]}


@kopf.on.delete("emulator.test", "v1", "widgets", registry=widgets)
def on_widget_delete(**_):
    pass  # its presence makes kopf put (and later remove) its finalizer


@kopf.on.create("", "v1", "configmaps", labels={"watched": "yes"}, registry=configmaps)
def mark_seen(patch, **_):
    patch.metadata.annotations["seen"] = "yes"


def widget(name: str, ns: str) -> dict:
    return {"apiVersion": "emulator.test/v1", "kind": "Widget", "metadata": {"name": name, "namespace": ns},
            "spec": {"size": 1}}


def test_kopf_operator_end_to_end(k8s, kubeconfig, namespace):
    with run_operator(kubeconfig, modules=[], registry=widgets):
        k8s.create(widget("w1", namespace))
        done = k8s.wait_for(lambda: (k8s.get("Widget", namespace, "w1") or {}).get("status", {}).get("make_child"),
                            message="kopf to store the handler result in status")
        assert done == {"child": "w1-child"}
        child = k8s.get("ConfigMap", namespace, "w1-child")
        assert child["metadata"]["ownerReferences"][0]["name"] == "w1"
        w = k8s.get("Widget", namespace, "w1")
        assert "kopf.zalando.org/KopfFinalizerMarker" in w["metadata"]["finalizers"]
        k8s.wait_for(lambda: [e for e in k8s.list("Event", namespace)
                              if e["involvedObject"]["name"] == "w1" and e["reason"] == "ChildCreated"],
                     message="kopf to post an Event about the widget")
        k8s.delete("Widget", namespace, "w1")
        k8s.wait_gone("Widget", namespace, "w1")
        k8s.wait_gone("ConfigMap", namespace, "w1-child")


def test_operator_can_be_restarted(k8s, kubeconfig, namespace):
    seen = lambda n: ((k8s.get("ConfigMap", namespace, n) or {}).get("metadata", {})  # noqa: E731
                      .get("annotations") or {}).get("seen")
    with run_operator(kubeconfig, modules=[], registry=configmaps):
        k8s.create(configmap("first", namespace, {"watched": "yes"}))
        k8s.wait_for(lambda: seen("first"), message="the first ConfigMap to be handled")
    k8s.create(configmap("second", namespace, {"watched": "yes"}))
    with run_operator(kubeconfig, modules=[], registry=configmaps):
        k8s.wait_for(lambda: seen("second"), message="the restarted operator to handle the second ConfigMap")


def test_fault_mode_picks_faults_at_its_rate_and_spares_watches():
    from tests.k8s.faults import Faults

    faults = Faults(rate=0.1, seed=5)
    picked = [faults.pick("GET", "/api/v1/namespaces/a/pods", {}) for _ in range(2000)]
    assert 150 < sum(p is not None for p in picked) < 250
    assert "409" not in picked  # a read is never answered with a conflict
    assert all(faults.pick("GET", "/api/v1/pods", {"watch": "true"}) is None for _ in range(200))
    writes = Faults(rate=1.0, seed=1)
    assert {writes.pick("PATCH", "/apis/x/v1/namespaces/a/models/m", {}) for _ in range(100)} == {"500", "409", "timeout"}
