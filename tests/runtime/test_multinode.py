"""Real multi-process vLLM: `modelyard up` with `gpus: 0, nodes: 2` runs two `modelyard serve --nodes 2`
processes wired by the LeaderWorkerSet environment (LWS_LEADER_ADDRESS, LWS_WORKER_INDEX,
LWS_GROUP_SIZE): the leader serves vLLM's API as node rank 0, the worker runs headless as rank 1,
pipeline parallel 2 over the tiny model (head_dim 64). One group, started once for the module.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.test_vllm import make_adapter
from tests.runtime.vllm_server import VLLM_PYTHON, free_port, total

pytestmark = pytest.mark.slow

MODEL_YAML = """\
apiVersion: modelyard.io/v1alpha1
kind: Model
metadata:
  name: tiny
spec:
  source:
    uri: file://{base}
  engine: vllm
  precision: float32
  gpus: 0
  nodes: 2
  adapters:
    - name: sql
      uri: file://{sql}
  serving:
    maxModelLen: 512
"""


class Up:
    def __init__(self, yaml, workdir):
        assert VLLM_PYTHON.is_file(), f"{VLLM_PYTHON} is missing: build it with `make vllm-env`"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "modelyard.cli", "up", "-f", str(yaml), "--port",
                                      str(self.port), "--workdir", str(workdir)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"up exited with {self.proc.returncode}:\n{self.output[-6000:]}"
            time.sleep(0.5)
        assert text in self.output, self.output[-6000:]

    def serve_processes(self) -> dict[int, psutil.Process]:
        """rank -> the `modelyard serve --nodes 2` process of that node."""
        out = {}
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd, env = p.cmdline(), p.environ()
            except psutil.Error:
                continue
            if "serve" in cmd and "--nodes" in cmd and "LWS_WORKER_INDEX" in env:
                out[int(env["LWS_WORKER_INDEX"])] = p
        return out


def chat(url: str, model: str = "tiny", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 6, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello!"}], **kw})


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    base = make_tiny_llama(root / "base")
    sql = make_adapter(base, root / "sql", 1)
    (root / "model.yaml").write_text(MODEL_YAML.format(base=base, sql=sql))
    up = Up(root / "model.yaml", root / "work")
    try:
        up.wait_output("ready: tiny is served at", timeout=600)
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            try:
                up.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(up.proc.pid, signal.SIGKILL)


def test_two_processes_one_per_node_with_the_lws_environment(group):
    procs = group.serve_processes()
    assert sorted(procs) == [0, 1], group.output[-3000:]
    env0, env1 = procs[0].environ(), procs[1].environ()
    for env in (env0, env1):
        assert env["LWS_LEADER_ADDRESS"] == "127.0.0.1" and env["LWS_GROUP_SIZE"] == "2"
    # the same command on both nodes: only the port differs locally (in pods it is the same too)
    strip = lambda cmd: [a for i, a in enumerate(cmd) if a != "--port" and (i == 0 or cmd[i - 1] != "--port")]  # noqa: E731
    assert strip(procs[0].cmdline()) == strip(procs[1].cmdline())
    vllm = [c.cmdline() for c in procs[1].children(recursive=True) if "vllm_launch" in " ".join(c.cmdline())]
    assert vllm and "--headless" in vllm[0] and vllm[0][vllm[0].index("--node-rank") + 1] == "1"
    assert vllm[0][vllm[0].index("--pipeline-parallel-size") + 1] == "2" and "--enforce-eager" not in vllm[0]
    assert "[plan]" in group.output and "TP 1 × PP 2 on 2 nodes" in group.output


def test_chat_answers_and_streams_through_the_leader(group):
    r = chat(group.url)
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    assert r.json()["usage"]["completion_tokens"] >= 1
    pieces = []
    with httpx.stream("POST", group.url + "/v1/chat/completions", timeout=120, json={
            "model": "tiny", "max_tokens": 6, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Hello!"}]}) as s:
        assert s.status_code == 200
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2
    for line in lines[:-1]:
        for choice in json.loads(line[6:])["choices"]:
            pieces.append(choice["delta"].get("content") or "")
    assert "".join(pieces) == answer  # greedy: the stream says what the plain answer said


def test_lora_and_metrics_on_the_leader_as_on_one_pod(group):
    ids = [m["id"] for m in httpx.get(group.url + "/v1/models", timeout=10).json()["data"]]
    assert ids[0] == "tiny" and "sql" in ids
    base = chat(group.url, max_tokens=10).json()["choices"][0]["message"]["content"]
    tuned = chat(group.url, "sql", max_tokens=10)
    assert tuned.status_code == 200 and tuned.json()["model"] == "sql"
    assert tuned.json()["choices"][0]["message"]["content"] != base
    text = httpx.get(group.url + "/metrics", timeout=10).text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert total(samples, "modelyard_requests_total", model="sql") >= 1
    assert total(samples, "vllm:prompt_tokens_total") > 0


def test_worker_readiness_follows_the_group(group):
    procs = group.serve_processes()
    port = procs[1].cmdline()[procs[1].cmdline().index("--port") + 1]
    assert httpx.get(f"http://127.0.0.1:{port}/live", timeout=5).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 404


def test_killing_the_worker_makes_the_leader_unhealthy_and_up_restarts_the_group(group):
    before = group.serve_processes()
    os.killpg(before[1].pid, signal.SIGKILL)  # the worker node's `modelyard serve` (its vLLM follows it)
    group.wait_output("node 1 exited with code -9; leader /health: 503", timeout=60)
    assert "stopped answering; the group must restart" in group.output
    group.wait_output("the group is serving again (restart 1)", timeout=600)
    after = group.serve_processes()
    assert sorted(after) == [0, 1] and after[0].pid != before[0].pid and after[1].pid != before[1].pid
    r = chat(group.url)
    assert r.status_code == 200, r.text
