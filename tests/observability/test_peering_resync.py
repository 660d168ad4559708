"""The resync loop honours kopf peering: a replica paused in favour of a higher-priority peer runs
no reconcile pass from its (now stale) cache, and runs them again once it is alone."""
from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request

import pytest

from tests.integration.play import model
from tests.k8s.helper import K8s
from tests.observability.prom import ROOT, free_port
from tests.runtime.accelerate_helpers import MODELYARD

CHART_CRDS = ROOT / "charts" / "modelyard" / "crds"
PEERING = "resync"


@pytest.fixture(scope="module")
def k8s_crds():
    return [CHART_CRDS / "models.modelyard.io.yaml", CHART_CRDS / "kopf-peerings.yaml"]


def passes(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r"^modelyard_operator_reconcile_duration_seconds_count (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def replica(kubeconfig, priority: int, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MODELYARD_RESYNC_SECONDS": "1", "MODELYARD_PEERING_CHECK_SECONDS": "0.5"}
    return subprocess.Popen([MODELYARD, "operator", "--metrics-port", str(port), "--peering", PEERING, "--priority", str(priority)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def grows(port: int, seconds: float) -> float:
    before = passes(port)
    time.sleep(seconds)  # a window of resync ticks (one a second when active)
    return passes(port) - before


def test_a_paused_replica_runs_no_resync(k8s_server, tmp_path):
    emu, kubeconfig = k8s_server
    k8s = K8s(emu, kubeconfig)
    k8s.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}})
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rs"}})
    low_port, high_port = free_port(), free_port()
    low = replica(kubeconfig, 1, low_port, tmp_path / "low.log")
    procs = [low]
    try:
        k8s.create(model("cached", "rs"))
        k8s.wait_for(lambda: k8s.get("Job", "rs", "cached-download"), 60, message="the lone replica at work")
        active = grows(low_port, 3)
        high = replica(kubeconfig, 2, high_port, tmp_path / "high.log")
        procs.append(high)
        k8s.wait_for(lambda: "Pausing operations" in (tmp_path / "low.log").read_text(), 60, message="the low replica pausing")
        time.sleep(1)  # its resync loop sees the peering object within 0.5 s
        paused = grows(low_port, 3)
        high.terminate()
        high.wait(timeout=20)
        k8s.wait_for(lambda: "Resuming operations" in (tmp_path / "low.log").read_text(), 60, message="the low replica resuming")
        time.sleep(1)
        resumed = grows(low_port, 3)
        print(f"\nresync passes of the low replica in 3 s: alone {active:.0f}, paused {paused:.0f}, resumed {resumed:.0f}")
        assert active >= 2 and paused == 0 and resumed >= 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
