"""Scale from zero in a cluster: the Kubernetes API emulator, a played Deployment controller that
starts real `modelyard serve` processes, and a real `modelyard gateway` watching the namespace.

32 concurrent requests arrive while the Model has no replica: all are held and answered; the
gateway scaled the Deployment through deployments/scale; the second replica (on a slow node) is
still loading when the load ends, and it is not removed until it is ready; after
scaleDownDelaySeconds idle the Deployment goes back to zero."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.gateway.helpers import chat
from tests.gateway.played import PlayedDeployment
from tests.runtime.accelerate_helpers import MODELYARD, free_port, sample, scrape

DELAY_S = 3


def model(ns: str) -> dict:
    return {"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "tiny", "namespace": ns},
            "spec": {"source": {"uri": "hf://org/tiny"}, "engine": "accelerate", "precision": "float32", "replicas": 0,
                     "scaling": {"minReplicas": 0, "maxReplicas": 2, "targetInFlight": 8,
                                 "scaleDownDelaySeconds": DELAY_S}}}


def deployment(ns: str) -> dict:
    labels = {"app.kubernetes.io/instance": "tiny", "app.kubernetes.io/component": "server"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tiny", "namespace": ns, "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "server", "image": "x"}]}}}}


@pytest.fixture
def cluster(k8s, namespace, kubeconfig, tmp_path):
    base = make_tiny_llama(tmp_path / "tiny")
    k8s.create(model(namespace))
    k8s.patch_status("Model", namespace, "tiny", {"phase": "Ready"})
    k8s.create(deployment(namespace))
    played = PlayedDeployment(k8s, namespace, "tiny", ["--engine", "accelerate", "--model", str(base),
                              "--served-model-name", "tiny", "--precision", "float32", "--max-model-len", "256"],
                              tmp_path, start_delays=(0.0, 25.0)).start()
    port = free_port()
    log = tmp_path / "gateway.log"
    gw = subprocess.Popen([MODELYARD, "gateway", "--namespace", namespace, "--host", "127.0.0.1", "--port", str(port),
                           "--probe-interval", "0.5"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        k8s.wait_for(lambda: _models(url) == ["tiny"], timeout=60, message="the gateway to list tiny")
        yield {"url": url, "played": played, "log": log}
    finally:
        os.killpg(gw.pid, signal.SIGTERM)
        gw.wait(timeout=20)
        played.stop()


def _models(url: str):
    try:
        return [m["id"] for m in httpx.get(url + "/v1/models", timeout=2).json()["data"]]
    except httpx.TransportError:
        return None


def test_requests_at_zero_are_held_answered_and_the_deployment_scales_back_to_zero(cluster, k8s, namespace):
    url, played = cluster["url"], cluster["played"]
    assert k8s.get("Deployment", namespace, "tiny")["spec"]["replicas"] == 0
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: chat(url, "tiny", f"request {i}", max_tokens=4, timeout=600), range(32)))
    assert [r.status_code for r in answers] == [200] * 32, [r.text for r in answers if r.status_code != 200][:3]
    assert all(r.json()["model"] == "tiny" for r in answers)

    m = scrape(url)
    assert sample(m, "modelyard_gateway_cold_starts_total", namespace=namespace, model="tiny") == 1
    assert sample(m, "modelyard_gateway_cold_start_seconds_count", namespace=namespace, model="tiny") == 1
    assert sample(m, "modelyard_gateway_queue_wait_seconds_count", namespace=namespace, model="tiny") == 32
    assert sample(m, "modelyard_gateway_queue_wait_seconds_sum", namespace=namespace, model="tiny") > 32 * 0.5  # they really waited
    added = played.history.of("add")
    assert len(added) >= 2 and max(a["replicas"] for a in added) == 2  # the gateway scaled 0 → 2 (maxReplicas)

    # the load is over while pod 2 (slow node) still loads: it must not be removed before it is ready
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "tiny")["spec"]["replicas"] == 0 and not played.pods,
                 timeout=180, interval=0.2, message="scale-down to zero after the delay (and the pods gone)")
    removed = played.history.of("remove")
    assert removed and not any(r["was_loading"] for r in removed), played.history.events
    ready_at = {info["pod"]: t for t, w, info in played.history.events if w == "ready"}
    first_removal = min(t for t, w, _ in played.history.events if w == "remove")
    last_answer_ready = max(ready_at.values())
    assert first_removal >= last_answer_ready and set(ready_at) == {1, 2}
    assert sample(scrape(url), "modelyard_gateway_replicas_desired", namespace=namespace, model="tiny") == 0
