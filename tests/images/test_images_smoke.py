"""The images do their job: the operator reconciles a Model against the Kubernetes API emulator,
the download image fetches from the test HTTP and S3 servers into a mounted folder, the
serve-accelerate image serves the tiny model, and convert / serve-vllm import their engines.
Each runs as UID 1000 with a read-only root filesystem and host networking (tests/images/conftest.py).
"""
from __future__ import annotations

import pytest

import hashlib
import json
import os
import urllib.request
from pathlib import Path

from modelyard.operator.resources.common import Settings
from modelyard.runtime.tiny import make_tiny_llama
from tests.images.conftest import chown_1000, container, run, wait_http
from tests.integration.play import model
from tests.runtime.servers import free_port, start_http, start_seaweedfs

# The first test also waits for the `images` fixture: a build after a code change can take
# longer than the suite-wide 600 s here (`make images-test` builds first, so it is cached then).
pytestmark = pytest.mark.timeout(3600)


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _chat(port: int, max_tokens: int) -> dict:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)


def test_operator_image_reconciles_a_model(images, k8s, namespace, kubeconfig):
    health = free_port()
    args = ["--metrics-port", str(free_port()), "--liveness", f"http://127.0.0.1:{health}/healthz"]
    vols = {str(kubeconfig): ("/etc/kube/config", "ro")}
    with container(images["operator"], *args, name=f"modelyard-operator-smoke-{os.getpid()}", volumes=vols,
                   env={"KUBECONFIG": "/etc/kube/config"}) as name:
        wait_http(f"http://127.0.0.1:{health}/healthz", 60, name)
        created = k8s.create(model("tiny", namespace))
        job = k8s.wait_for(lambda: k8s.get("Job", namespace, "tiny-download"), 60, message="download Job")
        assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        pod = job["spec"]["template"]["spec"]
        # The operator in the image names the download image `make images` built.
        assert pod["containers"][0]["image"] == Settings().images["download"]
        assert pod["securityContext"]["runAsUser"] == 1000
        assert k8s.get("PersistentVolumeClaim", namespace, "tiny-cache")
        k8s.wait_for(lambda: (k8s.get("Model", namespace, "tiny").get("status") or {}).get("phase") == "Downloading",
                     60, message="phase Downloading")


def test_operator_image_runs_the_gateway(images, tmp_path):
    """The chart runs `modelyard gateway` from the operator image: its extra (starlette, uvicorn,
    aiohttp, uvloop) is there, and it routes to a real replica."""
    import yaml

    from tests.runtime.accelerate_helpers import Server

    tiny = make_tiny_llama(tmp_path / "tiny")
    replica = Server(["--engine", "accelerate", "--model", str(tiny), "--served-model-name", "tiny",
                      "--precision", "float32"], tmp_path / "serve.log")
    try:
        replica.wait_healthy(timeout=180)
        routes = chown_1000(tmp_path / "routes")
        (routes / "routes.yaml").write_text(yaml.safe_dump({"models": [{"name": "tiny", "replicas": [replica.url]}]}))
        port = free_port()
        args = ["gateway", "--config", "/cfg/routes.yaml", "--host", "127.0.0.1", "--port", str(port), "--probe-interval", "0.5"]
        with container(images["operator"], *args, entrypoint="modelyard", name=f"modelyard-gateway-smoke-{os.getpid()}",
                       volumes={str(routes): ("/cfg", "ro")}) as name:
            wait_http(f"http://127.0.0.1:{port}/health", 60, name)
            listed = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10))
            assert [m["id"] for m in listed["data"]] == ["tiny"]
            answer = _chat(port, 6)
        assert answer["model"] == "tiny" and answer["usage"]["completion_tokens"] > 0
    finally:
        replica.stop()


def test_download_image_fetches_http_and_s3(images, tmp_path):
    cache = chown_1000(tmp_path / "cache")
    www = tmp_path / "www"
    www.mkdir()
    (www / "weights.bin").write_bytes(os.urandom(1 << 20))
    tiny = make_tiny_llama(tmp_path / "tiny")
    with start_http(www) as http, start_seaweedfs(tmp_path / "weed") as s3:
        s3.upload_folder(tiny, "models", "tiny")
        out = run(images["download"], "--source", f"{http.url}/weights.bin", "--dest", "/cache/http", "--no-plan",
                  "--termination-log", "/tmp/result.json", volumes={str(cache): ("/cache", "rw")})
        assert out.returncode == 0, out.stderr[-3000:]
        out = run(images["download"], "--source", "s3://models/tiny", "--dest", "/cache/s3",
                  volumes={str(cache): ("/cache", "rw")}, env=s3.env())
        assert out.returncode == 0, out.stderr[-3000:]
    got = cache / "http" / "weights.bin"
    assert got.read_bytes() == (www / "weights.bin").read_bytes()
    assert {k: v for k, v in _digests(cache / "s3").items() if k in _digests(tiny)} == _digests(tiny)
    assert all(p.stat().st_uid == 1000 for p in (cache / "s3").rglob("*")), "written as UID 1000"
    assert s3.key not in out.stdout + out.stderr, "credentials never reach the log"


def test_serve_accelerate_image_answers_a_chat_request(images, tmp_path):
    tiny = make_tiny_llama(tmp_path / "tiny")
    for path in [tiny, *tiny.rglob("*")]:  # as the download pod (UID 1000) leaves the cache
        os.chown(path, 1000, 1000)
    port = free_port()
    args = ["--engine", "accelerate", "--model", "/models/tiny", "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(port)]
    with container(images["serve-accelerate"], *args, name=f"modelyard-serve-smoke-{os.getpid()}",
                   volumes={str(tiny): ("/models/tiny", "ro")}) as name:
        wait_http(f"http://127.0.0.1:{port}/health", 180, name)
        answer = _chat(port, 8)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert answer["model"] == "tiny" and answer["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] > 0
    assert "modelyard_" in metrics


def test_convert_image_imports_its_engine(images):
    code = "import llmcompressor, gguf, torch, modelyard.commands.convert; print(torch.__version__, torch.cuda.is_available())"
    out = run(images["convert"], "-c", code, entrypoint="python3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("2.13.0"), out.stdout  # llmcompressor logs before it


def test_serve_vllm_image_imports_its_engine(images):
    code = "import vllm, modelyard.runtime.engines.vllm as e, modelyard.commands.serve; print(vllm.__version__)"
    out = run(images["serve-vllm"], "-c", code, entrypoint="python3", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("0.32"), out.stdout


def test_serve_onnxruntime_image_imports_its_engine_without_torch(images):
    code = ("import importlib.util, onnxruntime_genai as og, modelyard.runtime.engines.onnxruntime, "
            "modelyard.commands.serve; print(importlib.util.find_spec('torch') is None, og.__version__)")
    out = run(images["serve-onnxruntime"], "-c", code, entrypoint="python3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True 0.18.0", out.stdout
