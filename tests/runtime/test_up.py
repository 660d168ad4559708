"""`modelyard up` end to end on a tiny model from a relative file:// source: download → serve,
a chat answer, the cache reused by a second `up`, Ctrl-C stopping every child, and failures
that name the step and the reason."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import MODELYARD, free_port

MODEL_YAML = """\
apiVersion: modelyard.io/v1alpha1
kind: Model
metadata:
  name: {name}
spec:
  source:
    uri: {uri}
  engine: accelerate
  precision: float32
  gpus: 0
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("up")
    make_tiny_llama(root / "models" / "tiny")
    (root / "deploy").mkdir()
    # relative to the YAML's folder's parent (the "project root"), not to the test's cwd
    (root / "deploy" / "tiny.yaml").write_text(MODEL_YAML.format(name="tiny", uri="file://./models/tiny"))
    return root


class Up:
    def __init__(self, project, yaml: str, workdir, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.lines: list[str] = []
        self.proc = subprocess.Popen([MODELYARD, "up", "-f", str(project / yaml), "--port", str(self.port),
                                      "--workdir", str(workdir), *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_healthy(self, timeout=180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"up exited with {self.proc.returncode}:\n{self.output}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not healthy after {timeout}s:\n{self.output}")

    def wait_output(self, text: str, timeout=30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < deadline:
            time.sleep(0.1)
        assert text in self.output, self.output

    def interrupt(self) -> tuple[int, list[psutil.Process]]:
        children = psutil.Process(self.proc.pid).children(recursive=True)
        assert children, "up should be running the server as a child"
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60), children


def _gone(procs: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=10)
    return not alive


def test_up_serves_chat_then_stops_everything_on_ctrl_c(project):
    up = Up(project, "deploy/tiny.yaml", project / "work")
    try:
        up.wait_healthy()
        r = httpx.post(f"http://127.0.0.1:{up.port}/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        assert r.json()["usage"]["completion_tokens"] == 6
        up.wait_output("curl ")
        assert f"http://127.0.0.1:{up.port}/v1" in up.output
        assert f"{up.port}/v1/chat/completions" in up.output and '"model": "tiny"' in up.output
        assert "downloaded: " in up.output and "[convert] not needed" in up.output
        rc, children = up.interrupt()
        assert rc == 0, up.output
        assert _gone(children), [p.cmdline() for p in children if p.is_running()]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{up.port}/health", timeout=2)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


def test_second_up_reuses_the_cache(project):
    # runs after the test above in the same work folder
    sources = list((project / "work" / "cache" / "sources").iterdir())
    assert len(sources) == 1 and len(sources[0].name) == 16
    up = Up(project, "deploy/tiny.yaml", project / "work")
    try:
        up.wait_healthy()
        assert "already downloaded" in up.output
        assert list((project / "work" / "cache" / "sources").iterdir()) == sources
        rc, children = up.interrupt()
        assert rc == 0 and _gone(children)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


def test_failed_step_names_the_step_and_reason(project, tmp_path):
    (project / "missing.yaml").write_text(MODEL_YAML.format(name="missing", uri=f"file://{tmp_path}/nothing-here"))
    r = subprocess.run([MODELYARD, "up", "-f", str(project / "missing.yaml"), "--port", str(free_port()),
                        "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "step download failed" in r.stderr and "nothing-here" in r.stderr


def test_invalid_model_names_the_field(project):
    (project / "bad.yaml").write_text(MODEL_YAML.format(name="bad", uri="file://./models/tiny").replace("gpus: 0", "gpus: -1"))
    r = subprocess.run([MODELYARD, "up", "-f", str(project / "bad.yaml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "spec.gpus" in r.stderr


def test_up_converts_a_pytorch_checkpoint_then_serves_it(project, tmp_path):
    """format: pytorch → the same `modelyard convert` the cluster's convert Job runs, then serve."""
    import shutil

    import torch
    from safetensors.torch import load_file

    src = project / "models" / "tiny"
    pt = tmp_path / "tiny-bin"
    pt.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, pt / f.name)
    torch.save(load_file(str(src / "model.safetensors")), pt / "pytorch_model.bin")
    yaml = tmp_path / "bin.yaml"
    yaml.write_text(MODEL_YAML.format(name="binary", uri=f"file://{pt}").replace("precision: float32", "precision: float32\n  format: pytorch"))
    up = Up(tmp_path, "bin.yaml", tmp_path / "work")
    try:
        up.wait_healthy()
        converted = list((tmp_path / "work" / "cache" / "converted").iterdir())
        assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
        assert (converted[0] / "modelyard-provenance.json").is_file()
        r = httpx.post(f"http://127.0.0.1:{up.port}/v1/completions", timeout=60,
                       json={"model": "binary", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        rc, children = up.interrupt()
        assert rc == 0 and _gone(children)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


def test_missing_model_file_is_named(tmp_path):
    r = subprocess.run([MODELYARD, "up", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "No such file" in r.stderr


def test_an_unusable_api_key_file_is_named_before_anything_runs(tmp_path):
    model = tmp_path / "m.yaml"
    model.write_text("apiVersion: modelyard.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec:\n  source: {uri: 'hf://a/b'}\n")
    (tmp_path / "keys").write_text("# no key yet\n")
    r = subprocess.run([MODELYARD, "up", "-f", str(model), "--api-key-file", str(tmp_path / "keys"),
                        "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--api-key-file" in r.stderr and "holds no key" in r.stderr
    assert not (tmp_path / "w").exists()


def test_up_with_keys_and_chat_serves_a_locked_endpoint_and_a_chat_page(project, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-up-chat-5d1e\n")
    chat_port = free_port()
    up = Up(project, "deploy/tiny.yaml", project / "work", ("--api-key-file", str(keys), "--chat", "--chat-port", str(chat_port)))
    try:
        up.wait_healthy()
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        url = f"http://127.0.0.1:{up.port}/v1/chat/completions"
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        assert httpx.post(url, json=body, timeout=60, headers={"Authorization": "Bearer sk-up-chat-5d1e"}).status_code == 200
        up.wait_output(f"127.0.0.1:{chat_port}", timeout=120)
        deadline = time.monotonic() + 120
        while True:  # gradio starts after the endpoint
            try:
                page = httpx.get(f"http://127.0.0.1:{chat_port}/", timeout=5)
                if page.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, up.output
            time.sleep(0.5)
        assert "gradio" in page.text.lower()
        assert "sk-up-chat-5d1e" not in up.output and "sk-up-chat-5d1e" not in page.text
        rc, children = up.interrupt()
        assert rc == 0, up.output
        assert _gone(children), [p.cmdline() for p in children if p.is_running()]
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
