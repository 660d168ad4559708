"""`modelyard up -f a.yaml -f b.yaml --port P`: two Models behind one gateway on one port; the one
with minReplicas 0 starts its server on the first request (held and answered) and stops it after
scaleDownDelaySeconds idle; Ctrl-C stops everything."""
from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.gateway.helpers import chat
from tests.runtime.accelerate_helpers import MODELYARD, free_port, sample, scrape

MODEL = """\
apiVersion: modelyard.io/v1alpha1
kind: Model
metadata:
  name: {name}
spec:
  source:
    uri: file://./models/tiny
  engine: accelerate
  precision: float32
{extra}"""
LAZY = """  replicas: 0
  scaling:
    minReplicas: 0
    maxReplicas: 1
    scaleDownDelaySeconds: 2
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    root = tmp_path_factory.mktemp("upfleet")
    make_tiny_llama(root / "models" / "tiny")
    (root / "always.yaml").write_text(MODEL.format(name="always", extra=""))
    (root / "lazy.yaml").write_text(MODEL.format(name="lazy", extra=LAZY))
    port = free_port()
    lines: list[str] = []
    proc = subprocess.Popen([MODELYARD, "up", "-f", str(root / "always.yaml"), "-f", str(root / "lazy.yaml"),
                             "--port", str(port), "--workdir", str(root / "work")], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and "ready: " not in "".join(lines):
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.2)
    yield {"url": url, "proc": proc, "lines": lines}
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def servers(proc, name: str) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "serve" in cmd and f"--served-model-name" in cmd and cmd[cmd.index("--served-model-name") + 1] == name:
            out.append(child)
    return out


def test_one_port_lists_both_and_only_the_always_on_model_runs(up):
    models = [m["id"] for m in httpx.get(up["url"] + "/v1/models", timeout=5).json()["data"]]
    assert models == ["always", "lazy"], "".join(up["lines"])
    r = chat(up["url"], "always")
    assert r.status_code == 200 and r.json()["model"] == "always"
    assert servers(up["proc"], "always") and not servers(up["proc"], "lazy")


def test_lazy_model_starts_on_first_request_and_stops_when_idle(up):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: chat(up["url"], "lazy", f"hi {i}"), range(4)))
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert servers(up["proc"], "lazy")
    m = scrape(up["url"])
    assert sample(m, "modelyard_gateway_cold_starts_total", namespace="default", model="lazy") == 1
    assert sample(m, "modelyard_gateway_queue_wait_seconds_count", namespace="default", model="lazy") == 4
    deadline = time.monotonic() + 60
    while servers(up["proc"], "lazy"):
        assert time.monotonic() < deadline, "the idle server was not stopped"
        time.sleep(0.5)
    assert servers(up["proc"], "always")  # the other Model is untouched
    assert chat(up["url"], "lazy").status_code == 200  # and it comes back on the next request
    assert sample(scrape(up["url"]), "modelyard_gateway_cold_starts_total", namespace="default", model="lazy") == 2


def test_sigterm_stops_every_server_as_ctrl_c_does(up):
    """SIGTERM, what a supervisor or `kill` sends: uvicorn re-raised it after its shutdown, and it
    ended `up` before the cleanup, leaving the servers running (SIGINT takes the same path now)."""
    proc = up["proc"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert servers(proc, "always")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    assert "stopped" in "".join(up["lines"])
