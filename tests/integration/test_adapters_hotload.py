"""Changing spec.adapters hot-loads and unloads adapters in the running server, without a restart,
with API keys on (spec.serving.auth): the adapter sync authenticates, the operator's probe reads
the open /metrics and needs no key.

The real operator (against the emulator) writes the `<name>-adapters` ConfigMap; the test plays
the kubelet (projects the ConfigMap into the file the pod mounts, with /cache mapped to a local
folder) and the controllers; a real `modelyard serve --engine accelerate` is the "pod" at
127.0.0.1, which the operator probes for status.adapters.
"""
from __future__ import annotations

import base64
import json
import subprocess
import uuid

import httpx
import pytest

from modelyard.operator.resources.common import source_key
from modelyard.runtime.tiny import make_tiny_llama
from tests.integration.play import finish_job, roll_out
from tests.k8s.operator_thread import run_operator
from tests.runtime.accelerate_helpers import MODELYARD, Server, free_port, make_adapter

BASE_URI = "hf://org/tiny"
ADAPTERS = {"sql": "hf://org/sql-lora", "chat": "hf://org/chat-lora"}
PLAN = {"engine": "accelerate", "precision": "float32", "fits": True, "reason": "fits", "maxModelLen": 512}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A local folder laid out like the cache volume."""
    root = tmp_path_factory.mktemp("cache")
    base = make_tiny_llama(root / "sources" / source_key(BASE_URI, None, ()))
    for seed, (name, uri) in enumerate(ADAPTERS.items(), start=1):
        make_adapter(base, root / "sources" / source_key(uri, None, ()), seed=seed)
    return root


def project_configmap(k8s, ns, name, cache, path):
    """What the kubelet does with a mounted ConfigMap (paths under /cache map to our folder)."""
    cm = k8s.get("ConfigMap", ns, f"{name}-adapters")
    adapters = json.loads(cm["data"]["adapters.json"]) if cm else {}
    path.write_text(json.dumps({n: d.replace("/cache", str(cache), 1) for n, d in adapters.items()}))


class PodServer(Server):
    """`modelyard serve` on the port the Model asks for (the pod's containerPort)."""

    def __init__(self, port: int, args: list[str], log):
        self.port, self.url, self.log, self.statuses = port, f"http://127.0.0.1:{port}", log, []
        self.proc = subprocess.Popen([MODELYARD, "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)


def adapters_status(k8s, ns, name):
    return {a["name"]: a["loadedPods"] for a in (k8s.get("Model", ns, name)["status"].get("adapters") or [])}


KEY = "sk-hot-5e7a0c"
AUTH = {"Authorization": f"Bearer {KEY}"}


def served(url):
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5, headers=AUTH).json()["data"] if m.get("parent")}


def project_secret(k8s, ns, dep, path):
    """What the kubelet does with the Deployment's api-keys Secret volume."""
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-keys")["secret"]
    secret = k8s.get("Secret", ns, volume["secretName"])
    path.write_bytes(base64.b64decode(secret["data"][volume["items"][0]["key"]]))


def test_adapter_changes_hot_load_without_restart(k8s, namespace, cache, tmp_path):
    port = free_port()
    spec = {"source": {"uri": BASE_URI}, "engine": "accelerate", "precision": "float32", "gpus": 0,
            "serving": {"port": port, "auth": {"secretRef": {"name": "hot-keys", "key": "keys"}}},
            "adapters": [{"name": "sql", "uri": ADAPTERS["sql"]}]}
    adapters_file, keys_file = tmp_path / "adapters.json", tmp_path / "api-keys"
    k8s.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hot-keys", "namespace": namespace},
                "data": {"keys": base64.b64encode(KEY.encode()).decode()}})
    with run_operator(k8s.kubeconfig):
        k8s.create({"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "hot", "namespace": namespace}, "spec": spec})
        job = k8s.wait_for(lambda: k8s.get("Job", namespace, "hot-download"))
        assert [c["name"] for c in job["spec"]["template"]["spec"]["initContainers"]] == ["adapter-sql"]
        finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": PLAN})
        dep = k8s.wait_for(lambda: k8s.get("Deployment", namespace, "hot"))
        k8s.wait_for(lambda: k8s.get("ConfigMap", namespace, "hot-adapters"))
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--adapters-file") + 1] == "/etc/modelyard/adapters/adapters.json"
        assert args[args.index("--api-key-file") + 1] == "/etc/modelyard/auth/api-keys"
        project_secret(k8s, namespace, dep, keys_file)

        # the pod: kubelet projects the ConfigMap, the container runs the Deployment's command
        project_configmap(k8s, namespace, "hot", cache, adapters_file)
        model_dir = args[args.index("--model") + 1].replace("/cache", str(cache), 1)
        server = PodServer(port, ["--engine", "accelerate", "--model", model_dir, "--served-model-name", "hot",
                                  "--adapters-file", str(adapters_file), "--api-key-file", str(keys_file)],
                           tmp_path / "serve.log")
        try:
            server.wait_healthy()
            pid = server.proc.pid
            pod = k8s.create({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": f"hot-{uuid.uuid4().hex[:5]}", "namespace": namespace,
                                           "labels": {"app.kubernetes.io/name": "modelyard", "app.kubernetes.io/instance": "hot",
                                                      "app.kubernetes.io/component": "server"}},
                              "spec": {"containers": [{"name": "server", "image": "x"}]}})
            k8s.patch_status("Pod", namespace, pod["metadata"]["name"],
                             {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]})
            roll_out(k8s, namespace, "hot")
            k8s.wait_for(lambda: adapters_status(k8s, namespace, "hot") == {"sql": 1}, timeout=20, message="sql loaded in 1 pod")
            template = k8s.get("Deployment", namespace, "hot")["spec"]["template"]

            # add an adapter: it is downloaded (new Job), then hot-loaded
            k8s.patch("Model", namespace, "hot", {"spec": {"adapters": [{"name": "sql", "uri": ADAPTERS["sql"]}, {"name": "chat", "uri": ADAPTERS["chat"]}]}})
            new = k8s.wait_for(lambda: (j := k8s.get("Job", namespace, "hot-download")) and j["metadata"]["uid"] != job["metadata"]["uid"] and j)
            finish_job(k8s, new, "download", {"resolvedRevision": "r1", "plan": PLAN})
            k8s.wait_for(lambda: "chat" in k8s.get("ConfigMap", namespace, "hot-adapters")["data"]["adapters.json"], message="ConfigMap with chat")
            project_configmap(k8s, namespace, "hot", cache, adapters_file)
            k8s.wait_for(lambda: served(server.url) == {"sql", "chat"}, timeout=30, message="chat hot-loaded")
            k8s.wait_for(lambda: adapters_status(k8s, namespace, "hot") == {"sql": 1, "chat": 1}, timeout=20, message="status lists chat")

            # drop one: unloaded
            k8s.patch("Model", namespace, "hot", {"spec": {"adapters": [{"name": "chat", "uri": ADAPTERS["chat"]}]}})
            newer = k8s.wait_for(lambda: (j := k8s.get("Job", namespace, "hot-download")) and j["metadata"]["uid"] != new["metadata"]["uid"] and j)
            finish_job(k8s, newer, "download", {"resolvedRevision": "r1", "plan": PLAN})
            k8s.wait_for(lambda: "sql" not in k8s.get("ConfigMap", namespace, "hot-adapters")["data"]["adapters.json"])
            project_configmap(k8s, namespace, "hot", cache, adapters_file)
            k8s.wait_for(lambda: served(server.url) == {"chat"}, timeout=30, message="sql unloaded")
            k8s.wait_for(lambda: adapters_status(k8s, namespace, "hot") == {"chat": 1}, timeout=20)

            assert server.proc.pid == pid and server.proc.poll() is None  # never restarted
            assert k8s.get("Deployment", namespace, "hot")["spec"]["template"] == template  # never rolled
            ask = {"model": "chat", "prompt": "hello", "max_tokens": 4}
            assert httpx.post(f"{server.url}/v1/completions", json=ask, timeout=30).status_code == 401
            assert httpx.post(f"{server.url}/v1/completions", json=ask, timeout=30, headers=AUTH).status_code == 200
            model = k8s.get("Model", namespace, "hot")
            events = k8s.list("Event", namespace)
            assert KEY not in json.dumps(model) and KEY not in json.dumps(events)
            assert KEY not in (tmp_path / "serve.log").read_text()
        finally:
            server.stop()
