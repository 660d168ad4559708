"""The chart's `--priority auto` under kopf peering: replicas get distinct priorities (from
POD_NAME), the highest reconciles, the other stands by and takes over when it goes. Its own
module, a fresh emulator, named to run before test_peering.py: after that module, a second
emulator in the same pytest process leaves one operator's ClusterKopfPeering watch stream
unprocessed (seen, not diagnosed; the emulator instances seem to share some state)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.play import model
from tests.k8s.helper import K8s
from tests.observability.prom import free_port
from tests.observability.test_peering import CHART_CRDS
from tests.runtime.accelerate_helpers import MODELYARD


@pytest.fixture(scope="module")
def k8s_crds():
    return [CHART_CRDS / "models.modelyard.io.yaml", CHART_CRDS / "kopf-peerings.yaml"]



def test_auto_priorities_give_one_active_replica_and_a_standby(k8s_server, tmp_path):
    """The chart's `--priority auto`: replicas differ (by POD_NAME), the highest works, the other takes over."""
    from modelyard.commands.operator import peering_priority

    emu, kubeconfig = k8s_server
    k8s = K8s(emu, kubeconfig)
    k8s.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "standby"}})
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ab"}})
    pods = sorted(["modelyard-6d9f-a", "modelyard-6d9f-b"], key=lambda n: peering_priority_for(n, peering_priority))
    procs, logs = {}, {}
    for pod in pods:  # pods[1] has the higher priority
        logs[pod] = tmp_path / f"{pod}.log"
        cmd = [MODELYARD, "operator", "--metrics-port", str(free_port()), "--peering", "standby", "--priority", "auto"]
        procs[pod] = subprocess.Popen(cmd, stdout=logs[pod].open("w"), stderr=subprocess.STDOUT,
                                      env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": pod})
    try:
        k8s.wait_for(lambda: len((k8s.get("ClusterKopfPeering", None, "standby") or {}).get("status") or {}) == 2, 60,
                     message="keep-alives of both replicas")
        prios = sorted(p["priority"] for p in k8s.get("ClusterKopfPeering", None, "standby")["status"].values())
        assert prios[0] != prios[1]
        k8s.create(model("active", "ab"))
        k8s.wait_for(lambda: k8s.get("Job", "ab", "active-download"), 30, message="the active replica reconciling")
        k8s.wait_for(lambda: "Pausing operations" in logs[pods[0]].read_text(), 30, message="the standby pausing")
        procs[pods[1]].terminate()
        procs[pods[1]].wait(timeout=20)
        k8s.create(model("after", "ab"))
        k8s.wait_for(lambda: k8s.get("Job", "ab", "after-download"), 60, message="the standby taking over")
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def peering_priority_for(pod: str, fn) -> int:
    old = os.environ.get("POD_NAME")
    os.environ["POD_NAME"] = pod
    try:
        return fn("auto")
    finally:
        if old is None:
            os.environ.pop("POD_NAME")
        else:
            os.environ["POD_NAME"] = old
