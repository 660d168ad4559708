"""What `replicaCount: 2` does with the chart's kopf peering (docs/observability.md, "High
availability"): two `modelyard operator --peering NAME` processes of equal priority see each
other's keep-alives in the ClusterKopfPeering and both pause, so no Model is handled twice — and
none is handled at all while both run; when one exits cleanly the other resumes. The chart
therefore gives each replica `--priority auto` (from POD_NAME): one active, one standby."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.integration.play import model
from tests.k8s.helper import K8s
from tests.observability.prom import ROOT, free_port
from tests.runtime.accelerate_helpers import MODELYARD

CHART_CRDS = ROOT / "charts" / "modelyard" / "crds"
PEERING = "modelyard"


@pytest.fixture(scope="module")
def k8s_crds():
    return [CHART_CRDS / "models.modelyard.io.yaml", CHART_CRDS / "kopf-peerings.yaml"]


@pytest.fixture(scope="module")
def two_replicas(k8s_server, tmp_path_factory):
    emu, kubeconfig = k8s_server
    k8s = K8s(emu, kubeconfig)
    k8s.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}})
    work = tmp_path_factory.mktemp("replicas")
    procs, logs = [], []
    for i in range(2):
        logs.append(work / f"operator-{i}.log")
        cmd = [MODELYARD, "operator", "--metrics-port", str(free_port()),
               "--liveness", f"http://127.0.0.1:{free_port()}/healthz", "--peering", PEERING]
        procs.append(subprocess.Popen(cmd, stdout=logs[-1].open("w"), stderr=subprocess.STDOUT,
                                      env={**os.environ, "KUBECONFIG": str(kubeconfig)}))
    try:
        yield k8s, procs, logs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_equal_replicas_both_pause_and_handle_nothing(two_replicas):
    k8s, procs, logs = two_replicas
    status = k8s.wait_for(lambda: len((k8s.get("ClusterKopfPeering", None, PEERING) or {}).get("status") or {}) == 2
                          and k8s.get("ClusterKopfPeering", None, PEERING)["status"], 60,
                          message="keep-alives of both replicas")
    assert [p["priority"] for p in status.values()] == [0, 0]
    # kopf's words for it; one of them also logs "Pausing all operators, including self".
    k8s.wait_for(lambda: all("conflicting operators with the same priority" in log.read_text() for log in logs), 30,
                 message="both replicas seeing an equal-priority peer")
    assert any("Pausing all operators" in log.read_text() for log in logs)
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ha"}})
    k8s.create(model("paused", "ha"))
    deadline = time.monotonic() + 4  # a running operator creates the download Job in well under 1 s
    while time.monotonic() < deadline:
        assert k8s.get("Job", "ha", "paused-download") is None, "a paused replica reconciled a Model"
        assert all(p.poll() is None for p in procs)
        time.sleep(0.2)
    assert not ((k8s.get("Model", "ha", "paused") or {}).get("status") or {}).get("phase")

    # One replica goes away (pod deleted, or a Recreate rollout): on a clean exit kopf removes its
    # keep-alive, the other resumes and handles the Model it ignored.
    procs[1].terminate()
    procs[1].wait(timeout=20)
    k8s.wait_for(lambda: k8s.get("Job", "ha", "paused-download"), 30, message="the remaining replica resuming")
    assert "Resuming operations" in logs[0].read_text()

