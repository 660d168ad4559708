"""The chart's `--priority auto` under kopf peering: replicas get distinct priorities (from
POD_NAME), the highest reconciles, the other stands by and takes over when it goes.

Against a standalone emulator process (`python -m tests.k8s`), driven with kubectl: in-process
emulators started one after another in one pytest process were seen to leave an operator's
ClusterKopfPeering watch stream unprocessed (not diagnosed), which made this test flaky."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from modelyard.commands.operator import peering_priority
from tests.integration.play import model
from tests.observability.prom import free_port
from tests.observability.test_peering import CHART_CRDS
from tests.runtime.accelerate_helpers import MODELYARD

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


def wait_for(fn, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def priority_of(pod: str) -> int:
    old = os.environ.get("POD_NAME")
    os.environ["POD_NAME"] = pod
    try:
        return peering_priority("auto")
    finally:
        os.environ.pop("POD_NAME") if old is None else os.environ.__setitem__("POD_NAME", old)


def test_auto_priorities_give_one_active_replica_and_a_standby(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    emulator = subprocess.Popen([sys.executable, "-m", "tests.k8s", "--port", str(free_port()), "--kubeconfig", str(kubeconfig),
                                 "--crd", str(CHART_CRDS / "models.modelyard.io.yaml"), "--crd", str(CHART_CRDS / "kopf-peerings.yaml")],
                                cwd=ROOT, stdout=(tmp_path / "emulator.log").open("w"), stderr=subprocess.STDOUT)
    procs, logs = {}, {}

    def kubectl(*args, stdin=None):
        return subprocess.run([KUBECTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=30)

    def apply(obj):
        proc = kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(obj))
        assert proc.returncode == 0, proc.stderr

    def get(*args):
        proc = kubectl("get", *args, "-o", "json")
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    try:
        wait_for(lambda: kubeconfig.exists() and kubectl("get", "ns").returncode == 0, 30, "the emulator")
        apply({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "standby"}})
        apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ab"}})
        low, high = sorted(["modelyard-6d9f-a", "modelyard-6d9f-b"], key=priority_of)
        for pod in (low, high):
            logs[pod] = tmp_path / f"{pod}.log"
            cmd = [MODELYARD, "operator", "--metrics-port", str(free_port()), "--peering", "standby", "--priority", "auto"]
            procs[pod] = subprocess.Popen(cmd, stdout=logs[pod].open("w"), stderr=subprocess.STDOUT, env={**env, "POD_NAME": pod})
        status = wait_for(lambda: len(((get("clusterkopfpeering", "standby") or {}).get("status") or {})) == 2
                          and get("clusterkopfpeering", "standby")["status"], 60, "keep-alives of both replicas")
        assert len({p["priority"] for p in status.values()}) == 2
        apply(model("active", "ab"))
        wait_for(lambda: get("job", "-n", "ab", "active-download"), 30, "the active replica reconciling")
        wait_for(lambda: "Pausing operations" in logs[low].read_text(), 30, "the standby pausing")
        assert "create Job active-download" in logs[high].read_text()
        assert "create Job" not in logs[low].read_text()
        procs[high].terminate()
        procs[high].wait(timeout=20)
        apply(model("after", "ab"))
        wait_for(lambda: get("job", "-n", "ab", "after-download"), 60, "the standby taking over")
        assert "create Job after-download" in logs[low].read_text()
    finally:
        for proc in [*procs.values(), emulator]:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
